"""Unit tests: no broker, no Orthanc, no peer; each test is over in well under a second."""

from __future__ import annotations

import pytest

from sendqueue.shared import settle


@pytest.fixture
def no_publish_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    """A message whose replacement was not confirmed goes back at once, not after 1 s."""
    monkeypatch.setattr(settle, "PUBLISH_RETRY_PAUSE", 0.0)
