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

from sendqueue.shared.durations import Duration
from sendqueue.shared.errors import ConfigError

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
    #: Several operators: name -> token; the name is written to the audit log.
    admin_tokens: dict[str, str] = msgspec.field(default_factory=dict)
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
        if any(len(token) < 8 for token in self.admin_tokens.values()):
            raise ValueError("every admin_tokens entry must be at least 8 characters")

    def tokens(self) -> dict[str, str]:
        """token -> operator name, for authorisation and the audit log."""
        named = {token: name for name, token in self.admin_tokens.items()}
        if self.admin_token:
            named.setdefault(self.admin_token, "admin")
        return named


class TlsConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """[destinations.tls]: DICOM TLS for kind "dicom"; the HTTPS trust for HTTP kinds."""

    #: PEM bundle of the CAs trusted for the peer's certificate; "" = the system's CAs.
    ca_file: str = ""
    #: Our client certificate and its private key (PEM), for peers requiring mutual TLS.
    cert_file: str = ""
    key_file: str = ""
    #: Check the peer's certificate and host name. Only a test set-up turns this off.
    verify: bool = True
    #: The name the peer's certificate must carry (also sent as SNI); "" = host or URL host.
    server_name: str = ""


_HTTP_KINDS = ("orthanc", "dicomweb")
#: Keys that only make sense for one family of kinds: named in the start-up error.
_HTTP_ONLY_KEYS = ("url", "username", "password", "token", "headers")
_MIB = 1024 * 1024


class DestinationConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    #: "dicom" (C-STORE), "orthanc" (POST /instances of a peer Orthanc), "dicomweb" (STOW-RS).
    kind: Literal["dicom", "orthanc", "dicomweb"] = "dicom"
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
    #: HTTP kinds: the Orthanc base URL, or the DICOMweb root ("/studies" is appended).
    url: str = ""
    #: HTTP basic auth; the password may also come from SENDQUEUE_DEST_<NAME>_PASSWORD.
    username: str = ""
    password: str = ""
    #: HTTP bearer token (instead of username); also SENDQUEUE_DEST_<NAME>_TOKEN.
    token: str = ""
    #: Extra HTTP headers sent with every request.
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    #: TLS: for kind "dicom" its presence turns DICOM TLS on; HTTP kinds use https:// URLs.
    tls: TlsConfig | None = None
    #: HTTP kinds: the longest wait for the peer (its answer, or its reading of our body).
    http_timeout: Duration = Duration(120)
    #: kind "dicom": send an uncompressed copy when the peer refuses the stored transfer
    #: syntax; false parks such instances instead.
    transcode: bool = True
    #: kind "dicomweb": instances of one study sent together in one STOW-RS request.
    batch_max_instances: int = 1
    #: kind "dicomweb": a batch stops growing at this many bytes (a bigger instance goes alone).
    batch_max_bytes: int = 64 * _MIB

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"destination name must match {_NAME.pattern}, got {self.name!r}")
        if self.kind == "dicom":
            self._check_dicom()
        else:
            self._check_http()
        if not 1 <= self.concurrency <= 64:
            raise ValueError(f"destination {self.name!r}: concurrency must be 1..64")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError(f"destination {self.name!r}: max_attempts must be at least 1")
        if self.delays is not None and not self.delays:
            raise ValueError(f"destination {self.name!r}: delays must not be empty")
        for key in ("connect_timeout", "acse_timeout", "dimse_timeout", "http_timeout"):
            if getattr(self, key) <= 0:
                raise ValueError(f"destination {self.name!r}: {key} must be more than 0")
        if self.tls is not None:
            self._check_tls(self.tls)

    def _error(self, message: str) -> ValueError:
        return ValueError(f"destination {self.name!r} (kind {self.kind!r}): {message}")

    def _check_dicom(self) -> None:
        if not self.host:
            raise self._error("host is required")
        if not 0 < self.port < 65536:
            raise self._error("port out of range")
        for key in ("called_aet", "calling_aet"):
            if not _AET.match(getattr(self, key)):
                raise self._error(f"{key} must be 1-16 ASCII chars")
        for key in _HTTP_ONLY_KEYS:
            if getattr(self, key):
                raise self._error(f"{key} is for kinds {' and '.join(_HTTP_KINDS)} only")
        self._check_batching(allowed=False)

    def _check_http(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise self._error(f"url must start with http:// or https://, got {self.url!r}")
        if self.host:
            raise self._error("host is for kind 'dicom'; HTTP kinds take url")
        if self.token and self.username:
            raise self._error("set either username (basic auth) or token (bearer), not both")
        if self.password and not self.username:
            raise self._error("password needs username")
        if self.tls is not None and not self.url.startswith("https://"):
            raise self._error("tls needs an https:// url")
        for header in self.headers:
            if header.lower() in ("content-type", "content-length", "transfer-encoding"):
                raise self._error(f"headers must not set {header} (the sender does)")
        self._check_batching(allowed=self.kind == "dicomweb")

    def _check_batching(self, *, allowed: bool) -> None:
        if not allowed and (self.batch_max_instances != 1 or self.batch_max_bytes != 64 * _MIB):
            raise self._error("batch_max_instances and batch_max_bytes are for kind 'dicomweb'")
        if not 1 <= self.batch_max_instances <= 1000:
            raise self._error("batch_max_instances must be 1..1000")
        if self.batch_max_bytes < _MIB:
            raise self._error("batch_max_bytes must be at least 1048576 (1 MiB)")

    def _check_tls(self, tls: TlsConfig) -> None:
        if bool(tls.cert_file) != bool(tls.key_file):
            raise self._error("tls.cert_file and tls.key_file go together")
        for key in ("ca_file", "cert_file", "key_file"):
            path = getattr(tls, key)
            if path and not os.access(path, os.R_OK):
                raise self._error(f"tls.{key}: cannot read {path!r}")

    def with_environment(self, environ: Mapping[str, str]) -> DestinationConfig:
        """Secrets from SENDQUEUE_DEST_<NAME>_PASSWORD / _TOKEN (NAME upper-cased, [.-] -> _)."""
        prefix = "SENDQUEUE_DEST_" + re.sub(r"[^A-Z0-9]", "_", self.name.upper()) + "_"
        changes = {
            key: environ[prefix + key.upper()]
            for key in ("password", "token")
            if environ.get(prefix + key.upper())
        }
        if not changes:
            return self
        if self.kind == "dicom":
            raise ConfigError(f"destination {self.name!r}: {prefix}* is for HTTP kinds only")
        try:
            updated = msgspec.structs.replace(self, **changes)
            updated.__post_init__()  # recent msgspec runs it in replace(), older ones do not
        except ValueError as exc:
            raise ConfigError(f"invalid config: {exc}") from None
        return updated


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
    amqp_url = environ.get("SENDQUEUE_AMQP_URL")
    if amqp_url:
        # The broker's password stays out of the TOML file (an environment file instead).
        config = msgspec.structs.replace(
            config, amqp=msgspec.structs.replace(config.amqp, url=amqp_url)
        )
    if password:
        config = msgspec.structs.replace(
            config, orthanc=msgspec.structs.replace(config.orthanc, password=password)
        )
    if token:
        config = msgspec.structs.replace(
            config, retry=msgspec.structs.replace(config.retry, admin_token=token)
        )
    destinations = [d.with_environment(environ) for d in config.destinations]
    if destinations != config.destinations:
        config = msgspec.structs.replace(config, destinations=destinations)
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


def with_listen(config: Config, service: str, listen: str) -> Config:
    """The config with one service's `listen` replaced (a second sender on the same config)."""
    try:
        parse_listen(listen)
    except ValueError as exc:
        raise ConfigError(f"--listen: {exc}") from None
    section = getattr(config, service)
    return msgspec.structs.replace(
        config, **{service: msgspec.structs.replace(section, listen=listen)}
    )


def mask_url(url: str) -> str:
    """The URL with its password hidden, for logs."""
    return re.sub(r"(//[^:/@]+:)[^@]*@", r"\1******@", url)
