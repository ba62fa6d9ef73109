"""kind = "dicom" over DICOM TLS: a pynetdicom SCP with an ssl context of the test CA."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from sendqueue.shared.errors import DestinationUnavailable, PermanentError, TransientError
from tests.destinations.conftest import TlsSCP, destination_config
from tests.support.availability import unavailable
from tests.support.dicom_factory import make_instance, sop_instance_uid
from tests.support.scp import ScriptedSCP, StorescpProcess, always, fail_first


def tls_config(scp: TlsSCP, **tls: Any) -> Any:
    return destination_config(
        host="127.0.0.1", port=scp.port, called_aet=scp.aet, dimse_timeout="10s", tls=tls
    )


@pytest.fixture
def tls_scp(pki) -> Iterator[ScriptedSCP]:
    with TlsSCP(pki.server_context(), aet="TLSSCP") as scp:
        yield scp


async def test_c_store_over_tls(tls_scp, pki, make_destination, spool):
    destination = make_destination(tls_config(tls_scp, ca_file=str(pki.ca)))
    await destination.probe()
    data = make_instance()
    assert await destination.send(spool(data)) == "Success"
    assert tls_scp.stored_uids() == {sop_instance_uid(data)}


async def test_out_of_resources_over_tls_is_transient_then_stored(
    tls_scp, pki, make_destination, spool
):
    tls_scp.status_for = fail_first(1, 0xA700)
    destination = make_destination(tls_config(tls_scp, ca_file=str(pki.ca)))
    data = make_instance()
    with pytest.raises(TransientError) as failure:
        await destination.send(spool(data))
    assert failure.value.reason_class == "dimse-a7xx"
    assert await destination.send(spool(data)) == "Success"
    assert tls_scp.receive_count(sop_instance_uid(data)) == 2


async def test_a_refusal_over_tls_is_permanent(tls_scp, pki, make_destination, spool):
    tls_scp.status_for = always(0xC000)
    destination = make_destination(tls_config(tls_scp, ca_file=str(pki.ca)))
    with pytest.raises(PermanentError) as failure:
        await destination.send(spool(make_instance()))
    assert failure.value.reason_class == "dimse-cxxx"


async def test_an_untrusted_certificate_pauses_with_the_tls_reason(
    tls_scp, pki, make_destination, spool
):
    destination = make_destination(tls_config(tls_scp, ca_file=str(pki.other_ca)))
    with pytest.raises(DestinationUnavailable) as failure:
        await destination.send(spool(make_instance()))
    assert failure.value.reason_class == "tls-failed"
    assert "certificate" in str(failure.value)
    with pytest.raises(DestinationUnavailable):
        await destination.probe()
    assert tls_scp.stored_uids() == set()


async def test_verify_false_accepts_any_certificate(tls_scp, pki, make_destination, spool):
    destination = make_destination(tls_config(tls_scp, ca_file=str(pki.other_ca), verify=False))
    assert await destination.send(spool(make_instance())) == "Success"


async def test_mutual_tls_needs_our_client_certificate(pki, make_destination, spool):
    with TlsSCP(pki.server_context(require_client_cert=True), aet="MTLSSCP") as scp:
        anonymous = make_destination(tls_config(scp, ca_file=str(pki.ca)))
        with pytest.raises(DestinationUnavailable):
            await anonymous.send(spool(make_instance()))
        identified = make_destination(
            tls_config(
                scp,
                ca_file=str(pki.ca),
                cert_file=str(pki.client_cert),
                key_file=str(pki.client_key),
            )
        )
        data = make_instance()
        assert await identified.send(spool(data)) == "Success"
        assert scp.stored_uids() == {sop_instance_uid(data)}


async def test_c_store_over_tls_to_dcmtk_storescp(pki, make_destination, spool):
    # A C++ TLS peer too (DCMTK, as many PACS): its storescp +tls with the test CA's cert.
    if shutil.which("storescp") is None:
        unavailable("storescp (dcmtk) is not installed")
    tls = ["+tls", str(pki.server_key), str(pki.server_cert), "-ic"]
    with StorescpProcess(extra_args=tls) as scp:
        config = destination_config(
            host="127.0.0.1", port=scp.port, called_aet=scp.aet, tls={"ca_file": str(pki.ca)}
        )
        data = make_instance()
        assert await make_destination(config).send(spool(data)) == "Success"
        assert scp.wait_for(1, timeout=10) == {sop_instance_uid(data)}
