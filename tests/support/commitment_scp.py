"""A Storage SCP that is also a Storage Commitment SCP answering on the same association:
it commits to what it stored, and reports the rest as failed ("no such object instance")."""

from __future__ import annotations

import threading
import time
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt

from tests.support.ports import free_port
from tests.support.scp import UNCOMPRESSED

PUSH_MODEL = "1.2.840.10008.1.20.1"
PUSH_MODEL_INSTANCE = "1.2.840.10008.1.20.1.1"


class CommittingSCP:
    def __init__(self, aet: str = "COMMITTER", *, forget: set[str] | None = None) -> None:
        self.aet = aet
        self.port = free_port()
        #: SOP Instance UIDs it stores but then "loses": their commitment fails.
        self.forget = set(forget or ())
        self.stored: set[str] = set()
        self.reports = 0
        self._lock = threading.Lock()
        self._ae = AE(ae_title=aet)
        for context in AllStoragePresentationContexts:
            assert context.abstract_syntax is not None
            self._ae.add_supported_context(context.abstract_syntax, UNCOMPRESSED)
        self._ae.add_supported_context(PUSH_MODEL)
        self._server: Any = None

    def __enter__(self) -> CommittingSCP:
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_N_ACTION, self._on_action),
        ]
        self._server = self._ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=handlers
        )
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()

    def _on_store(self, event: Any) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        with self._lock:
            if uid not in self.forget:
                self.stored.add(uid)
        return 0x0000

    def _on_action(self, event: Any) -> tuple[int, None]:
        request = event.action_information
        threading.Thread(target=self._report, args=(event.assoc, request), daemon=True).start()
        return 0x0000, None

    def _report(self, assoc: Any, request: Dataset) -> None:
        time.sleep(0.2)  # after the N-ACTION response has gone out
        info = Dataset()
        info.TransactionUID = request.TransactionUID
        committed, failed = [], []
        for item in request.ReferencedSOPSequence:
            with self._lock:
                kept = str(item.ReferencedSOPInstanceUID) in self.stored
            if kept:
                committed.append(item)
            else:
                item.FailureReason = 0x0112
                failed.append(item)
        if committed:
            info.ReferencedSOPSequence = committed
        if failed:
            info.FailedSOPSequence = failed
        assoc.send_n_event_report(info, 2 if failed else 1, PUSH_MODEL, PUSH_MODEL_INSTANCE)
        with self._lock:
            self.reports += 1
