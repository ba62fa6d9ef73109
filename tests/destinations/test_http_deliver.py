"""The HTTP kinds' hot path (`deliver`): downloaded from a real Orthanc in the
destination's own threads, posted from memory when small and from the spool file when
large, to a real second Orthanc (POST /instances) and a real STOW-RS server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from sendqueue.services.sender.fetch import InstanceFetcher
from sendqueue.shared.errors import InstanceNotFound
from tests.destinations.conftest import destination_config, source_config
from tests.support.dicom_factory import make_instance, sop_instance_uid
from tests.support.orthanc import OrthancProcess

#: Bigger than this goes through the spool file: the 8 KB instances stay in memory, the
#: 2 MB ones (1024x1024, 16 bit) are spooled.
MEMORY_LIMIT = 1024 * 1024


@pytest.fixture
def fetcher(orthanc: OrthancProcess) -> Iterator[InstanceFetcher]:
    made = InstanceFetcher(source_config(orthanc), memory_limit=MEMORY_LIMIT)
    yield made
    made.close()


def http_config(peer: OrthancProcess, kind: str, **keys: Any) -> Any:
    url = peer.url + ("/dicom-web" if kind == "dicomweb" else "")
    return destination_config(
        kind=kind, url=url, username=peer.username, password=peer.password, **keys
    )


def peer_files(peer: OrthancProcess) -> dict[str, bytes]:
    return {peer.instance_tags(i)["SOPInstanceUID"]: peer.download(i) for i in peer.instances()}


async def test_orthanc_kind_delivers_small_from_memory_and_large_from_the_spool(
    orthanc, peer_orthanc, fetcher, make_destination, workdir
):
    # Given a kind = "orthanc" destination and a small and a large instance at the source
    destination = make_destination(http_config(peer_orthanc, "orthanc", concurrency=2))
    small, large = make_instance(), make_instance(rows=1024, cols=1024)
    spools = [workdir / "small.dcm", workdir / "large.dcm"]
    ids = [orthanc.upload(small), orthanc.upload(large)]
    # When both are delivered at once
    results = await asyncio.gather(
        *(destination.deliver(fetcher, i, s) for i, s in zip(ids, spools, strict=True))
    )
    # Then the peer stores both byte for byte; only the large one touched the spool
    assert [(size, detail) for size, detail, _ in results] == [
        (len(small), "Success"),
        (len(large), "Success"),
    ]
    assert peer_files(peer_orthanc) == {
        sop_instance_uid(small): small,
        sop_instance_uid(large): large,
    }
    assert not spools[0].exists() and spools[1].read_bytes() == large


async def test_dicomweb_kind_batches_instances_delivered_from_memory(
    orthanc, dicomweb_orthanc, fetcher, make_destination, workdir
):
    # Given a batching STOW-RS destination and one study of small instances and a large one
    config = http_config(dicomweb_orthanc, "dicomweb", concurrency=4, batch_max_instances=8)
    destination = make_destination(config)
    study = "1.2.826.0.1.3680043.8.498.1"
    datas = [make_instance(study_uid=study, instance_number=n) for n in range(1, 7)]
    datas.append(make_instance(study_uid=study, rows=1024, cols=1024))
    ids = [orthanc.upload(d) for d in datas]
    # When all are delivered at once
    results = await asyncio.gather(
        *(destination.deliver(fetcher, i, workdir / f"{n}.dcm") for n, i in enumerate(ids))
    )
    # Then each is stored byte for byte, in fewer requests than instances
    assert [size for size, _, _ in results] == [len(d) for d in datas]
    assert peer_files(dicomweb_orthanc) == {sop_instance_uid(d): d for d in datas}
    assert destination.requests_sent < len(datas)


async def test_a_missing_source_instance_fails_as_the_fetcher_says_and_sends_nothing(
    orthanc, dicomweb_orthanc, fetcher, make_destination, workdir
):
    # Given a batching STOW-RS destination
    config = http_config(dicomweb_orthanc, "dicomweb", batch_max_instances=4)
    destination = make_destination(config)
    # When the source no longer has the instance
    with pytest.raises(InstanceNotFound):
        await destination.deliver(fetcher, "no-such-instance", workdir / "a.dcm")
    # Then the consumer gets the fetcher's error and nothing was posted
    assert destination.requests_sent == 0
