"""Logging: one line per event, plain text or JSON; job events carry their fields."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

#: Fields a job-state log line may carry (and nothing else: no secrets by construction).
JOB_FIELDS = (
    "destination",
    "orthanc_id",
    "sop_instance_uid",
    "study_instance_uid",
    "attempt",
    "outcome",
    "reason",
    "reason_class",
    "delay",
    "count",
    "source",
    "orthanc_job",
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        payload.update(getattr(record, "fields", {}))
        if record.exc_info:
            payload["error"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if fields:
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        return line


def configure(level: str | None = None, fmt: str | None = None) -> None:
    """SENDQUEUE_LOG_LEVEL / SENDQUEUE_LOG_FORMAT (text|json) unless given."""
    level = level or os.environ.get("SENDQUEUE_LOG_LEVEL", "INFO")
    fmt = fmt or os.environ.get("SENDQUEUE_LOG_FORMAT", "text")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # pynetdicom logs every PDU at INFO; keep it to warnings.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("aiormq").setLevel(logging.WARNING)


def job_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    """One structured line per job state change (queued, sent, retry, parked, ...)."""
    kept = {k: v for k, v in fields.items() if k in JOB_FIELDS and v not in (None, "")}
    logger.log(level, event, extra={"fields": {"event": event, **kept}})
