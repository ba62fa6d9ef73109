"""The end-to-end Pipeline factory, for the installed copy's tests too."""

from tests.integration.conftest import make_pipeline

__all__ = ["make_pipeline"]
