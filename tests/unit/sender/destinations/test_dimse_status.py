"""C-STORE status classification: deliver, retry or park."""

import pytest

from sendqueue.services.sender.destinations.dimse_status import Outcome, classify, raise_for_status
from sendqueue.shared.errors import PermanentError, TransientError


@pytest.mark.parametrize("status", [0x0000, 0xB000, 0xB006, 0xB007, 0x0111, 0xB123])
def test_success_and_warnings_are_delivered(status):
    assert classify(status)[0] is Outcome.DELIVERED


@pytest.mark.parametrize("status", [0xA700, 0xA7FF, 0x0110, 0x0213])
def test_resource_problems_are_transient(status):
    assert classify(status)[0] is Outcome.TRANSIENT


@pytest.mark.parametrize("status", [0xA900, 0xA9FF, 0xC000, 0xCFFF, 0x0122, 0x0117, 0x0124, 0xFFFF])
def test_refusals_are_permanent(status):
    assert classify(status)[0] is Outcome.PERMANENT


def test_reason_names_the_status_and_its_class():
    with pytest.raises(PermanentError) as caught:
        raise_for_status(0xA900, "1.2.3")
    assert "0xA900" in str(caught.value) and "1.2.3" in str(caught.value)
    assert caught.value.reason_class == "dimse-a9xx"
    with pytest.raises(TransientError) as transient:
        raise_for_status(0xA702, "1.2.3")
    assert transient.value.reason_class == "dimse-a7xx"


@pytest.mark.parametrize("status", [0xB000, 0xB006, 0xB007, 0xB123, 0x0001, 0x0107, 0x0116])
def test_warnings_are_delivered_or_retried_as_the_destination_says(status):
    assert raise_for_status(status, "1.2.3", "delivered").startswith("Warning")
    with pytest.raises(TransientError) as caught:
        raise_for_status(status, "1.2.3", "retry")
    assert f"0x{status:04X}" in str(caught.value) and 'warnings = "retry"' in str(caught.value)


@pytest.mark.parametrize("status", [0x0000, 0x0111])
def test_success_and_already_stored_are_no_warnings(status):
    assert raise_for_status(status, "1.2.3", "retry")
