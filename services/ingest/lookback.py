"""The look-back window: which of Orthanc's changes are new, even below the cursor.

Following /changes with `since = cursor` alone loses changes in two ways:

- With the PostgreSQL index and several writers, change N can become visible after N+1
  was read (transactions commit out of order): `since = N+1` never returns N.
- An Orthanc restored from a backup while ingest was down numbers its new changes from
  the backup's last one: if it passed the old cursor meanwhile, `since = cursor` skips the
  changes between the backup and the cursor, which are new images.

So every round re-reads the last `size` sequence numbers below the cursor too, and keeps
what each of them was (a fingerprint: type, resource, date). A change in the window that
was not seen is new (revealed late); one whose fingerprint differs is new (a replaced
database). If even the oldest remembered change differs, the database was replaced below
the window: the caller follows it from the start (duplicates are possible, loss is not).

Pure logic: where the cursor and the window are kept is the caller's business.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: Sequence numbers re-read below the cursor in every round.
LOOK_BACK = 200


def fingerprint(change: Mapping[str, Any]) -> str:
    return f"{change.get('ChangeType')}|{change.get('ID')}|{change.get('Date', '')}"


def seq_of(change: Mapping[str, Any]) -> int:
    return int(change["Seq"])


@dataclass
class Sorted:
    """One page, sorted by the window."""

    #: Changes to queue, in seq order.
    fresh: list[dict[str, Any]] = field(default_factory=list)
    #: The database was replaced below the window: follow it from the start.
    replaced: bool = False


class LookBack:
    """Remembers the changes at or below the cursor, by seq, for `size` seqs."""

    def __init__(self, remembered: Mapping[int, str] | None, size: int = LOOK_BACK) -> None:
        self.size = size
        #: None: nothing is known of what was queued before (a first start, or an upgrade
        #: from a version without the window): what is at or below the cursor counts as seen.
        self._seen: dict[int, str] | None = dict(remembered) if remembered is not None else None

    @property
    def remembered(self) -> dict[int, str]:
        return dict(self._seen or {})

    def since(self, cursor: int) -> int:
        """Where the next read starts: `size` seqs below the cursor."""
        return max(0, cursor - self.size)

    def sort(self, changes: Iterable[dict[str, Any]], cursor: int) -> Sorted:
        page = sorted(changes, key=seq_of)
        if self._seen is None:
            self._seen = {seq_of(c): fingerprint(c) for c in page if seq_of(c) <= cursor}
        result = Sorted()
        known = [c for c in page if seq_of(c) in self._seen]
        if known and self._differs(known[0]):
            # The oldest change both remembered and still there differs: the database
            # diverged at or below it, maybe below the window (deleted resources take
            # their changes with them, so nothing older is there to tell).
            result.replaced = True
            return result
        for change in page:
            seq = seq_of(change)
            if seq not in self._seen or self._differs(change):
                result.fresh.append(change)
        return result

    def remember(self, changes: Iterable[dict[str, Any]], cursor: int) -> None:
        """Once their jobs are confirmed; forgets what fell out of the window."""
        seen = self._seen if self._seen is not None else {}
        for change in changes:
            seen[seq_of(change)] = fingerprint(change)
        floor = self.since(cursor)
        self._seen = {seq: fp for seq, fp in seen.items() if seq > floor}

    def forget(self) -> None:
        """Following a replaced database from the start: nothing of it was seen."""
        self._seen = {}

    def _differs(self, change: Mapping[str, Any]) -> bool:
        assert self._seen is not None
        return self._seen.get(seq_of(change)) != fingerprint(change)
