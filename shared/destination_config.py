"""[[destinations]]: one frozen Struct per kind, a msgspec tagged union on `kind`.

Each kind has only its own keys, so a key of another kind (`port` on an Orthanc peer,
`http_timeout` on a DICOM peer) stops the start-up instead of being silently ignored.
`destination_tables()` runs before decoding: it gives a table without `kind` the kind
"dicom" (as before the union) and turns a key of another kind into an error that says
which kind it belongs to (msgspec alone would only call it unknown).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Annotated, ClassVar, Literal, Self

import msgspec

from sendqueue.shared.config_fields import doc
from sendqueue.shared.dicom_keywords import unknown_tag_names
from sendqueue.shared.durations import Duration
from sendqueue.shared.errors import ConfigError
from sendqueue.shared.send_window import SendWindow

#: Destination names and the amqp prefix: they end up in queue names and metric labels.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_AET = re.compile(r"^[\x20-\x7e]{1,16}$")
_MIB = 1024 * 1024
_SENDER_HEADERS = ("content-type", "content-length", "transfer-encoding")

Kind = Literal["dicom", "orthanc", "dicomweb"]
#: The documentation of `kind`, the union's tag (not a field of any one Struct).
KIND_DOC = (
    '`"dicom"` (C-STORE), `"orthanc"` (`POST /instances` of a peer Orthanc) or `"dicomweb"`'
    " (STOW-RS); it decides which other keys the table may have"
)


class TlsConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """[destinations.tls]: DICOM TLS for kind "dicom"; the HTTPS trust for HTTP kinds."""

    ca_file: Annotated[
        str,
        doc("PEM bundle of the CAs trusted for the peer's certificate", default="system CAs"),
    ] = ""
    cert_file: Annotated[
        str,
        doc(
            "our client certificate (PEM), for mutual TLS; goes with `key_file`",
            default="none",
        ),
    ] = ""
    key_file: Annotated[
        str, doc("the private key of `cert_file` (PEM); goes with it", default="none")
    ] = ""
    verify: Annotated[
        bool, doc("check the peer's certificate and name. Turn it off only for tests")
    ] = True
    server_name: Annotated[
        str,
        doc(
            "the name the certificate must carry, also sent as SNI",
            default="`host`, or the URL's host",
        ),
    ] = ""


_UID = re.compile(r"^[0-9]+(\.[0-9]+)+$")


class ModifyConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """[destinations.modify]: tags changed in the copy sent (Orthanc's /modify)."""

    replace: Annotated[
        dict[str, str], doc('DICOM keyword → new value (`InstitutionName = "Main site"`)')
    ] = msgspec.field(default_factory=dict)
    remove: Annotated[list[str], doc("DICOM keywords removed from the copy")] = msgspec.field(
        default_factory=list
    )
    keep_private_tags: Annotated[bool, doc("`false` removes every private tag")] = True

    def keywords(self) -> list[str]:
        return [*self.replace, *self.remove]


class DestinationConfigBase(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="kind"
):
    """The keys every kind has."""

    kind: ClassVar[Kind]

    name: Annotated[str, doc("`[A-Za-z0-9][A-Za-z0-9_.-]{0,63}`; used in queue names and metrics")]
    concurrency: Annotated[
        int,
        doc(
            "parallel sends: associations, or HTTP requests in flight (1..64); its work"
            " queue's prefetch is twice this (a job waits ready for each send)"
        ),
    ] = 2
    max_attempts: Annotated[
        int | None,
        doc("overrides `[retry] max_attempts` for this destination", default="`[retry]`'s"),
    ] = None
    delays: Annotated[
        list[Duration] | None,
        doc("overrides `[retry] delays` for this destination", default="`[retry]`'s"),
    ] = None
    connect_timeout: Annotated[Duration, doc("TCP connect (and TLS handshake)")] = Duration(10)
    tls: Annotated[TlsConfig | None, doc("table; see [TLS](destinations.md#tls)")] = None
    send_window: Annotated[
        str | list[str],
        doc(
            'when it may be sent to: `"Mon-Fri 19:00-07:00"`, or a list of such windows'
            " (`[DAYS] HH:MM[:SS]-HH:MM[:SS]`; an end before the start runs overnight)."
            " Outside them its jobs wait in its queue without using an attempt; see"
            " [Send windows](routing.md#send_window-when-a-destination-is-sent-to)",
            default="always",
        ),
    ] = ""
    transfer_syntax: Annotated[
        str,
        doc(
            "send Orthanc's copy transcoded to this transfer syntax UID"
            ' (`"1.2.840.10008.1.2.4.70"`), made by Orthanc and not stored there; see'
            " [Prepare before sending](routing.md#prepare-before-sending)",
            default="as stored",
        ),
    ] = ""
    modify: Annotated[
        ModifyConfig | None,
        doc(
            "table `{ replace = {...}, remove = [...], keep_private_tags = false }`: the copy"
            " sent is Orthanc's `/instances/{id}/modify` answer, not stored there",
            default="none",
        ),
    ] = None
    send_window_timezone: Annotated[
        str,
        doc("IANA time zone of `send_window` (`Europe/Paris`)", default="the machine's local time"),
    ] = ""

    def __post_init__(self) -> None:
        if not NAME.match(self.name):
            raise ValueError(f"destination name must match {NAME.pattern}, got {self.name!r}")
        if not 1 <= self.concurrency <= 64:
            raise self._error("concurrency must be 1..64")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise self._error("max_attempts must be at least 1")
        if self.delays is not None and not self.delays:
            raise self._error("delays must not be empty")
        self._check_positive("connect_timeout")
        if self.tls is not None:
            self._check_tls(self.tls)
        if self.transfer_syntax and not _UID.match(self.transfer_syntax):
            raise self._error(f"transfer_syntax {self.transfer_syntax!r} is not a UID")
        if self.modify is not None:
            self._check_modify(self.modify)
        if self.send_window_timezone and not self.send_window:
            raise self._error("send_window_timezone needs send_window")
        if self.send_window == []:
            raise self._error("send_window needs at least one window (leave it out: always)")
        if self.send_window:
            try:
                self.window()
            except ValueError as exc:
                raise self._error(str(exc)) from None

    def _check_modify(self, modify: ModifyConfig) -> None:
        identity = {"SOPInstanceUID", "SOPClassUID"} & set(modify.keywords())
        if identity:
            raise self._error(
                f"modify must leave {sorted(identity)[0]} alone: it names the instance"
            )
        unknown = unknown_tag_names(modify.keywords())
        if unknown:
            raise self._error(f"modify: {unknown[0]!r} is not a DICOM keyword")

    def prepare_body(self) -> dict[str, object] | None:
        """The body of Orthanc's POST /instances/{id}/modify that makes the copy to send,
        or None when the stored file is sent as it is."""
        if not self.transfer_syntax and self.modify is None:
            return None
        # Force and Keep: the copy keeps the instance's identity (Orthanc would give a
        # modified instance a new SOP Instance UID).
        body: dict[str, object] = {"Force": True, "Keep": ["SOPInstanceUID"]}
        if self.transfer_syntax:
            body["Transcode"] = self.transfer_syntax
        if self.modify is not None:
            if self.modify.replace:
                body["Replace"] = dict(self.modify.replace)
            if self.modify.remove:
                body["Remove"] = list(self.modify.remove)
            if not self.modify.keep_private_tags:
                body["RemovePrivateTags"] = True
        return body

    def window(self) -> SendWindow | None:
        """Its send windows; None when it may always be sent to."""
        if not self.send_window:
            return None
        return SendWindow.parse(self.send_window, self.send_window_timezone)

    def _error(self, message: str) -> ValueError:
        return ValueError(f"destination {self.name!r} (kind {self.kind!r}): {message}")

    def _check_positive(self, *keys: str) -> None:
        for key in keys:
            if getattr(self, key) <= 0:
                raise self._error(f"{key} must be more than 0")

    def _check_tls(self, tls: TlsConfig) -> None:
        if bool(tls.cert_file) != bool(tls.key_file):
            raise self._error("tls.cert_file and tls.key_file go together")
        for key in ("ca_file", "cert_file", "key_file"):
            path = getattr(tls, key)
            if path and not os.access(path, os.R_OK):
                raise self._error(f"tls.{key}: cannot read {path!r}")

    def with_environment(self, environ: Mapping[str, str]) -> Self:
        """Secrets from SENDQUEUE_DEST_<NAME>_PASSWORD / _TOKEN: only HTTP kinds have any."""
        if _secrets(self.name, environ):
            raise ConfigError(
                f"destination {self.name!r}: {_env_prefix(self.name)}* is for HTTP kinds only"
            )
        return self


class DicomDestinationConfig(DestinationConfigBase, frozen=True, tag="dicom"):
    """kind = "dicom": C-STORE, optionally over DICOM TLS."""

    kind: ClassVar[Literal["dicom"]] = "dicom"

    host: Annotated[str, doc("the SCP's host name or address", default="required")] = ""
    port: Annotated[int, doc("the SCP's port")] = 104
    called_aet: Annotated[str, doc("the SCP's AE title (1-16 ASCII characters)")] = "ANY-SCP"
    calling_aet: Annotated[str, doc("our AE title (1-16 ASCII characters)")] = "SENDQUEUE"
    acse_timeout: Annotated[Duration, doc("association negotiation")] = Duration(30)
    dimse_timeout: Annotated[
        Duration,
        doc("wait for one C-STORE response; large instances on slow links need more"),
    ] = Duration(120)
    idle_timeout: Annotated[
        Duration, doc("an association idle this long is released (and re-opened on demand)")
    ] = Duration(30)
    warnings: Annotated[
        Literal["delivered", "retry"],
        doc(
            "a C-STORE warning status (0xB000, 0xB006, 0xB007, other 0xBxxx, 0x0001, 0x0107,"
            ' 0x0116: stored, but not exactly as sent): `"delivered"`, or `"retry"` (retried,'
            " then parked with the status); see [Warnings](destinations.md#warnings)"
        ),
    ] = "delivered"
    storage_commitment: Annotated[
        bool,
        doc(
            "ask the peer to commit to keep each instance (Storage Commitment Push Model,"
            " N-ACTION) and count it delivered only once committed; the peer answers on the"
            " same association or on `[sender] commitment_listen`"
        ),
    ] = False
    commitment_timeout: Annotated[
        Duration,
        doc("the longest wait for the peer's commitment report; then the send is retried"),
    ] = Duration(60)
    transcode: Annotated[
        bool,
        doc(
            "send an uncompressed copy when the peer refuses the stored transfer syntax;"
            " `false` parks such instances instead"
        ),
    ] = True
    orthanc_modality: Annotated[
        str,
        doc(
            "the Orthanc modality (its id in `GET /modalities`) this destination stands for:"
            " Orthanc's own failed sends to it (`DicomModalityStore` jobs) are queued here"
            " (see `[ingest] capture_failed_jobs`)",
            default="none",
        ),
    ] = ""
    data_path: Annotated[
        Literal["fast", "pynetdicom"],
        doc(
            '`"fast"`: sendqueue\'s own associations, data written straight from the instance'
            ' (several times less CPU per instance); `"pynetdicom"`: pynetdicom\'s associations'
            " and threads, for a peer the fast path does not suit"
        ),
    ] = "fast"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.host:
            raise self._error("host is required")
        if not 0 < self.port < 65536:
            raise self._error("port out of range")
        for key in ("called_aet", "calling_aet"):
            if not _AET.match(getattr(self, key)):
                raise self._error(f"{key} must be 1-16 ASCII chars")
        self._check_positive("acse_timeout", "dimse_timeout", "commitment_timeout")


class HttpDestinationConfig(DestinationConfigBase, frozen=True):
    """What the HTTP kinds share: the peer's URL, its credentials and the HTTP timeout."""

    url: Annotated[
        str,
        doc(
            "`http://` or `https://`: the Orthanc base URL, or the DICOMweb root"
            " (`/studies` is appended)",
            default="required",
        ),
    ] = ""
    username: Annotated[
        str,
        doc("HTTP basic auth; the password can also come from `SENDQUEUE_DEST_<NAME>_PASSWORD`"),
    ] = ""
    password: Annotated[str, doc("the password of `username`")] = ""
    token: Annotated[
        str,
        doc(
            "bearer token, used instead of `username`; can also come from"
            " `SENDQUEUE_DEST_<NAME>_TOKEN`"
        ),
    ] = ""
    headers: Annotated[
        dict[str, str],
        doc("extra request headers (not Content-Type, Content-Length or Transfer-Encoding)"),
    ] = msgspec.field(default_factory=dict)
    http_timeout: Annotated[
        Duration,
        doc(
            "longest wait for the peer: for its answer once the body is sent, and for it to"
            " read each piece of the body"
        ),
    ] = Duration(120)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.url.startswith(("http://", "https://")):
            raise self._error(f"url must start with http:// or https://, got {self.url!r}")
        if _has_credentials(self.url):
            # A URL is printed, logged and shown to operators; a secret in it leaks.
            raise self._error(
                "url must not contain credentials (user:password@): put the user in"
                f" `username` and the password in `password` or {_env_prefix(self.name)}"
                "PASSWORD (a bearer token in `token`)"
            )
        if self.token and self.username:
            raise self._error("set either username (basic auth) or token (bearer), not both")
        if self.password and not self.username:
            raise self._error("password needs username")
        if self.tls is not None and not self.url.startswith("https://"):
            raise self._error("tls needs an https:// url")
        for header in self.headers:
            if header.lower() in _SENDER_HEADERS:
                raise self._error(f"headers must not set {header} (the sender does)")
        self._check_positive("http_timeout")

    def with_environment(self, environ: Mapping[str, str]) -> Self:
        """Secrets from SENDQUEUE_DEST_<NAME>_PASSWORD / _TOKEN, checked like the file's."""
        secrets = _secrets(self.name, environ)
        if not secrets:
            return self
        try:
            updated = msgspec.structs.replace(self, **secrets)
            updated.__post_init__()  # recent msgspec runs it in replace(), older ones do not
        except ValueError as exc:
            raise ConfigError(f"invalid config: {exc}") from None
        return updated


class OrthancDestinationConfig(HttpDestinationConfig, frozen=True, tag="orthanc"):
    """kind = "orthanc": `POST {url}/instances` to another Orthanc."""

    kind: ClassVar[Literal["orthanc"]] = "orthanc"

    orthanc_peer: Annotated[
        str,
        doc(
            "the Orthanc peer (its name in `GET /peers`) this destination stands for:"
            " Orthanc's own failed sends to it (`OrthancPeerStore` jobs) are queued here"
            " (see `[ingest] capture_failed_jobs`)",
            default="none",
        ),
    ] = ""


class DicomWebDestinationConfig(HttpDestinationConfig, frozen=True, tag="dicomweb"):
    """kind = "dicomweb": STOW-RS, `POST {url}/studies`."""

    kind: ClassVar[Literal["dicomweb"]] = "dicomweb"

    batch_max_instances: Annotated[
        int, doc("instances of one study sent together in one STOW-RS request (1..1000)")
    ] = 1
    batch_max_bytes: Annotated[
        int,
        doc(
            "a batch stops growing at this many bytes (at least 1 MiB); a bigger instance"
            " goes alone",
            default="`67108864` (64 MiB)",
        ),
    ] = 64 * _MIB

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.batch_max_instances <= 1000:
            raise self._error("batch_max_instances must be 1..1000")
        if self.batch_max_bytes < _MIB:
            raise self._error("batch_max_bytes must be at least 1048576 (1 MiB)")


DestinationConfig = DicomDestinationConfig | OrthancDestinationConfig | DicomWebDestinationConfig
#: Each kind's Struct, in the order the docs show them.
KINDS: dict[str, type[DestinationConfigBase]] = {
    "dicom": DicomDestinationConfig,
    "orthanc": OrthancDestinationConfig,
    "dicomweb": DicomWebDestinationConfig,
}


def _has_credentials(url: str) -> bool:
    """Whether the URL's authority carries a user (and maybe a password) before an `@`."""
    authority = url.partition("//")[2].split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    return "@" in authority


def _env_prefix(name: str) -> str:
    return "SENDQUEUE_DEST_" + re.sub(r"[^A-Z0-9]", "_", name.upper()) + "_"


def _secrets(name: str, environ: Mapping[str, str]) -> dict[str, str]:
    """password and token from the environment (NAME upper-cased, other chars -> _)."""
    prefix = _env_prefix(name)
    return {
        key: environ[prefix + key.upper()]
        for key in ("password", "token")
        if environ.get(prefix + key.upper())
    }


def keys_of(kind: str) -> frozenset[str]:
    """The keys a table of this kind may have (besides `kind`)."""
    return frozenset(KINDS[kind].__struct_fields__)


def kinds_with(key: str) -> list[str]:
    """The kinds that have this key, in KINDS order."""
    return [kind for kind in KINDS if key in keys_of(kind)]


def destination_tables(tables: object) -> object:
    """The raw [[destinations]] tables made ready for decoding: `kind` defaults to "dicom",
    and a key of another kind is a ConfigError naming the key, the destination, its kind and
    the kinds the key is for. Anything else odd is left for msgspec to report."""
    if not isinstance(tables, Sequence) or isinstance(tables, str):
        return tables
    return [_table_with_kind(table, index) for index, table in enumerate(tables)]


def _table_with_kind(table: object, index: int) -> object:
    if not isinstance(table, Mapping):
        return table
    table = {"kind": "dicom", **table}
    kind, name = table["kind"], table.get("name", f"#{index + 1}")
    where = f" - at `$.destinations[{index}]`"
    if not isinstance(kind, str) or kind not in KINDS:
        choices = ", ".join(repr(k) for k in KINDS)
        raise ConfigError(
            f"invalid config: destination {name!r}: kind must be one of {choices},"
            f" got {kind!r}{where}"
        )
    foreign = [key for key in table if key != "kind" and key not in keys_of(kind)]
    problems = [_foreign_key(key) for key in foreign if kinds_with(key)]
    if problems:
        raise ConfigError(
            f"invalid config: destination {name!r} (kind {kind!r}): {'; '.join(problems)}{where}"
        )
    return table


def _foreign_key(key: str) -> str:
    kinds = kinds_with(key)
    if len(kinds) == 1:
        return f"{key} is for kind {kinds[0]!r} only"
    return f"{key} is for kinds {' and '.join(repr(k) for k in kinds)} only"
