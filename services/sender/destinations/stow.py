"""STOW-RS (PS3.18 10.5) on the wire: the multipart body and what the answer says per instance.

The answer's ReferencedSOPSequence lists what the peer stored and FailedSOPSequence what
it did not, with a FailureReason that uses C-STORE status codes (PS3.18 I.2.2), so the
DIMSE table decides retry or park. An instance in neither list was not confirmed stored:
retried (Orthanc's plugin answers 200 with both lists empty when its disk is full).

Only such an answer counts as stored. A 200 with an empty body (which some servers send,
and the standard's 200 "all stored" allows) counts once a QIDO-RS search finds each
instance at the peer. Anything else, a 200 HTML login page of a proxy, `{}`, a 204, is no
answer: the instance is retried, never taken for delivered.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sendqueue.services.sender.destinations.dimse_status import Outcome, classify
from sendqueue.services.sender.destinations.http import Part
from sendqueue.shared.errors import PermanentError, SendQueueError, TransientError

_REFERENCED = "00081199"
_FAILED = "00081198"
_SOP_INSTANCE = "00081155"
_FAILURE_REASON = "00081197"
_WARNING_REASON = "00081196"

#: What each instance's send returns: a short description, or the error to raise.
Result = str | SendQueueError


def new_boundary() -> str:
    return f"sendqueue-{uuid.uuid4().hex}"


def content_type(boundary: str) -> str:
    # Orthanc's plugin insists on the type parameter and on parts of exactly
    # "application/dicom" (no transfer-syntax parameter).
    return f'multipart/related; type="application/dicom"; boundary={boundary}'


def body_parts(instances: Sequence[Part], boundary: str) -> list[Part]:
    """The multipart body as bytes and files, for http.StreamedBody (files are streamed);
    each instance is its bytes (held in memory) or its spool file."""
    head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    parts: list[Part] = []
    for instance in instances:
        parts += [head, instance, b"\r\n"]
    parts.append(f"--{boundary}--\r\n".encode())
    return parts


@dataclass
class StowAnswer:
    """The two lists of a STOW-RS answer: SOP Instance UID -> warning or failure code."""

    stored: dict[str, int | None] = field(default_factory=dict)
    failed: dict[str, int | None] = field(default_factory=dict)


def parse_answer(raw: bytes) -> StowAnswer | None:
    """The answer's lists, or None when the body is not a DICOM JSON STOW answer."""
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    if isinstance(doc, list) and len(doc) == 1:
        doc = doc[0]  # some servers wrap the one dataset in a list
    if not isinstance(doc, dict) or not ({_REFERENCED, _FAILED} & doc.keys()):
        return None
    return StowAnswer(
        stored=_items(doc.get(_REFERENCED), _WARNING_REASON),
        failed=_items(doc.get(_FAILED), _FAILURE_REASON),
    )


def _items(sequence: Any, code_tag: str) -> dict[str, int | None]:
    found: dict[str, int | None] = {}
    items = sequence.get("Value", []) if isinstance(sequence, dict) else []
    for item in items if isinstance(items, list) else []:
        uid = _first(item, _SOP_INSTANCE)
        if isinstance(uid, str):
            code = _first(item, code_tag)
            found[uid] = code if isinstance(code, int) else None
    return found


def _first(item: Any, tag: str) -> Any:
    if not isinstance(item, dict):
        return None
    values = item.get(tag, {}).get("Value") if isinstance(item.get(tag), dict) else None
    return values[0] if isinstance(values, list) and values else None


def no_answer(uid: str, status: int, what: str) -> TransientError:
    """A 2xx that is not a STOW-RS answer: nothing says the instance was stored."""
    return TransientError(
        f"{what}: HTTP {status} without a STOW-RS answer (not DICOM JSON with the stored and"
        f" failed lists): {uid} is not confirmed stored",
        reason_class="stow-no-answer",
    )


def result_for(uid: str, answer: StowAnswer | None, status: int, what: str) -> Result:
    """What a 200 or 202 answer means for one instance of the request."""
    if answer is None:
        return no_answer(uid, status, what)
    if uid in answer.stored:
        warning = answer.stored[uid]
        return "Stored" if warning is None else f"Stored with warning 0x{warning:04X}"
    if uid in answer.failed:
        return _failure(uid, answer.failed[uid], what)
    return TransientError(
        f"{what}: HTTP {status} but {uid} is neither stored nor failed in the answer",
        reason_class="stow-unconfirmed",
    )


def _failure(uid: str, code: int | None, what: str) -> Result:
    if code is None:
        return TransientError(
            f"{what}: {uid} failed without a FailureReason", reason_class="stow-failed"
        )
    outcome, text, reason_class = classify(code)
    if outcome is Outcome.DELIVERED:
        return text
    message = f"{what}: {uid} failed: FailureReason 0x{code:04X} ({text})"
    reason_class = reason_class.replace("dimse-", "stow-")
    if outcome is Outcome.TRANSIENT:
        return TransientError(message, reason_class=reason_class)
    return PermanentError(message, reason_class=reason_class)


def failure_codes(answer: StowAnswer | None) -> str:
    """The per-instance failure codes, for the reason of a whole-request failure (409)."""
    if answer is None or not answer.failed:
        return ""
    codes = sorted({f"0x{c:04X}" for c in answer.failed.values() if c is not None})
    return f" (FailureReason {', '.join(codes)})" if codes else ""


def qido_path(uid: str) -> str:
    """The QIDO-RS search that finds one instance by its SOP Instance UID."""
    return f"/instances?{_SOP_INSTANCE_KEYWORD}={uid}&includefield={_SOP_INSTANCE_KEYWORD}"


_SOP_INSTANCE_KEYWORD = "SOPInstanceUID"
_SOP_INSTANCE_UID_TAG = "00080018"


def qido_found(raw: bytes, uid: str) -> bool:
    """Whether a QIDO-RS answer lists the instance `uid`."""
    try:
        doc = json.loads(raw)
    except ValueError:
        return False
    if not isinstance(doc, list):
        return False
    return any(_first(item, _SOP_INSTANCE_UID_TAG) == uid for item in doc)
