"""The console page in a real (headless) browser against a real pipeline.

The story of an on-call engineer: a study did not arrive; the console shows it parked with
the PACS's refusal; once the PACS is fixed, one click sends it again and the SCP has it.
"""

from __future__ import annotations

import io
import re

import pydicom

from tests.integration.harness import ADMIN_TOKEN, dicom_destination, wait_received
from tests.support.dicom_factory import make_study, sop_instance_uid
from tests.support.scp import always, fail_for

ROWS = "return document.querySelectorAll('[data-testid=parked-row]').length"
NOTICE = "return document.getElementById('notice').textContent"
ERROR = "const m = document.getElementById('message'); return !m.hidden && m.textContent"
QUEUE_CELL = (
    "const c = document.querySelector("
    "`[data-testid=queue-row][data-destination=${arguments[0]}] [data-testid=${arguments[1]}]`);"
    "return c !== null && c.textContent === arguments[2]"
)


def study_uid(study: list[bytes]) -> str:
    return str(pydicom.dcmread(io.BytesIO(study[0]), stop_before_pixels=True).StudyInstanceUID)


async def wait_rows(browser, count: int) -> None:
    await browser.wait(ROWS + f" === {count}", what=f"{count} parked row(s)")


async def wait_notice(browser, text: str) -> str:
    notice = await browser.wait(
        NOTICE + f".includes({text!r}) && " + NOTICE.removeprefix("return "), what=text
    )
    return str(notice)


async def test_an_operator_finds_a_parked_study_and_requeues_it_from_the_console(
    make_pipeline, orthanc, scp, browser
):
    # Given study A (2 instances) and study B (2) where the PACS refuses A and one of B
    study_a = make_study(2, patient_id="PAT-A")
    study_b = make_study(2, patient_id="PAT-B")
    refused = {sop_instance_uid(d) for d in study_a} | {sop_instance_uid(study_b[0])}
    scp.status_for = fail_for(refused, 0xA900)
    pipeline = make_pipeline(destinations=[dicom_destination("pacs", scp.port, scp.aet)])
    await pipeline.start()
    for data in study_a + study_b:
        orthanc.upload(data)
    await pipeline.wait_parked(3)

    # When the engineer opens the console, it shows nothing (patient data) but a sign-in
    await browser.goto(pipeline.url("retry", "/console"))
    await browser.wait("return document.getElementById('signed-out').offsetParent !== null")
    assert await browser.script("return document.getElementById('content').hidden") is True
    assert await browser.script(ROWS) == 0

    # A wrong token is refused, saying so
    await browser.fill("#token", "not-the-admin-token")
    await browser.click("#login")
    assert "invalid token" in await browser.wait(ERROR, what="an error message")

    # Signed in, the queue table shows pacs with 3 parked
    await browser.fill("#token", ADMIN_TOKEN)
    await browser.click("#login")
    await browser.wait("return !document.getElementById('session').hidden", what="signed in")
    await browser.wait(QUEUE_CELL, "pacs", "parked", "3", what="pacs parked = 3")
    await browser.wait(QUEUE_CELL, "pacs", "state", "up", what="pacs up")
    await wait_rows(browser, 3)

    # A filter on study A shows its two items with the PACS's answer
    await browser.fill("#f-study", study_uid(study_a))
    await browser.click("#apply-filters")
    await wait_rows(browser, 2)
    assert "2 parked item(s) match" in await browser.text("#parked-summary")
    assert "0xA900" in await browser.text("#parked-body")
    parked_at = await browser.script(
        "return document.querySelector('[data-testid=parked-row] td:nth-child(2)').textContent"
    )
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", parked_at)  # local time

    # When the PACS is fixed and one item is selected and requeued, the SCP receives it
    scp.status_for = always(0x0000)
    item_id = await browser.script(
        "return document.querySelector('[data-testid=parked-row]').dataset.id"
    )
    await browser.click(f"[data-testid=parked-row][data-id='{item_id}'] [data-testid=select-item]")
    await browser.click("#requeue-selected")
    assert "Requeued 1" in await wait_notice(browser, "Requeued 1")
    await wait_received(scp, 2, timeout=30)
    await wait_rows(browser, 1)

    # Delete all matching patient B, after a confirmation that names the count
    await browser.fill("#f-study", "")
    await browser.fill("#f-patient", "PAT-B")
    await browser.click("#apply-filters")
    await wait_rows(browser, 1)
    await browser.click("#delete-matching")
    await browser.wait("return document.getElementById('confirm').open", what="confirm dialog")
    assert "Delete all 1 parked item(s) matching patient PAT-B" in await browser.text(
        "#confirm-text"
    )
    await browser.click("#confirm-yes")
    await wait_notice(browser, "Deleted 1")

    # Pause and resume the destination from its row
    await browser.click("[data-testid=pause-pacs]")
    await browser.wait(QUEUE_CELL, "pacs", "state", "paused", what="pacs paused")
    await browser.click("[data-testid=resume-pacs]")
    await browser.wait(QUEUE_CELL, "pacs", "state", "up", what="pacs up again")

    # Select everything left on the page and requeue it: nothing stays parked
    await browser.click("#clear-filters")
    await wait_rows(browser, 1)
    await browser.click("#select-page")
    await browser.click("#requeue-selected")
    await wait_notice(browser, "Requeued 1")
    await wait_received(scp, 3, timeout=30)
    assert scp.stored_uids() == {sop_instance_uid(d) for d in study_a + study_b} - {
        sop_instance_uid(study_b[0])
    }
    assert (await pipeline.parked())["total"] == 0
    await wait_rows(browser, 0)

    # And the audit log names each action
    audit = await browser.wait(
        "return Array.from(document.querySelectorAll('[data-testid=audit-row]'))"
        ".map(r => r.textContent).join('\\n')",
        what="audit rows",
    )
    for action in ("requeue", "delete", "pause", "resume"):
        assert action in audit
