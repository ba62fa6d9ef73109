"""The console shows a job captured from Orthanc's own failed send, and acts on all of it."""

from __future__ import annotations

from tests.integration.harness import ADMIN_TOKEN, dicom_destination, wait_received
from tests.operator.test_console import ROWS, wait_notice, wait_rows
from tests.support.dicom_factory import make_study, sop_instance_uid
from tests.support.scp import always


async def test_an_operator_sees_which_orthanc_job_failed_and_requeues_all_of_it(
    make_pipeline, orthanc, scp, browser
):
    # Given a PACS that refuses everything for good, known to Orthanc as modality "pacs",
    # and a sendqueue destination standing for it
    scp.status_for = always(0xA900)
    orthanc.put_modality("pacs", scp.aet, scp.port)
    destination = dicom_destination("pacs-dest", scp.port, scp.aet, orthanc_modality="pacs")
    pipeline = make_pipeline(destinations=[destination], routes=[])
    await pipeline.start()
    study = make_study(3, patient_id="CAPTURED")
    ids = [orthanc.upload(data) for data in study]
    # When Orthanc's own send of the study fails, sendqueue captures it; the PACS refuses
    # sendqueue's attempts too, so the three instances are parked
    job = orthanc.post_json("/modalities/pacs/store", {"Resources": ids, "Asynchronous": True})
    await pipeline.wait_parked(3)

    # Then the console shows, on each parked item, the Orthanc job, its error and its size
    await browser.goto(pipeline.url("retry", "/console"))
    await browser.fill("#token", ADMIN_TOKEN)
    await browser.click("#login")
    await browser.wait("return !document.getElementById('session').hidden", what="signed in")
    await wait_rows(browser, 3)
    text = await browser.text("#parked-body")
    assert f"Orthanc's own send failed: job {job['ID']}, 3 instance(s)" in text
    assert "0xA900" in text

    # And a click on the job shows all its items, which one action requeues
    await browser.click("[data-testid=captured-from] button")
    await browser.wait(
        f"return document.getElementById('f-orthanc_job').value === {job['ID']!r}",
        what="the Orthanc job filter",
    )
    await wait_rows(browser, 3)
    scp.status_for = always(0x0000)
    await browser.click("#requeue-matching")
    await browser.wait("return document.getElementById('confirm').open", what="confirm dialog")
    assert f"matching Orthanc job {job['ID']}" in await browser.text("#confirm-text")
    await browser.click("#confirm-yes")
    await wait_notice(browser, "Requeued 3")
    assert await wait_received(scp, 3) == {sop_instance_uid(d) for d in study}
    await browser.wait(ROWS + " === 0", what="no parked rows")

    # And the audit log shows the capture: by orthanc, the job, 3 instances
    audit = await browser.wait(
        "return Array.from(document.querySelectorAll('[data-testid=audit-row]'))"
        ".map(r => r.textContent).join('\\n')",
        what="audit rows",
    )
    assert "capture" in audit and job["ID"] in audit and "orthanc-job" in audit
