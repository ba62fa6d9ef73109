"""A modality that C-STOREs instances into an Orthanc under an AE title of its own."""

from __future__ import annotations

import io
from collections.abc import Sequence

from pydicom import dcmread
from pynetdicom import AE


def c_store(
    port: int, files: Sequence[bytes], *, calling_aet: str, called_aet: str = "ORTHANC"
) -> list[int]:
    """Sends the files on one association (127.0.0.1) and returns their statuses."""
    datasets = [dcmread(io.BytesIO(data)) for data in files]
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for context in {(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID) for ds in datasets}:
        ae.add_requested_context(*context)
    assoc = ae.associate("127.0.0.1", port, ae_title=called_aet)
    if not assoc.is_established:
        raise ConnectionError(f"Orthanc refused the association from {calling_aet}")
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()
