"""The Python versions sendqueue states it runs on (3.11 to 3.13): the wheel and the locked
dependencies install on each, the unit tests pass there, and `sendqueue run` forwards.

The whole suite runs on the project's own interpreter; this checks the others the machine
has (a fresh Debian 12 has only 3.11, where this test has nothing to add and says so).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.harness import dicom_destination, wait_received
from tests.packaging.tree import ROOT, run
from tests.support.dicom_factory import make_study, sop_instance_uid

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

OTHER_VERSIONS = ("3.12", "3.13")


def _interpreter(version: str) -> str:
    """python<version> on PATH, or one that pyenv installed but does not put first."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    on_path = shutil.which(f"python{version}")
    candidates = [
        *([on_path] if on_path else []),
        *map(str, pyenv.glob(f"{version}.*/bin/python3")),
    ]
    for candidate in candidates:
        if subprocess.run([candidate, "-c", "pass"], capture_output=True).returncode == 0:
            return candidate
    pytest.skip(f"no Python {version} on this machine (the suite itself runs on 3.11)")


@pytest.mark.parametrize("version", OTHER_VERSIONS)
async def test_installs_passes_the_unit_tests_and_forwards(
    version, wheel, make_pipeline, orthanc, scp, tmp_path
):
    python = _interpreter(version)
    venv = tmp_path / f"venv{version}"
    run(python, "-m", "venv", venv)
    pip = [venv / "bin/python", "-m", "pip", "--disable-pip-version-check", "install"]
    run(*pip, "--require-hashes", "-r", ROOT / "requirements-dev.lock", timeout=400)
    run(*pip, "--no-deps", wheel)
    reported = run(venv / "bin/python", "-c", "import sys; print(sys.version_info[:2])")
    assert reported.strip() == str(tuple(int(p) for p in version.split(".")))

    # The unit tests, against the installed package (run from a copy of tests/ only, and of
    # docs/: a unit test checks that the docs' key tables say what the config code says)
    shutil.copytree(ROOT / "tests", tmp_path / "suite" / "tests")
    shutil.copytree(ROOT / "docs", tmp_path / "suite" / "docs")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "suite")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    done = subprocess.run(
        [venv / "bin/python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/unit"],
        cwd=tmp_path / "suite",
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]

    # And the installed `sendqueue run` forwards on this interpreter
    pipeline = make_pipeline(destinations=[dicom_destination("pacs", scp.port, scp.aet)])
    pipeline.command = [str(venv / "bin/sendqueue")]
    pipeline.cwd = tmp_path
    pipeline.spawn("run")
    await pipeline.wait_healthy("ingest", "sender", "retry", timeout=60)
    study = make_study(2)
    for data in study:
        orthanc.upload(data)
    assert await wait_received(scp, 2, timeout=60) == {sop_instance_uid(d) for d in study}
