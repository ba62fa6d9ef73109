"""The test helpers work against the real components (Orthanc, RabbitMQ, DCMTK, pynetdicom)."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import aio_pika
import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from tests.support import dicom_factory, rabbit
from tests.support.orthanc import OrthancProcess, dicomweb_plugin_path
from tests.support.scp import ScriptedSCP, StorescpProcess, fail_first


def test_orthanc_upload_and_list(orthanc: OrthancProcess) -> None:
    study = dicom_factory.make_study(3, patient_id="SMOKE")
    ids = [orthanc.upload(data) for data in study]
    assert sorted(orthanc.instances()) == sorted(ids)
    uids = {dicom_factory.sop_instance_uid(data) for data in study}
    assert {orthanc.instance_tags(i)["SOPInstanceUID"] for i in ids} == uids
    assert orthanc.download(ids[0]) == study[0]  # stored as sent, served uncompressed
    orthanc.delete_instance(ids[0])
    assert sorted(orthanc.instances()) == sorted(ids[1:])


def test_orthanc_restart_keeps_data_and_ports(orthanc: OrthancProcess) -> None:
    instance_id = orthanc.upload(dicom_factory.make_instance())
    port = orthanc.http_port
    orthanc.stop()
    orthanc.start()
    assert orthanc.http_port == port
    assert orthanc.instances() == [instance_id]


@pytest.mark.usefixtures("require_orthanc")
def test_orthanc_with_dicomweb_plugin() -> None:
    plugin = dicomweb_plugin_path()
    assert plugin, "orthanc-dicomweb is not installed"
    with OrthancProcess(plugins=[plugin], aet="WEBORTHANC") as server:
        server.upload(dicom_factory.make_instance(patient_id="WEB"))
        studies = server.get_json("/dicom-web/studies")
        assert len(studies) == 1
        assert server.get_json("/system")["DicomAet"] == "WEBORTHANC"


def _c_store(scp: ScriptedSCP, data: bytes) -> int:
    ae = AE(ae_title="SMOKESCU")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title=scp.aet)
    assert assoc.is_established
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        status = assoc.send_c_store(ds)
        return int(status.Status)
    finally:
        assoc.release()


def test_scripted_scp_fail_first(scp: ScriptedSCP) -> None:
    scp.status_for = fail_first(1)
    data = dicom_factory.make_instance()
    uid = dicom_factory.sop_instance_uid(data)
    assert _c_store(scp, data) == 0xA700
    assert _c_store(scp, data) == 0x0000
    assert scp.wait_for(1, timeout=5) == {uid}
    assert scp.receive_count(uid) == 2
    assert scp.received == [(uid, 0xA700), (uid, 0x0000)]


def test_scripted_scp_refuses_then_stops_and_restarts(scp: ScriptedSCP) -> None:
    ae = AE(ae_title="SMOKESCU")
    ae.add_requested_context(CTImageStorage)
    scp.refuse_associations(30)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title=scp.aet)
    assert assoc.is_rejected
    rejection = assoc.acceptor.primitive
    assert rejection is not None
    assert rejection.result == 0x02  # rejected-transient
    scp.refuse_associations(0)
    scp.stop()
    assoc = ae.associate("127.0.0.1", scp.port, ae_title=scp.aet)
    assert not assoc.is_established  # connection refused
    scp.start()
    assert _c_store(scp, dicom_factory.make_instance()) == 0x0000
    assert scp.rejections == 1


def test_storescp_receives_from_storescu(storescp: StorescpProcess, tmp_path: Path) -> None:
    data = dicom_factory.make_instance()
    path = tmp_path / "one.dcm"
    path.write_bytes(data)
    subprocess.run(
        ["storescu", "-aec", storescp.aet, "127.0.0.1", str(storescp.port), str(path)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    assert storescp.wait_for(1, timeout=10) == {dicom_factory.sop_instance_uid(data)}


def test_storescp_takes_concurrent_associations(storescp: StorescpProcess) -> None:
    ae = AE(ae_title="SMOKESCU")
    ae.add_requested_context(CTImageStorage)
    first = ae.associate("127.0.0.1", storescp.port, ae_title=storescp.aet)
    second = ae.associate("127.0.0.1", storescp.port, ae_title=storescp.aet)
    try:
        assert first.is_established and second.is_established
        for assoc in (first, second):
            ds = pydicom.dcmread(io.BytesIO(dicom_factory.make_instance()))
            assert int(assoc.send_c_store(ds).Status) == 0x0000
    finally:
        first.release()
        second.release()
    assert len(storescp.wait_for(2, timeout=10)) == 2


def test_orthanc_c_store_to_storescp(orthanc: OrthancProcess, storescp: StorescpProcess) -> None:
    orthanc.put_modality("dest", storescp.aet, storescp.port)
    instance_id = orthanc.upload(dicom_factory.make_jpeg_instance())
    orthanc.post_json("/modalities/dest/store", {"Resources": [instance_id], "Synchronous": True})
    assert len(storescp.wait_for(1, timeout=10)) == 1


def test_large_instance_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "big.dcm"
    dicom_factory.write_large_instance(path, 3_000_000)
    ds = pydicom.dcmread(path)
    assert len(ds.PixelData) == 512 * 512 * 2 * int(ds.NumberOfFrames) >= 3_000_000


@pytest.mark.usefixtures("require_rabbitmq")
async def test_vhost_created_and_deleted() -> None:
    # Not the fixture: this test checks the teardown too.
    with rabbit.temp_vhost() as vhost:
        assert vhost.name.startswith("sq-test-")
        assert rabbit.vhost_exists(vhost.name)
        connection = await aio_pika.connect(vhost.amqp_url, timeout=10)
        async with connection:
            channel = await connection.channel()
            await channel.declare_queue("smoke", durable=True)
            await channel.default_exchange.publish(aio_pika.Message(b"x"), routing_key="smoke")
        assert rabbit.queue_counts(vhost.name, "smoke", exact=True) == (1, 0)
        assert [q["name"] for q in rabbit.list_queues(vhost.name)] == ["smoke"]
    assert not rabbit.vhost_exists(vhost.name)


def test_amqp_url_fixture(amqp_url: str, rabbit_vhost: rabbit.RabbitVhost) -> None:
    assert amqp_url.startswith("amqp://guest:guest@127.0.0.1:5672/sq-test-")
    assert rabbit.vhost_exists(rabbit_vhost.name)
