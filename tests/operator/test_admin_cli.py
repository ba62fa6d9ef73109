"""`sendqueue status | parked | pause | resume` against a real pipeline.

The commands run in a worker thread (they start their own event loop, as from a shell)
while the services keep running in the test's loop.
"""

from __future__ import annotations

import asyncio
import io
import json

import pydicom
import pytest

from sendqueue.services.cli import admin_commands as admin_cli
from tests.integration.harness import dicom_destination, wait_for, wait_received
from tests.support.dicom_factory import make_study, sop_instance_uid
from tests.support.ports import free_port
from tests.support.scp import ScriptedSCP, always, fail_for


async def sendqueue(capsys, *argv: str) -> tuple[int, str, str]:
    """Run one admin command as the shell would; (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = await asyncio.to_thread(admin_cli.main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def sendqueue_json(capsys, *argv: str):
    code, out, err = await sendqueue(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def study_uid(study: list[bytes]) -> str:
    return str(pydicom.dcmread(io.BytesIO(study[0]), stop_before_pixels=True).StudyInstanceUID)


@pytest.fixture
def studies():
    """Study A (2 instances, both refused), B (2, one refused), C (1, refused)."""
    a = make_study(2, patient_id="PAT-A")
    b = make_study(2, patient_id="PAT-B")
    c = make_study(1, patient_id="PAT-C")
    refused = {sop_instance_uid(d) for d in [*a, b[0], *c]}
    return a, b, c, refused


async def parked_pipeline(make_pipeline, orthanc, scp, studies, **kwargs):
    a, b, c, refused = studies
    scp.status_for = fail_for(refused, 0xA900)
    pipeline = make_pipeline(**kwargs)
    await pipeline.start()
    for data in [*a, *b, *c]:
        orthanc.upload(data)
    await pipeline.wait_parked(4)
    return pipeline


async def test_status_and_list_show_what_is_parked_and_why(
    make_pipeline, orthanc, scp, studies, capsys
):
    a, _b, _c, _refused = studies
    pipeline = await parked_pipeline(
        make_pipeline,
        orthanc,
        scp,
        studies,
        destinations=[dicom_destination("pacs", scp.port, scp.aet)],
    )
    config = ["--config", str(pipeline.config_path)]

    # status: one row per destination, with its parked count
    code, out, _ = await sendqueue(capsys, "status", *config)
    assert code == 0
    [row] = [line.split() for line in out.splitlines() if line.startswith("pacs ")]
    assert row[:3] == ["pacs", "dicom", "up"] and row[6] == "4"
    assert "parked: 4" in out
    status = await sendqueue_json(capsys, "status", *config)
    assert [d["name"] for d in status["destinations"]] == ["pacs"]

    # list: every item with the PACS's answer
    code, out, _ = await sendqueue(capsys, "parked", "list", *config)
    assert code == 0
    assert out.count("0xA900") == 4 and "4 of 4 parked item(s) shown" in out

    # filters narrow it down
    page = await sendqueue_json(capsys, "parked", "list", "--study", study_uid(a), *config)
    assert page["total"] == 2
    assert {i["sop_instance_uid"] for i in page["items"]} == {sop_instance_uid(d) for d in a}
    page = await sendqueue_json(
        capsys, "parked", "list", "--patient", "PAT-B", "--reason", "dimse-a9xx", *config
    )
    assert [i["patient_id"] for i in page["items"]] == ["PAT-B"]
    page = await sendqueue_json(capsys, "parked", "list", "--since", "10m", *config)
    assert page["total"] == 4
    page = await sendqueue_json(capsys, "parked", "list", "--until", "10m", *config)
    assert page["total"] == 0

    # a short list says there is more
    code, out, _ = await sendqueue(capsys, "parked", "list", "--limit", "1", *config)
    assert "1 of 4 parked item(s) shown; narrow with filters or raise --limit" in out


async def test_requeue_by_filter_to_another_destination_by_id_and_delete(
    make_pipeline, orthanc, scp, studies, capsys
):
    a, b, _c, _refused = studies
    with ScriptedSCP(aet="ARCHIVE") as archive:
        pipeline = await parked_pipeline(
            make_pipeline,
            orthanc,
            scp,
            studies,
            destinations=[
                dicom_destination("pacs", scp.port, scp.aet),
                dicom_destination("archive", archive.port, archive.aet),
            ],
            routes=[{"destinations": ["pacs"]}],
        )
        config = ["--config", str(pipeline.config_path)]

        # Study A goes to the archive instead
        code, out, err = await sendqueue(
            capsys, "parked", "requeue", "--study", study_uid(a), "--to", "archive", *config
        )
        assert (code, out.strip()) == (0, "requeued 2 parked item(s) to archive"), err
        assert await wait_received(archive, 2, timeout=30) == {sop_instance_uid(d) for d in a}

        # B's refused instance goes to pacs again, by id, once pacs accepts it
        scp.status_for = always(0x0000)
        [item] = (await sendqueue_json(capsys, "parked", "list", "--patient", "PAT-B", *config))[
            "items"
        ]
        code, out, _ = await sendqueue(capsys, "parked", "requeue", "--id", item["id"], *config)
        assert (code, out.strip()) == (0, "requeued 1 parked item(s) to their destinations")
        assert await wait_received(scp, 2, timeout=30) == {sop_instance_uid(d) for d in b}

        # C is dropped (no terminal: no question asked)
        code, out, _ = await sendqueue(capsys, "parked", "delete", "--patient", "PAT-C", *config)
        assert (code, out.strip()) == (0, "deleted 1 parked item(s)")
        assert (await sendqueue_json(capsys, "parked", "list", *config))["total"] == 0


async def test_requeue_with_a_limit_takes_only_the_oldest(
    make_pipeline, orthanc, scp, studies, capsys
):
    pipeline = await parked_pipeline(
        make_pipeline,
        orthanc,
        scp,
        studies,
        destinations=[dicom_destination("pacs", scp.port, scp.aet)],
    )
    config = ["--config", str(pipeline.config_path)]
    oldest = (await sendqueue_json(capsys, "parked", "list", "--limit", "1", *config))["items"]
    scp.status_for = always(0x0000)
    code, out, _ = await sendqueue(capsys, "parked", "requeue", "--all", "--limit", "1", *config)
    assert (code, out.strip()) == (0, "requeued 1 parked item(s) to their destinations")
    remaining = (await sendqueue_json(capsys, "parked", "list", *config))["items"]
    assert len(remaining) == 3 and oldest[0]["id"] not in {i["id"] for i in remaining}


async def test_pause_holds_jobs_resume_sends_them_and_refusals_exit_1(
    make_pipeline, orthanc, scp, capsys
):
    pipeline = make_pipeline(destinations=[dicom_destination("pacs", scp.port, scp.aet)])
    await pipeline.start()
    config = ["--config", str(pipeline.config_path)]
    url = ["--url", pipeline.url("retry", "")]

    # Refused: no token, a wrong token, an unknown destination
    code, _, err = await sendqueue(capsys, "pause", "pacs", *url)
    assert code == 1 and "Authorization" in err and "--token" in err
    code, _, err = await sendqueue(capsys, "pause", "pacs", *url, "--token", "wrong-token")
    assert code == 1 and "invalid token" in err
    code, _, err = await sendqueue(capsys, "pause", "nowhere", *config)
    assert code == 1 and "unknown destination" in err

    # Paused: a new instance waits in the queue
    code, out, _ = await sendqueue(capsys, "pause", "pacs", *config)
    assert (code, out.strip()) == (0, "pacs: paused")
    [instance] = make_study(1)
    orthanc.upload(instance)

    async def pacs_row():
        status = await sendqueue_json(capsys, "status", *config)
        return status["destinations"][0]

    row = await wait_for(pacs_row, lambda d: d["state"] == "paused" and d["ready"] == 1, 30)
    assert row["consumers"] == 0 and scp.stored_uids() == set()

    # Resumed: it is sent
    code, out, _ = await sendqueue(capsys, "resume", "pacs", *config)
    assert (code, out.strip()) == (0, "pacs: sending")
    assert await wait_received(scp, 1, timeout=30) == {sop_instance_uid(instance)}


async def test_an_unreachable_admin_api_exits_3(capsys):
    code, _, err = await sendqueue(capsys, "status", "--url", f"http://127.0.0.1:{free_port()}")
    assert code == admin_cli.EXIT_UNREACHABLE
    assert "cannot reach the admin API" in err and "is the retry service running?" in err


def test_the_sendqueue_command_has_the_admin_commands():
    # services/cli.py hooks them in: build_parser() adds them, main() runs them.
    from sendqueue.services.cli import main as cli

    args = cli.build_parser().parse_args(["parked", "list", "--url", "http://127.0.0.1:1"])
    assert (args.command, args.parked_action) == ("parked", "list")
    assert cli.main(["status", "--url", f"http://127.0.0.1:{free_port()}"]) == 3
