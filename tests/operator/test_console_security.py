"""The console in a real (headless) browser: hostile DICOM text stays text, and a read
token sees the parked items but none of the actions it may not take."""

from __future__ import annotations

from tests.integration.harness import ADMIN_TOKEN, dicom_destination
from tests.operator.test_console import ROWS, wait_rows
from tests.operator.webdriver import WebDriverError
from tests.support.dicom_factory import make_instance, sop_instance_uid
from tests.support.scp import fail_for

HOSTILE_NAME = "<img src=x onerror=alert(1)>"
HOSTILE_ID = "<script>window.pwned=1</script>"
READ_TOKEN = "auditor-read-token-01"

#: What a read token must not be shown: every control that changes state.
ADMIN_CONTROLS = (
    "#requeue-selected",
    "#delete-selected",
    "#requeue-matching",
    "#delete-matching",
    "#requeue-to",
    "#select-page",
    "#send-form",
    "#send",
)
VISIBLE = (
    "const e = document.querySelector(arguments[0]); return e !== null && e.offsetParent !== null"
)


async def no_alert(browser) -> bool:
    try:
        await browser._call("GET", "/alert/text")
    except WebDriverError as exc:
        return "no such alert" in str(exc)
    return False


async def test_a_hostile_patient_name_is_shown_as_text_and_a_read_token_sees_no_actions(
    make_pipeline, orthanc, scp, browser
):
    # Given an instance whose PatientName and PatientID are markup, refused by the PACS
    data = make_instance(patient_id=HOSTILE_ID, extra={"PatientName": HOSTILE_NAME})
    scp.status_for = fail_for({sop_instance_uid(data)}, 0xA900)
    pipeline = make_pipeline(
        destinations=[dicom_destination("pacs", scp.port, scp.aet)],
        retry={"read_tokens": {"auditor": READ_TOKEN}},
    )
    await pipeline.start()
    orthanc.upload(data)
    await pipeline.wait_parked(1)

    # When an auditor signs in with a read token
    await browser.goto(pipeline.url("retry", "/console"))
    await browser.fill("#token", READ_TOKEN)
    await browser.click("#login")
    await browser.wait("return !document.getElementById('session').hidden", what="signed in")
    assert "read only" in await browser.text("[data-testid=whoami]")
    await wait_rows(browser, 1)

    # Then the name and the ID are shown as the text they are: no element, no script ran
    name = await browser.script(
        "return document.querySelector('[data-testid=parked-row] [data-testid=patient-name]')"
        ".textContent"
    )
    assert name == HOSTILE_NAME
    assert HOSTILE_ID in await browser.text("#parked-body")
    assert (
        await browser.script("return document.querySelectorAll('main img, main script').length")
        == 0
    )
    assert await browser.script("return window.pwned === undefined") is True
    assert await no_alert(browser)

    # And nothing that changes state is on the page
    await browser.wait(
        "return document.querySelectorAll('[data-testid=queue-row]').length === 1",
        what="the queue table",
    )
    for css in ADMIN_CONTROLS:
        assert not await browser.script(VISIBLE, css), f"{css} is shown to a read token"
    assert (
        await browser.script("return document.querySelectorAll('[data-testid^=pause-]').length")
        == 0
    )
    assert (
        await browser.script("return document.querySelectorAll('[data-testid=select-item]').length")
        == 0
    )
    # The audit log and the CSV export stay available to read; the export carries the token
    assert await browser.script(VISIBLE, "#audit")
    await browser.script(
        "const make = URL.createObjectURL;"
        "URL.createObjectURL = (blob) => { window.csvBlob = blob; return make(blob); };"
    )
    await browser.click("#export-csv")
    await browser.wait("return window.csvBlob !== undefined", what="the CSV download")
    exported = await browser.script("return window.csvBlob.text()")
    assert exported.startswith("id,destination") and HOSTILE_NAME in exported

    # The API holds the same line: the read token cannot requeue
    status, body = await pipeline.admin("POST", "/api/parked/requeue", {"all": True}, READ_TOKEN)
    assert status == 403 and "may only read" in body["error"]
    assert (await pipeline.parked())["total"] == 1

    # Signed out, the patient data leaves the page; an admin then sees the actions
    await browser.click("#logout")
    assert await browser.script(ROWS) == 0
    await browser.fill("#token", ADMIN_TOKEN)
    await browser.click("#login")
    await wait_rows(browser, 1)
    for css in ("#requeue-selected", "#delete-matching", "#send-form"):
        assert await browser.script(VISIBLE, css), css
    await browser.wait(VISIBLE, "[data-testid=pause-pacs]", what="the pause button")
