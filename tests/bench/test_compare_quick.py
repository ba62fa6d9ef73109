"""bench/compare.py --quick: every leg of the comparison runs and reports (no timing)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.availability import unavailable
from tests.support.broker_lock import using_broker

pytestmark = [
    pytest.mark.slow,
    pytest.mark.usefixtures("require_rabbitmq", "require_orthanc"),
    pytest.mark.timeout(660),  # the comparison itself is bounded at 600 s
]

ROOT = Path(__file__).resolve().parents[2]


def test_the_quick_comparison_runs_every_leg_for_every_size(tmp_path):
    for tool in ("storescp", "storescu"):
        if shutil.which(tool) is None:
            unavailable(f"{tool} (dcmtk) is not installed")
    out = tmp_path / "compare.json"
    with using_broker():
        done = subprocess.run(
            [sys.executable, "bench/compare.py", "--quick", "--json", str(out)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    legs = {(r["size"], r["method"]) for r in rows}
    methods = ["native", "storescu", "sendqueue-send", "sendqueue-run", "sendqueue-fast",
               "sendqueue-pynetdicom", "peer-store", "sendqueue-orthanc",
               "sendqueue-dicomweb"]  # fmt: skip
    # The legs that start ingest also timed from its first read of the changes.
    methods += ["sendqueue-run (warm)", "sendqueue-fast (warm)", "sendqueue-pynetdicom (warm)"]
    assert legs == {(size, m) for size in ("0.5 MB", "5 MB") for m in methods}
    for row in rows:
        assert row["inst_per_s"] > 0 and row["peak_rss_mb"] > 0, row
        assert row["cpu_ms_per_instance"], row
        assert row["failed_attempts"] == 0, row
        if row["method"].startswith(("sendqueue-send", "sendqueue-run", "sendqueue-fast",
                                     "sendqueue-pynetdicom")):  # fmt: skip
            # (the DICOM legs also count the broker's CPU; the HTTP legs the peer's)
            assert "rabbitmq" in row["cpu_ms_per_instance"], row
        elif row["method"].startswith("sendqueue"):
            assert "peer orthanc" in row["cpu_ms_per_instance"], row
    assert "| sendqueue-fast" in done.stdout  # the table was printed
