"""The configuration: one TOML file, decoded into frozen typed Structs at start-up.

Key names under [orthanc], [amqp], [ingest], [sender], [retry], [[destinations]] and
[[routes]] are a contract: scripts outside sendqueue write them. Add keys, never rename.
Unknown keys are errors, so a typo is caught at start-up instead of silently ignored.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec

from shared.durations import Duration
from shared.errors import ConfigError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_AET = re.compile(r"^[\x20-\x7e]{1,16}$")


def parse_listen(listen: str) -> tuple[str, int]:
    """Split "host:port" (IPv6 as "[::1]:port")."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f'listen must be "host:port", got {listen!r}')
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_listen(listen: str) -> None:
    parse_listen(listen)


class OrthancConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    #: Base URL of Orthanc's REST API.
    url: str = "http://127.0.0.1:8042"
    username: str = ""
    #: Also read from the environment variable SENDQUEUE_ORTHANC_PASSWORD.
    password: str = ""
    #: Timeout of one REST call (a whole file download may take longer: see sender).
    timeout: Duration = Duration(60)

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"orthanc url must start with http:// or https://, got {self.url!r}")


class AmqpConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    url: str = "amqp://guest:guest@127.0.0.1:5672/"
    #: Namespaces every exchange and queue name, so several installs share a broker.
    prefix: str = "sendqueue"
    #: RabbitMQ management API (for unacked counts in metrics); "" = use AMQP only.
    #: Example: "http://guest:guest@127.0.0.1:15672". The vhost comes from `url`.
    management_url: str = ""
    #: How often queue depths are refreshed for the metrics.
    depth_interval: Duration = Duration(10)

    def __post_init__(self) -> None:
        if not _NAME.match(self.prefix):
            raise ValueError(f"amqp prefix must match {_NAME.pattern}, got {self.prefix!r}")


class IngestConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    listen: str = "127.0.0.1:8100"
    #: How long to wait before asking Orthanc's /changes again when it had nothing new.
    poll_interval: Duration = Duration(1)
    #: Where the /changes cursor is kept (written atomically).
    state_dir: str = "./state/ingest"
    #: Where a first start begins: "now" (only new changes) or "beginning" (all of them).
    start_from: Literal["now", "beginning"] = "now"
    #: Changes read per /changes call.
    batch_size: int = 100

    def __post_init__(self) -> None:
        _check_listen(self.listen)
        if not 1 <= self.batch_size <= 10_000:
            raise ValueError("batch_size must be between 1 and 10000")


class SenderConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    listen: str = "127.0.0.1:8101"
    #: Where instance files are spooled while they are sent ("" = the system temp dir).
    spool_dir: str = ""
    #: Probing a destination that is down: first and longest wait between C-ECHOs.
    probe_min: Duration = Duration(1)
    probe_max: Duration = Duration(30)
    #: How long a shutdown waits for in-flight sends before returning them to the queue.
    shutdown_grace: Duration = Duration(10)

    def __post_init__(self) -> None:
        _check_listen(self.listen)


_DEFAULT_DELAYS = [Duration(s) for s in (10, 60, 300, 1800, 7200)]


class RetryConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    listen: str = "127.0.0.1:8102"
    #: The backoff ladder: the wait before the 1st, 2nd, ... retry (the last repeats).
    delays: list[Duration] = msgspec.field(default_factory=lambda: list(_DEFAULT_DELAYS))
    #: Send attempts before a job is parked (1 = never retry).
    max_attempts: int = 10
    #: Bearer token for the admin API's mutating calls; also SENDQUEUE_ADMIN_TOKEN.
    admin_token: str = ""
    #: Where the parked-items index is kept.
    state_dir: str = "./state/retry"
    #: Each delay is spread over this fraction (0.2 = up to +20 %) to avoid retry storms.
    jitter: float = 0.2

    def __post_init__(self) -> None:
        _check_listen(self.listen)
        if not self.delays:
            raise ValueError("delays must name at least one duration")
        if any(d < 0.001 for d in self.delays):
            raise ValueError("every delay must be at least 1ms")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be between 0 and 1")


class DestinationConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    kind: Literal["dicom"] = "dicom"
    host: str = ""
    port: int = 104
    called_aet: str = "ANY-SCP"
    calling_aet: str = "SENDQUEUE"
    #: Parallel sends (= associations = prefetch of its work queue).
    concurrency: int = 2
    #: Per-destination overrides of [retry] max_attempts and delays.
    max_attempts: int | None = None
    delays: list[Duration] | None = None
    connect_timeout: Duration = Duration(10)
    acse_timeout: Duration = Duration(30)
    #: Wait for one C-STORE response; large instances on slow links need more.
    dimse_timeout: Duration = Duration(120)
    #: An association idle this long is released (and re-opened on demand).
    idle_timeout: Duration = Duration(30)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"destination name must match {_NAME.pattern}, got {self.name!r}")
        if not self.host:
            raise ValueError(f"destination {self.name!r}: host is required")
        if not 0 < self.port < 65536:
            raise ValueError(f"destination {self.name!r}: port out of range")
        for key in ("called_aet", "calling_aet"):
            if not _AET.match(getattr(self, key)):
                raise ValueError(f"destination {self.name!r}: {key} must be 1-16 ASCII chars")
        if not 1 <= self.concurrency <= 64:
            raise ValueError(f"destination {self.name!r}: concurrency must be 1..64")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError(f"destination {self.name!r}: max_attempts must be at least 1")
        if self.delays is not None and not self.delays:
            raise ValueError(f"destination {self.name!r}: delays must not be empty")


Level = Literal["instance", "series", "study"]


class RouteConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    destinations: list[str]
    #: When a resource is sent: each new instance, or once its series/study is stable.
    level: Level = "instance"
    #: DICOM keyword -> glob ("CT*", "1.2.840.*"); all must match (case-insensitive).
    match: dict[str, str] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.destinations:
            raise ValueError("a route needs at least one destination")


class Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    orthanc: OrthancConfig = msgspec.field(default_factory=OrthancConfig)
    amqp: AmqpConfig = msgspec.field(default_factory=AmqpConfig)
    ingest: IngestConfig = msgspec.field(default_factory=IngestConfig)
    sender: SenderConfig = msgspec.field(default_factory=SenderConfig)
    retry: RetryConfig = msgspec.field(default_factory=RetryConfig)
    destinations: list[DestinationConfig] = msgspec.field(default_factory=list)
    routes: list[RouteConfig] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        names = [d.name for d in self.destinations]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate destination names: {', '.join(duplicates)}")
        for index, route in enumerate(self.routes):
            unknown = [d for d in route.destinations if d not in names]
            if unknown:
                raise ValueError(f"routes[{index}] names unknown destinations: {unknown}")

    def destination(self, name: str) -> DestinationConfig | None:
        return next((d for d in self.destinations if d.name == name), None)

    def delays_for(self, name: str) -> list[Duration]:
        dest = self.destination(name)
        return list(dest.delays) if dest and dest.delays else list(self.retry.delays)

    def max_attempts_for(self, name: str) -> int:
        dest = self.destination(name)
        if dest and dest.max_attempts is not None:
            return dest.max_attempts
        return self.retry.max_attempts

    def all_delays(self) -> list[Duration]:
        """Every delay any destination may use: each needs a delay tier."""
        found = set(self.retry.delays)
        for dest in self.destinations:
            found.update(dest.delays or [])
        return sorted(found)


def _dec_hook(kind: type, value: Any) -> Any:
    if kind is Duration:
        return Duration.parse(value)
    raise NotImplementedError(f"unsupported config type {kind}")


def parse_config(data: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Config:
    """Validate a decoded TOML document; secrets may come from the environment."""
    environ = os.environ if environ is None else environ
    try:
        config = msgspec.convert(dict(data), Config, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid config: {exc}") from None
    return _apply_environment(config, environ)


def _apply_environment(config: Config, environ: Mapping[str, str]) -> Config:
    password = environ.get("SENDQUEUE_ORTHANC_PASSWORD")
    token = environ.get("SENDQUEUE_ADMIN_TOKEN")
    if password:
        config = msgspec.structs.replace(
            config, orthanc=msgspec.structs.replace(config.orthanc, password=password)
        )
    if token:
        config = msgspec.structs.replace(
            config, retry=msgspec.structs.replace(config.retry, admin_token=token)
        )
    return config


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate the TOML file; any problem is a ConfigError naming the key."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    return parse_config(data, environ)


def mask_url(url: str) -> str:
    """The URL with its password hidden, for logs."""
    return re.sub(r"(//[^:/@]+:)[^@]*@", r"\1******@", url)
