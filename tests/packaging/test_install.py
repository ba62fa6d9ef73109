"""sendqueue installed from its package, not from the checkout: what lands in
site-packages, and that every service runs from there (console and OpenAPI included)."""

from __future__ import annotations

import shutil
import sys
import sysconfig
import tomllib
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.integration.harness import dicom_destination, wait_received
from tests.packaging.tree import ROOT
from tests.packaging.tree import run as _run
from tests.support.dicom_factory import make_study, sop_instance_uid

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv with the wheel installed (no deps: they come from the test's own
    environment, added behind it by a .pth file)."""
    work = tmp_path_factory.mktemp("install")
    venv = work / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv)
    site = Path(
        _run(venv / "bin/python", "-c", "import site; print(site.getsitepackages()[0])").strip()
    )
    before = {p.name for p in site.iterdir()}
    _run(
        sys.executable, "-m", "pip", "--python", venv / "bin/python", "install", "--no-deps", wheel
    )
    (site / "_sendqueue_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    (site / "_installed_by_the_test.txt").write_text("\n".join(sorted(before)))
    yield venv
    shutil.rmtree(work, ignore_errors=True)


def _site(venv: Path) -> Path:
    return next((venv / "lib").glob("python3*/site-packages"))


def test_the_wheel_installs_one_import_package_and_its_dist_info(installed):
    site = _site(installed)
    before = set((site / "_installed_by_the_test.txt").read_text().split())
    added = (
        {p.name for p in site.iterdir()}
        - before
        - {
            "_sendqueue_test_deps.pth",
            "_installed_by_the_test.txt",
        }
    )
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert added == {"sendqueue", f"sendqueue-{version}.dist-info"}
    assert {p.name for p in (site / "sendqueue").iterdir()} == {"services", "shared"}
    console = site / "sendqueue/services/retry/admin/console"
    assert {p.name for p in console.iterdir()} >= {"index.html", "console.js", "console.css"}


def test_the_generic_names_are_not_importable_from_the_install(installed, tmp_path):
    probe = (
        "import importlib.util, sendqueue.services.cli.main as m;"
        "print(m.__file__);"
        "print(importlib.util.find_spec('services'), importlib.util.find_spec('shared'))"
    )
    out = _run(installed / "bin/python", "-c", probe, cwd=tmp_path).splitlines()
    assert out[0].startswith(str(_site(installed)))
    assert out[1] == "None None"


async def test_every_service_runs_from_the_install_and_serves_the_console(
    installed, make_pipeline, orthanc, scp, tmp_path
):
    # Given the installed `sendqueue` command, started outside the checkout
    pipeline = make_pipeline(destinations=[dicom_destination("pacs", scp.port, scp.aet)])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    pipeline.command = [str(installed / "bin/sendqueue")]
    pipeline.cwd = elsewhere
    pipeline.spawn("run")
    await pipeline.wait_healthy("ingest", "sender", "retry", timeout=60)
    # When an instance is stored in Orthanc, it is delivered
    study = make_study(3)
    for data in study:
        orthanc.upload(data)
    assert await wait_received(scp, 3, timeout=60) == {sop_instance_uid(d) for d in study}
    # And the retry service serves the console and the API's description
    async with aiohttp.ClientSession() as http:
        async with http.get(pipeline.url("retry", "/")) as page:
            assert page.status == 200
            assert "console.js" in await page.text()
        async with http.get(pipeline.url("retry", "/console/console.js")) as script:
            assert script.status == 200
        async with http.get(pipeline.url("retry", "/api/openapi.json")) as spec:
            assert spec.status == 200
            assert (await spec.json())["openapi"].startswith("3.")


async def test_an_install_without_the_console_files_stops_the_retry_service(
    installed, make_pipeline, orthanc, tmp_path
):
    console = _site(installed) / "sendqueue/services/retry/admin/console"
    hidden = tmp_path / "console-hidden"
    shutil.move(console, hidden)
    try:
        pipeline = make_pipeline(destinations=[dicom_destination("pacs", 1, "NOBODY")])
        pipeline.command = [str(installed / "bin/sendqueue")]
        pipeline.cwd = tmp_path
        proc = pipeline.spawn("retry")
        code = proc.wait(timeout=60)
        log = (tmp_path / "retry.log").read_text()
        assert code == 2, log
        assert "console's files are missing" in log
    finally:
        shutil.move(hidden, console)
