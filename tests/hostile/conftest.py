"""Hostile-input tests share the end-to-end fixtures (a Pipeline factory)."""

from tests.integration.conftest import make_pipeline

__all__ = ["make_pipeline"]
