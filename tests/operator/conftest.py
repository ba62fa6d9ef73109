"""Fixtures for the operator-facing tests: the pipeline factory and a headless browser."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator

import pytest

# The Pipeline factory of the end-to-end tests, shared rather than copied.
from tests.integration.conftest import make_pipeline  # noqa: F401
from tests.operator.webdriver import CHROMEDRIVER, CHROMIUM, Browser


@pytest.fixture
async def browser(request: pytest.FixtureRequest) -> AsyncIterator[Browser]:
    """Headless Chromium driven over WebDriver; skipped locally (failed in CI) without it."""
    from tests.conftest import attach_log
    from tests.support.availability import unavailable

    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if shutil.which(path) is None]
    if missing:
        unavailable(f"{' and '.join(missing)} not installed (Debian chromium, chromium-driver)")
    async with Browser() as session:
        attach_log(request, "chromedriver", session.log_path)
        yield session
