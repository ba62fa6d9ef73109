"""Fixtures of the packaging tests: the wheel of the release tree, and the end-to-end
Pipeline factory (for the installed copy's tests too)."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import make_pipeline
from tests.packaging.tree import run, tracked_tree

__all__ = ["make_pipeline", "wheel"]


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The wheel built from the tracked tree, as a release would ship it."""
    work = tmp_path_factory.mktemp("wheel")
    tree = tracked_tree(work / "tree")
    dist = work / "dist"
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "--wheel-dir",
        dist,
        tree,
    )
    (built,) = dist.glob("sendqueue-*.whl")
    yield built
    shutil.rmtree(work, ignore_errors=True)
