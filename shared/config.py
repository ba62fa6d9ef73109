"""The configuration: one TOML file, decoded into frozen typed Structs at start-up.

Key names under [orthanc], [amqp], [ingest], [sender], [retry], [[destinations]] and
[[routes]] are a contract: scripts outside sendqueue write them. Add keys, never rename.
Unknown keys are errors, so a typo is caught at start-up instead of silently ignored.
Every key documents itself (shared/config_fields.py `doc()`): the key tables of
docs/configuration.md and docs/destinations.md are generated from these Structs.
The [[destinations]] Structs, one per kind, are in shared/destination_config.py.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from sendqueue.shared.config_fields import doc
from sendqueue.shared.destination_config import (
    NAME,
    DestinationConfig,
    DestinationConfigBase,
    DicomDestinationConfig,
    DicomWebDestinationConfig,
    HttpDestinationConfig,
    OrthancDestinationConfig,
    TlsConfig,
    destination_tables,
)
from sendqueue.shared.dicom_keywords import close_keywords, unknown_tag_names
from sendqueue.shared.durations import Duration
from sendqueue.shared.errors import ConfigError

__all__ = [
    "AmqpConfig",
    "Config",
    "DestinationConfig",
    "DestinationConfigBase",
    "DicomDestinationConfig",
    "DicomWebDestinationConfig",
    "HttpDestinationConfig",
    "IngestConfig",
    "Level",
    "OrthancConfig",
    "OrthancDestinationConfig",
    "RetryConfig",
    "RouteConfig",
    "SenderConfig",
    "TlsConfig",
    "config_from_json",
    "config_to_json",
    "is_loopback",
    "load_config",
    "mask_url",
    "parse_config",
    "parse_listen",
    "secrets_of",
    "with_listen",
]


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


#: The shortest admin or read token accepted: a short one can be guessed over the network.
MIN_TOKEN_LENGTH = 16


def _check_listen(listen: str) -> None:
    parse_listen(listen)


class OrthancConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """[orthanc]: the Orthanc whose changes are followed and whose files are sent."""

    url: Annotated[str, doc("base URL of Orthanc's REST API")] = "http://127.0.0.1:8042"
    username: Annotated[str, doc("HTTP basic auth")] = ""
    password: Annotated[
        str, doc("the password of `username`; also env `SENDQUEUE_ORTHANC_PASSWORD`")
    ] = ""
    timeout: Annotated[
        Duration,
        doc("read timeout of one REST call (a whole file download may take longer)"),
    ] = Duration(60)
    tag_names: Annotated[
        list[str],
        doc(
            "tag names `[[routes]] match` may use although pydicom's DICOM dictionary lacks"
            " them: private tags (as this Orthanc's /simplified-tags spells them), entries of"
            " its `Dictionary` option, keywords newer than pydicom"
        ),
    ] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"orthanc url must start with http:// or https://, got {self.url!r}")


class AmqpConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """[amqp]: the RabbitMQ broker every service talks through."""

    url: Annotated[
        str,
        doc(
            "RabbitMQ (vhost in the path); the nodes of a cluster comma-separated, tried in"
            " order; also env `SENDQUEUE_AMQP_URL`, which wins (keeps the password out of"
            " the file)"
        ),
    ] = "amqp://guest:guest@127.0.0.1:5672/"
    prefix: Annotated[
        str,
        doc("namespaces every exchange and queue; several installs can share a broker"),
    ] = "sendqueue"
    management_url: Annotated[
        str,
        doc(
            "RabbitMQ management API (e.g. `http://user:pw@host:15672`): adds unacked counts"
            ' to metrics and `/api/queues`; `""` = AMQP only. The vhost comes from `url`'
        ),
    ] = ""
    depth_interval: Annotated[
        Duration, doc("how often queue depths and destination status are refreshed")
    ] = Duration(10)

    def __post_init__(self) -> None:
        if not NAME.match(self.prefix):
            raise ValueError(f"amqp prefix must match {NAME.pattern}, got {self.prefix!r}")
        nodes = [node.strip() for node in self.url.split(",") if node.strip()]
        if not nodes or not all(node.startswith(("amqp://", "amqps://")) for node in nodes):
            raise ValueError(
                "amqp url must be one or more comma-separated amqp:// or amqps:// URLs,"
                f" got {mask_url(self.url)!r}"
            )


class IngestConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """[ingest]: follows Orthanc's /changes and queues a job per instance and destination."""

    listen: Annotated[
        str,
        doc(
            "metrics, healthz, the Lua hooks' `POST /api/orthanc-jobs`"
            " (`POST /api/send` is served by the retry service)"
        ),
    ] = "127.0.0.1:8100"
    poll_interval: Annotated[Duration, doc("wait between `/changes` calls when nothing is new")] = (
        Duration(1)
    )
    state_dir: Annotated[
        str,
        doc(
            "where earlier versions kept the `/changes` cursor: read once on upgrade (the"
            " cursor lives in RabbitMQ now); several ingest processes may share it"
        ),
    ] = "./state/ingest"
    start_from: Annotated[
        Literal["now", "beginning"],
        doc(
            'first start only: `"now"` (new changes) or `"beginning"` (everything in'
            " Orthanc's log)"
        ),
    ] = "now"
    batch_size: Annotated[int, doc("changes per `/changes` call (1..10000)")] = 100
    capture_failed_jobs: Annotated[
        Literal["mapped", "all", "off"],
        doc(
            'Orthanc\'s own failed store jobs (`GET /jobs`): `"mapped"` queues those of the'
            " modalities and peers a destination names (`orthanc_modality`, `orthanc_peer`);"
            ' `"all"` also makes a destination of every modality and peer Orthanc knows;'
            ' `"off"` ignores them. See [docs/orthanc.md](orthanc.md)'
        ),
    ] = "mapped"
    ledger_max_age: Annotated[
        Duration,
        doc(
            "how long ingest remembers what it queued for each destination, so that a"
            " series or study that grows is not queued whole again (see"
            " [No whole-study resends](routing.md#no-whole-study-resends))"
        ),
    ] = Duration(30 * 86_400)
    ledger_max_entries: Annotated[
        int,
        doc("at most this many (destination, instance) entries; the oldest go first"),
    ] = 2_000_000

    def __post_init__(self) -> None:
        _check_listen(self.listen)
        if not 1 <= self.batch_size <= 10_000:
            raise ValueError("batch_size must be between 1 and 10000")
        if self.ledger_max_age <= 0 or self.ledger_max_entries < 1:
            raise ValueError("ledger_max_age and ledger_max_entries must be more than 0")


class SenderConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """[sender]: sends queued instances to their destinations."""

    listen: Annotated[str, doc("metrics, healthz")] = "127.0.0.1:8101"
    spool_dir: Annotated[
        str,
        doc('where instance files wait while they are sent; `""` = the system temp dir'),
    ] = ""
    in_memory_mb: Annotated[
        int,
        doc(
            "instances up to this size (MiB) are downloaded into memory and sent from there"
            " (every kind; not a file Orthanc prepares, nor one for storage commitment);"
            " larger ones go through `spool_dir`. Each unit of `concurrency` holds at most one"
        ),
    ] = 8
    probe_min: Annotated[
        Duration, doc("first wait between probes of an unreachable destination")
    ] = Duration(1)
    probe_max: Annotated[
        Duration, doc("longest wait between probes (the wait doubles up to it)")
    ] = Duration(30)
    shutdown_grace: Annotated[
        Duration,
        doc("how long SIGTERM waits for in-flight sends before returning them to the queue"),
    ] = Duration(10)
    commitment_listen: Annotated[
        str,
        doc(
            '"host:port" where peers open associations to send Storage Commitment reports'
            " (N-EVENT-REPORT), for destinations with `storage_commitment`; several sender"
            ' processes may share it. `""`: reports only on the requesting association'
        ),
    ] = ""

    processes: Annotated[
        int | Literal["auto"],
        doc(
            'sender processes, competing consumers of the same queues: `"auto"` = one per'
            " two CPUs the host lets sendqueue use, at least 1. One process is bound to one"
            " core (Python's GIL). Several are supervised by the `sendqueue sender` (or"
            " `sendqueue run`) process, which serves their metrics and health at `listen`;"
            " `sendqueue run` always gives the sender processes of its own"
        ),
    ] = "auto"

    def __post_init__(self) -> None:
        _check_listen(self.listen)
        if self.processes != "auto" and not 1 <= self.processes <= MAX_SENDER_PROCESSES:
            raise ValueError(
                f'[sender] processes must be "auto" or 1..{MAX_SENDER_PROCESSES},'
                f" got {self.processes!r}"
            )
        if self.commitment_listen:
            _check_listen(self.commitment_listen)
        if not 0 <= self.in_memory_mb <= 1024:
            raise ValueError(f"[sender] in_memory_mb must be 0..1024, got {self.in_memory_mb}")

    def process_count(self, cpus: int | None = None) -> int:
        """How many sender processes to run; `cpus`: those usable (default: this host's)."""
        if self.processes != "auto":
            return self.processes
        usable = cpus if cpus is not None else usable_cpus()
        # The sender is about a third of the pipeline's CPU per instance (ingest, RabbitMQ
        # and Orthanc's REST the rest; bench/README.md), so one per two CPUs keeps the
        # sender from being the bound without idle processes holding memory.
        return max(1, min(MAX_SENDER_PROCESSES, usable // 2))


#: More sender processes than this on one host is a mistake, not a tuning.
MAX_SENDER_PROCESSES = 64


def usable_cpus() -> int:
    """The CPUs this process may run on (a container's or taskset's limit included)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


_DEFAULT_DELAYS = [Duration(s) for s in (10, 60, 300, 1800, 7200)]


class RetryConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """[retry]: retries failed sends, parks the hopeless, serves the admin API."""

    listen: Annotated[
        str,
        doc(
            "admin API (every call with a token), console page, metrics, healthz; a"
            " non-loopback address needs tokens"
        ),
    ] = "127.0.0.1:8102"
    delays: Annotated[
        list[Duration], doc("wait before the 1st, 2nd, … retry; the last repeats")
    ] = msgspec.field(default_factory=lambda: list(_DEFAULT_DELAYS))
    max_attempts: Annotated[int, doc("send attempts before a job is parked (1 = never retry)")] = 10
    admin_token: Annotated[
        str,
        doc(
            "bearer token that may read and act (requeue, delete, pause, send); also env"
            f" `SENDQUEUE_ADMIN_TOKEN`; {MIN_TOKEN_LENGTH} characters or more"
        ),
    ] = ""
    admin_tokens: Annotated[
        dict[str, str],
        doc(
            'several operators who may read and act: `name = "token"`; the name goes to the'
            " audit log"
        ),
    ] = msgspec.field(default_factory=dict)
    read_tokens: Annotated[
        dict[str, str],
        doc(
            '`name = "token"` of those who may only read (parked items, audit log, queues):'
            " every state change answers 403"
        ),
    ] = msgspec.field(default_factory=dict)
    allow_anonymous: Annotated[
        bool,
        doc(
            "without any token, let every local process read and act on a loopback `listen`"
            " (refused on any other address)"
        ),
    ] = False
    allowed_hosts: Annotated[
        list[str],
        doc(
            "host names the admin API answers to besides IP addresses, `localhost` and the"
            " `listen` host (the `Host` header; against DNS rebinding)"
        ),
    ] = msgspec.field(default_factory=list)
    tls_cert: Annotated[
        str, doc('PEM certificate (chain) to serve the admin listen over HTTPS; `""` = HTTP')
    ] = ""
    tls_key: Annotated[str, doc("the PEM private key of `tls_cert`")] = ""
    state_dir: Annotated[
        str,
        doc(
            "parked-items index, audit log, pause state, per-destination counts of delayed"
            " jobs, the destinations seen (to park the jobs of removed ones); one retry"
            " process per directory (locked)"
        ),
    ] = "./state/retry"
    jitter: Annotated[
        float,
        doc("each delay is spread over `d … d * (1 + jitter)` (0..1), against retry storms"),
    ] = 0.2

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
        self._check_tokens()
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("retry.tls_cert and retry.tls_key go together")

    def _check_tokens(self) -> None:
        named = [
            *((f"retry.admin_tokens.{n}", t) for n, t in self.admin_tokens.items()),
            *((f"retry.read_tokens.{n}", t) for n, t in self.read_tokens.items()),
            *(
                [("retry.admin_token (or SENDQUEUE_ADMIN_TOKEN)", self.admin_token)]
                if self.admin_token
                else []
            ),
        ]
        for where, token in named:
            if len(token) < MIN_TOKEN_LENGTH or token != token.strip():
                raise ValueError(
                    f"{where} must be at least {MIN_TOKEN_LENGTH} characters without spaces"
                    " around it (make one with: openssl rand -hex 24)"
                )
        if set(self.read_tokens.values()) & set(self.tokens()):
            raise ValueError("a token cannot be both a read token and an admin token")

    def tokens(self) -> dict[str, str]:
        """Admin tokens: token -> operator name, for authorisation and the audit log."""
        named = {token: name for name, token in self.admin_tokens.items()}
        if self.admin_token:
            named.setdefault(self.admin_token, "admin")
        return named

    def readers(self) -> dict[str, str]:
        """Read-only tokens: token -> name."""
        return {token: name for name, token in self.read_tokens.items()}


Level = Literal["instance", "series", "study"]
#: The values of Orthanc's `Origin` metadata (RequestOrigin).
ORIGINS = ("DicomProtocol", "RestApi", "Plugins", "Lua", "WebDav", "Unknown")
_ORIGINS_LOWER = {origin.lower() for origin in ORIGINS}
_GLOB_CHARS = re.compile(r"[*?\[]")


class RouteConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """[[routes]]: which destinations a resource goes to."""

    destinations: Annotated[list[str], doc("names of configured destinations")]
    level: Annotated[
        Level,
        doc(
            '`"instance"` (each new instance), `"series"` or `"study"` (once Orthanc marks'
            " it stable)"
        ),
    ] = "instance"
    match: Annotated[
        dict[str, str | list[str]],
        doc(
            'DICOM keyword → glob (`"CT*"`, `"1.2.840.*"`), or a list of globs that must all'
            ' match; all keys must match, case-insensitive, `"A|B"` for alternatives, `"!"`'
            ' in front for "does not match" (`"!SR|PR"`); a missing tag is `""`. A name that'
            " is not a DICOM keyword is a start-up error (see [Route keywords](#route-keywords))"
        ),
    ] = msgspec.field(default_factory=dict)
    from_aet: Annotated[
        str,
        doc(
            "glob on the AE title of the modality that sent the instance to Orthanc (its"
            ' `RemoteAET` metadata), `"A|B"`, `"!"` as in `match`. An instance uploaded by'
            ' REST has no sender AE title: it counts as `""`, so `"CT1"` never matches it and'
            ' `"!CT1"` does',
            default='`""` (any)',
        ),
    ] = ""
    called_aet_in: Annotated[
        str,
        doc(
            "glob on the AE title Orthanc was called with when it received the instance"
            ' (`CalledAET` metadata; `""` for REST uploads)',
            default='`""` (any)',
        ),
    ] = ""
    delete_after_delivery: Annotated[
        bool,
        doc(
            "delete an instance this route chose from Orthanc once every destination the"
            " routes chose for it delivered it (never while one waits or is parked); every"
            " route must then have the same `level`. See"
            " [Gateway clean-up](routing.md#delete_after_delivery-gateway-clean-up)"
        ),
    ] = False
    origin: Annotated[
        str,
        doc(
            "how the instance reached Orthanc (`Origin` metadata): `DicomProtocol`, `RestApi`,"
            ' `Plugins`, `Lua`, `WebDav`, `Unknown`; `"A|B"` and `"!"` as in `match`',
            default='`""` (any)',
        ),
    ] = ""

    def __post_init__(self) -> None:
        if not self.destinations:
            raise ValueError("a route needs at least one destination")
        for keyword, rules in self.match.items():
            if isinstance(rules, list) and not rules:
                raise ValueError(f"match.{keyword}: a list of globs must not be empty")
        for choice in self.origin.lstrip("!").split("|") if self.origin else ():
            if not _GLOB_CHARS.search(choice) and choice.lower() not in _ORIGINS_LOWER:
                raise ValueError(
                    f"origin {choice!r} is none of Orthanc's origins: {', '.join(ORIGINS)}"
                )


class Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The whole file."""

    orthanc: Annotated[OrthancConfig, doc("the source Orthanc")] = msgspec.field(
        default_factory=OrthancConfig
    )
    amqp: Annotated[AmqpConfig, doc("the broker")] = msgspec.field(default_factory=AmqpConfig)
    ingest: Annotated[IngestConfig, doc("the ingest service")] = msgspec.field(
        default_factory=IngestConfig
    )
    sender: Annotated[SenderConfig, doc("the sender service")] = msgspec.field(
        default_factory=SenderConfig
    )
    retry: Annotated[RetryConfig, doc("the retry service")] = msgspec.field(
        default_factory=RetryConfig
    )
    destinations: Annotated[list[DestinationConfig], doc("where instances go")] = msgspec.field(
        default_factory=list
    )
    routes: Annotated[list[RouteConfig], doc("which instances go where")] = msgspec.field(
        default_factory=list
    )

    def __post_init__(self) -> None:
        names = [d.name for d in self.destinations]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate destination names: {', '.join(duplicates)}")
        for index, route in enumerate(self.routes):
            unknown = [d for d in route.destinations if d not in names]
            if unknown:
                raise ValueError(f"routes[{index}] names unknown destinations: {unknown}")
            self._check_match_keys(index, route)
        levels = {route.level for route in self.routes}
        if len(levels) > 1 and any(route.delete_after_delivery for route in self.routes):
            # A route of another level would see the instance later, maybe after it is gone.
            raise ValueError(
                "delete_after_delivery needs every route at the same level, got "
                + ", ".join(sorted(levels))
            )

    def _check_match_keys(self, index: int, route: RouteConfig) -> None:
        """A misspelt keyword would silently never match: it stops the start-up instead."""
        unknown = unknown_tag_names(route.match, also=self.orthanc.tag_names)
        if not unknown:
            return
        name = unknown[0]
        close = close_keywords(name)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise ValueError(
            f"routes[{index}].match: {name!r} is not a DICOM keyword{hint}; a private tag's"
            " name, as Orthanc spells it, goes in [orthanc] tag_names"
        )

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
        config = msgspec.convert(_with_destination_kinds(data), Config, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid config: {exc}") from None
    try:
        return _apply_environment(config, environ)
    except ValueError as exc:
        raise ConfigError(f"invalid config: {exc}") from None


def _with_destination_kinds(data: Mapping[str, Any]) -> dict[str, Any]:
    if "destinations" not in data:
        return dict(data)
    return {**data, "destinations": destination_tables(data["destinations"])}


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
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    return parse_config(data, environ)


def config_to_json(config: Config) -> bytes:
    """The loaded config (environment and Orthanc's destinations applied), for a child
    process: config_from_json gives it back equal."""
    return msgspec.json.encode(config, enc_hook=_enc_hook)


def config_from_json(data: bytes) -> Config:
    try:
        return msgspec.json.decode(data, type=Config, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid config: {exc}") from None


def _enc_hook(value: Any) -> Any:
    if isinstance(value, Duration):
        return float(value)
    raise NotImplementedError(f"unsupported config type {type(value)}")


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


#: user:password@ in a URL; the password runs to the last `@` of the URL, as it may hold
#: `@` itself (typed unescaped), and a URL ends at white space.
_URL_PASSWORD = re.compile(r"(//[^:/@\s]*:)\S*@")


def mask_url(url: str) -> str:
    """The URL (or any text with URLs in it) with passwords hidden, for logs and output."""
    return _URL_PASSWORD.sub(r"\1******@", url)


def secrets_of(config: Config) -> list[str]:
    """Every secret the config holds, for the logs to hide wherever one shows up."""
    found = [config.orthanc.password, config.retry.admin_token]
    found += [*config.retry.admin_tokens.values(), *config.retry.read_tokens.values()]
    for dest in config.destinations:
        found += [getattr(dest, "password", ""), getattr(dest, "token", "")]
    amqp_password = re.match(r"[^:]+://[^:/@\s]*:(\S*)@", config.amqp.url)
    if amqp_password:
        found.append(amqp_password.group(1))
    return [s for s in found if s]
