"""docs/conformance.md says what the code does: its checked tables against the constants."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydicom.uid import UID
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID

from sendqueue.services.sender.destinations import contexts
from sendqueue.services.sender.destinations.dimse_status import (
    _EXACT,
    _RANGES,
    Outcome,
    classify,
)
from sendqueue.services.sender.destinations.scu import association, pdu
from sendqueue.services.sender.destinations.transcode import UNCOMPRESSED
from sendqueue.shared.destination_config import DicomDestinationConfig

DOC = Path(__file__).resolve().parents[3] / "docs" / "conformance.md"
BEHAVIOUR = {
    Outcome.DELIVERED: "delivered",
    Outcome.TRANSIENT: "retried",
    Outcome.PERMANENT: "parked",
}


def tables() -> list[list[list[str]]]:
    """Every Markdown table of the document: its rows (header first) as lists of cells."""
    found: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in [*DOC.read_text().splitlines(), ""]:
        if line.startswith("|"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if not all(re.fullmatch(r"-+", cell) for cell in cells):
                current.append(cells)
        elif current:
            found.append(current)
            current = []
    return found


def table(first_header: str) -> list[list[str]]:
    [match] = [t for t in tables() if t[0][0] == first_header]
    return match[1:]


def test_the_status_table_is_dimse_status_py():
    rows = table("Status")
    documented = set()
    for code, meaning, behaviour, reason_class in rows:
        if code == "any other":
            outcome, text, klass = classify(0xFFFF)
            assert (meaning, behaviour, reason_class) == (text, BEHAVIOUR[outcome], klass)
            continue
        low, _, high = code.partition("-")
        documented.add(code)
        for value in {int(low, 16), int(high or low, 16)}:
            outcome, text, klass = classify(value)
            if not high:
                assert meaning == text, code
            assert behaviour == BEHAVIOUR[outcome], code
            assert reason_class == ("" if outcome is Outcome.DELIVERED else klass), code
    in_code = {f"0x{c:04X}" for c in _EXACT} | {f"0x{lo:04X}-0x{hi:04X}" for lo, hi, *_ in _RANGES}
    assert documented == in_code


def test_identification_and_application_context():
    items = dict(table("Item"))
    assert items["Implementation Class UID"] == PYNETDICOM_IMPLEMENTATION_UID
    assert items["Implementation Version Name"] == pdu.IMPLEMENTATION_VERSION
    assert table("Application Context Name") == [[pdu.APPLICATION_CONTEXT]]


def test_the_fallback_syntaxes_in_their_order():
    assert table("Name") == [[UID(uid).name, uid] for uid in UNCOMPRESSED]


@pytest.mark.parametrize(
    ("parameter", "value"),
    [
        ("Maximum PDU size received", str(pdu.OUR_MAX_PDU)),
        ("Maximum number of presentation contexts proposed", str(contexts.MAX_PROPOSED)),
        ("TCP connect and TLS handshake timeout (`connect_timeout`)", "connect_timeout"),
        ("Association negotiation timeout (`acse_timeout`)", "acse_timeout"),
        ("DIMSE timeout, per write and per response (`dimse_timeout`)", "dimse_timeout"),
        ("Idle association release (`idle_timeout`)", "idle_timeout"),
        ("Associations per destination and process (`concurrency`)", "concurrency"),
    ],
)
def test_the_parameters_are_the_defaults(parameter, value):
    documented = {row[0]: row[1] for row in table("Parameter")}
    defaults = DicomDestinationConfig(name="x", host="h")
    if hasattr(defaults, value):
        default = getattr(defaults, value)
        value = f"{float(default):g} s" if value != "concurrency" else str(default)
    assert documented[parameter] == value


def test_the_numbers_in_the_text():
    text = " ".join(DOC.read_text().split())
    assert f"up to {contexts.MAX_CONTEXTS} (SOP Class, transfer syntax) pairs" in text
    assert f"up to {association._MAX_FRAGMENT // (1024 * 1024)} MiB" in text
    assert f"Verification SOP Class ({contexts.VERIFICATION})" in text
