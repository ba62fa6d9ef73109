"""High availability: several processes of a service on one config, one of them killed."""

from __future__ import annotations

from tests.integration.conftest import make_pipeline

__all__ = ["make_pipeline"]
