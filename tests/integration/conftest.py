"""Fixtures for end-to-end tests: a Pipeline factory that always stops what it started."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import Pipeline
from tests.support.orthanc import OrthancProcess


@pytest.fixture
async def make_pipeline(
    amqp_url: str, orthanc: OrthancProcess, tmp_path: Path
) -> AsyncIterator[Callable[..., Pipeline]]:
    made: list[Pipeline] = []

    def make(**kwargs: Any) -> Pipeline:
        pipeline = Pipeline(amqp_url=amqp_url, orthanc=orthanc, tmp=tmp_path, **kwargs)
        made.append(pipeline)
        return pipeline

    yield make
    for pipeline in made:
        await pipeline.stop()
