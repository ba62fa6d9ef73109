"""The ingest feed on fakes, for every ingest test module."""

from tests.unit.ingest.test_feed import make_ingest  # noqa: F401 (a fixture)
