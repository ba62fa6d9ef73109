"""An uncompressed copy of a spooled instance, for peers that refuse its transfer syntax.

First choice is the source Orthanc: POST /instances/{id}/modify with "Transcode" (Orthanc
>= 1.9; DCMTK decodes every syntax Orthanc stores) answers the transcoded file without
storing it, and the answer is streamed to disk. Orthanc 1.10 has no ?transcode= on
/instances/{id}/file (that came in 1.12.2); /modify works on both. When there is no
source Orthanc, or it cannot do it, pydicom decodes the file here with its pixel data
handlers (Pillow for JPEG baseline, pylibjpeg for lossless JPEG and JPEG-LS, ...).
The local path holds the whole decoded instance in memory, the Orthanc path does not.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from pathlib import Path

import aiohttp
from pydicom import dcmread
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from sendqueue.services.sender.destinations.instance import InstanceMeta, read_meta
from sendqueue.shared.config import OrthancConfig
from sendqueue.shared.errors import PermanentError

log = logging.getLogger(__name__)

#: Targets we can produce, in order of preference (explicit VR keeps VRs of private tags).
UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
_CHUNK = 1024 * 1024


class Transcoder:
    """Makes `<spool file>.<ts>.dcm` in the target syntax; the caller removes it."""

    def __init__(self, source: OrthancConfig | None) -> None:
        self._source = source
        self._session: aiohttp.ClientSession | None = None

    async def transcode(self, path: Path, meta: InstanceMeta, target: str) -> tuple[Path, str]:
        """(new file, who transcoded it: "Orthanc" or "pydicom"); PermanentError if impossible."""
        out = path.with_name(f"{path.stem}.{target}.dcm")
        if self._source is not None:
            try:
                if await self._by_orthanc(meta.sop_instance_uid, target, out):
                    return out, "Orthanc"
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                log.info("Orthanc could not transcode %s (%r): decoding locally", path.name, exc)
            out.unlink(missing_ok=True)
        await asyncio.to_thread(decode_locally, path, target, out)
        return out, "pydicom"

    async def _by_orthanc(self, sop_instance_uid: str, target: str, out: Path) -> bool:
        assert self._source is not None
        base = self._source.url.rstrip("/")
        session = self._get_session()
        async with session.post(f"{base}/tools/lookup", data=sop_instance_uid) as resp:
            resp.raise_for_status()
            found = [r for r in await resp.json(content_type=None) if r.get("Type") == "Instance"]
        if not found:
            return False
        body = {"Transcode": target, "Force": True, "Keep": ["SOPInstanceUID"]}
        url = f"{base}/instances/{found[0]['ID']}/modify"
        async with session.post(url, data=json.dumps(body)) as resp:
            resp.raise_for_status()
            with open(out, "wb") as sink:
                async for chunk in resp.content.iter_chunked(_CHUNK):
                    sink.write(chunk)
        # An Orthanc before 1.9 ignores "Transcode": check what came back.
        got = read_meta(out)
        return got.transfer_syntax_uid == target and got.sop_instance_uid == sop_instance_uid

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            assert self._source is not None
            src = self._source
            headers = {"Accept-Encoding": "identity"}
            if src.username:
                pair = f"{src.username}:{src.password}".encode()
                headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
            self._session = aiohttp.ClientSession(
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=src.timeout),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def decode_locally(path: Path, target: str, out: Path) -> None:
    """Decode path's pixel data with pydicom and write it to out in the target syntax."""
    try:
        ds = dcmread(path)
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            # Keep the SOP Instance UID: this is the same instance, only encoded otherwise.
            ds.decompress(generate_instance_uid=False)
        ds.file_meta.TransferSyntaxUID = UID(target)
        ds.save_as(out, enforce_file_format=True)
    except Exception as exc:
        out.unlink(missing_ok=True)
        raise PermanentError(
            f"cannot decode {path.name} to {UID(target).name} locally: {exc} "
            "(a pixel data handler may be missing: Pillow, pylibjpeg-libjpeg)",
            reason_class="transcode-failed",
        ) from None
