"""Plain-text views of the admin API's answers, for people on call reading a terminal.

Pure functions of the decoded JSON: no I/O, so the tests check them line by line.
Times are shown in local time (the operator's wall clock), as "2024-05-01 14:03:22".
Every cell goes through `printable`: reasons, UIDs and names come from remote peers and
DICOM headers, and an escape sequence in them must not drive the operator's terminal.
"""

from __future__ import annotations

import re
import time
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

#: The reason column of the parked table is cut to this width; --json has it in full.
REASON_WIDTH = 100


def _headers(words: str) -> tuple[str, ...]:
    return tuple(word.replace("_", " ") for word in words.split())


_STATUS_HEADERS = _headers(
    "DESTINATION KIND STATE READY IN_FLIGHT DELAYED PARKED CONSUMERS OLDEST_WAITING"
)
_PARKED_HEADERS = _headers("ID PARKED_AT DESTINATION ATTEMPTS REASON_CLASS STUDY PATIENT REASON")


#: Bidirectional overrides and isolates (category Cf) reorder what a terminal shows.
_BIDI = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """The text without control characters (ESC, BEL, CR, C1 controls, DEL, bidi
    overrides): white space among them becomes a space, the rest is dropped."""
    kept = []
    for char in _BIDI.sub("", text):
        if unicodedata.category(char) == "Cc":
            if char.isspace():
                kept.append(" ")
            continue
        kept.append(char)
    return "".join(kept)


def printable_lines(text: str) -> str:
    """`printable`, line by line (the lines stay)."""
    return "\n".join(printable(line) for line in text.split("\n"))


def format_time(epoch: float | None) -> str:
    if not epoch:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def format_age(seconds: float | None) -> str:
    """A short duration: "45s", "3m 12s", "2h 05m", "3d 04h"; "-" when unknown."""
    if seconds is None:
        return "-"
    whole = max(0, round(seconds))
    days, rest = divmod(whole, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def shorten(text: str, width: int) -> str:
    """One line of at most `width` characters, cut in the middle.

    The end of an error usually holds what matters ("... DIMSE status 0xA900 (...)"),
    while the middle is often a long UID that has its own column.
    """
    text = " ".join(printable(text).split())  # reasons may hold newlines from peers
    if len(text) <= width:
        return text
    head = (width - 1) // 4
    return text[:head] + "…" + text[len(text) - (width - 1 - head) :]


def render_table(
    headers: Sequence[str], rows: Iterable[Sequence[object]], right: Iterable[int] = ()
) -> str:
    """Columns padded to their widest cell; the columns numbered in `right` right-aligned."""
    cells = [[str(c) for c in headers], *([printable(str(c)) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    aligned = set(right)
    lines = []
    for row in cells:
        parts = [
            cell.rjust(widths[i]) if i in aligned else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def render_status(queues: Mapping[str, Any], operation: Mapping[str, Any] | None = None) -> str:
    rows = [
        (
            d.get("name", "?"),
            d.get("kind", ""),
            d.get("state", "unknown"),
            _count(d.get("ready")),
            _count(d.get("in_flight")),
            _count(sum((d.get("delayed") or {}).values())),
            _count(d.get("parked")),
            _count(d.get("consumers")),
            # An empty queue has no oldest job, whatever age the API reports.
            format_age(d.get("oldest_waiting_seconds") if d.get("ready") else None),
        )
        for d in queues.get("destinations", [])
    ]
    table = render_table(_STATUS_HEADERS, rows, right=range(3, 9))
    lines = [table if rows else "no destinations configured"]
    lines.append("")
    lines.append(f"parked: {_count(queues.get('parked'))}   failed: {_count(queues.get('failed'))}")
    tiers = queues.get("delay_tiers") or []
    if tiers:
        text = ", ".join(f"{t.get('tier')}: {_count(t.get('messages'))}" for t in tiers)
        lines.append(f"waiting in delay tiers: {text}")
    if operation and operation.get("running"):
        lines.append("running: " + progress_line(operation))
    return printable_lines("\n".join(lines))


def render_parked(page: Mapping[str, Any]) -> str:
    items = page.get("items", [])
    total = int(page.get("total") or 0)
    if not items:
        return "no parked items match" if total == 0 else f"{total} match, none on this page"
    rows = [
        (
            i.get("id", ""),
            format_time(i.get("parked_at")),
            i.get("destination", ""),
            i.get("attempts", ""),
            i.get("reason_class") or "-",
            i.get("study_instance_uid") or "-",
            i.get("patient_id") or "-",
            shorten(str(i.get("reason") or ""), REASON_WIDTH),
        )
        for i in items
    ]
    table = render_table(_PARKED_HEADERS, rows, right=(3,))
    summary = f"{len(items)} of {total} parked item(s) shown"
    if len(items) < total:
        summary += "; narrow with filters or raise --limit"
    captured = render_captured_jobs(items)
    return printable_lines(f"{table}\n\n{captured}{summary}")


def render_captured_jobs(items: Sequence[Mapping[str, Any]]) -> str:
    """The failed Orthanc store jobs the listed items were captured from, one line each
    (the items of one job: `--orthanc-job ID`)."""
    jobs: dict[str, list[Mapping[str, Any]]] = {}
    for item in items:
        if item.get("orthanc_job"):
            jobs.setdefault(str(item["orthanc_job"]), []).append(item)
    if not jobs:
        return ""
    rows = [
        (
            job_id,
            format_time(found[0].get("orthanc_job_failed_at")),
            found[0].get("orthanc_job_instances", ""),
            len(found),
            shorten(str(found[0].get("orthanc_job_error") or ""), REASON_WIDTH),
        )
        for job_id, found in jobs.items()
    ]
    headers = ("ORTHANC JOB", "FAILED AT", "INSTANCES", "PARKED HERE", "ORTHANC'S ERROR")
    return (
        "captured from Orthanc's failed sends:\n"
        + render_table(headers, rows, right=(2, 3))
        + "\n\n"
    )


def render_result(action: str, result: Mapping[str, Any], to: str | None = None) -> str:
    done = int(result.get("requeued" if action == "requeue" else "deleted") or 0)
    failed = int(result.get("failed") or 0)
    where = f" to {to}" if to else (" to their destinations" if action == "requeue" else "")
    verb = "requeued" if action == "requeue" else "deleted"
    text = f"{verb} {done} parked item(s){where}"
    if failed:
        text += f"; {failed} failed and stay parked (see the retry service's log)"
    return printable(text)


def progress_line(operation: Mapping[str, Any]) -> str:
    done = int(operation.get("done") or 0)
    total = int(operation.get("total") or 0)
    action = operation.get("action") or "operation"
    if total <= 0:
        return printable(f"{action}: {done} done")
    return printable(f"{action}: {done}/{total} ({100 * done // total}%)")


def _count(value: object) -> str:
    return "-" if value is None else str(value)
