"""Logging: one line per event, plain text or JSON; job events carry their fields.

Every line is masked before it is written: the password of any URL in it (`user:pw@`,
also when the password holds `@`), and every secret of the config (`hide_secrets`), so
that an exception that quotes a URL or a token cannot leak it into a log.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterable
from typing import Any

from sendqueue.shared.config import mask_url

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


#: Secrets of the loaded config, longest first (so a secret holding another is masked whole).
_SECRETS: list[str] = []
MASK = "******"


def hide_secrets(secrets: Iterable[str]) -> None:
    """From now on, these values never appear in a log line (the config's passwords, tokens)."""
    _SECRETS[:] = sorted({s for s in (*_SECRETS, *secrets) if len(s) >= 3}, key=len, reverse=True)


def mask(text: str) -> str:
    """The text with URL passwords and the config's secrets replaced by ******."""
    text = mask_url(text)
    for secret in _SECRETS:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return mask(self._format(record))

    def _format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": mask(record.getMessage()),
        }
        payload.update(
            {
                k: mask(v) if isinstance(v, str) else v
                for k, v in getattr(record, "fields", {}).items()
            }
        )
        if record.exc_info:
            payload["error"] = mask(self.formatException(record.exc_info))
        return json.dumps(payload, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if fields:
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        return mask(line)


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
