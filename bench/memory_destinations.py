"""Peak RSS of the sender's data path forwarding one large instance to each destination kind.

    .venv/bin/python bench/memory_destinations.py [--size-mb 500] [--kinds dicom,orthanc,...]

For each kind a fresh child process does exactly what the sender does with a job:
download /instances/{id}/file from the source Orthanc into a spool file, then
create_destination(...).send(spool file). The child reports its RSS after the imports
(baseline) and its peak RSS (VmHWM) at the end. Peers are real and run in their own
processes, so their memory is not counted:

    dicom           DCMTK storescp
    dicom-tls       DCMTK storescp +tls (test CA made here)
    dicom-slow      a pynetdicom SCP in its own process: slower than the sender, so without
                    back-pressure the sender would queue the whole file (measured-here.md 4)
    orthanc         a second Orthanc, POST /instances
    dicomweb        Orthanc with the DICOMweb plugin, STOW-RS
    dicomweb-https  an HTTPS sink (aiohttp, its own process) that reads and drops the body
    orthanc-https   the same sink answering as Orthanc

Everything lives in one temp dir, removed at the end; every process is stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KINDS = [
    "dicom",
    "dicom-tls",
    "dicom-slow",
    "orthanc",
    "dicomweb",
    "dicomweb-https",
    "orthanc-https",
]
LIMIT_MB = 150


# -- the child: one forward, measured ------------------------------------------------------


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


#: Kinds whose sender hot path is `deliver` (download in the destination's thread, then
#: post): measured that way, with the sender's default [sender] in_memory_mb.
_DELIVERED = {"orthanc", "dicomweb"}
_IN_MEMORY_BYTES = 8 * 1024 * 1024


async def _deliver(destination: Any, source: Any, instance: str, spool: Path) -> Any:
    from sendqueue.services.sender.fetch import InstanceFetcher

    fetcher = InstanceFetcher(source, memory_limit=_IN_MEMORY_BYTES)
    try:
        return await destination.deliver(fetcher, instance, spool)
    finally:
        fetcher.close()


async def _forward(job: dict[str, Any]) -> dict[str, Any]:
    from sendqueue.services.sender.destinations import create_destination
    from sendqueue.shared.config import OrthancConfig, parse_config
    from sendqueue.shared.orthanc import OrthancClient

    source = OrthancConfig(**job["source"])
    dest_config = parse_config({"destinations": [job["destination"]]}, environ={}).destinations[0]
    baseline = _status_mb("VmRSS")
    orthanc = OrthancClient(source)
    destination = create_destination(dest_config, source=source)
    spool = Path(job["spool"])
    try:
        started = time.monotonic()
        if dest_config.kind in _DELIVERED:
            size, detail, took = await _deliver(destination, source, job["instance"], spool)
            sent = time.monotonic()
            downloaded = sent - took
        else:
            size = await orthanc.download_instance(job["instance"], spool)
            downloaded = time.monotonic()
            detail = await destination.send(spool)
            sent = time.monotonic()
    finally:
        await destination.close()
        await orthanc.close()
        spool.unlink(missing_ok=True)
    return {
        "baseline_mb": round(baseline, 1),
        "peak_mb": round(_status_mb("VmHWM"), 1),
        "bytes": size,
        "download_s": round(downloaded - started, 2),
        "send_s": round(sent - downloaded, 2),
        "detail": detail,
    }


# -- peers -----------------------------------------------------------------------------------


def _sink(port: int, cert: str, key: str) -> None:
    """An HTTPS server that reads every request body to the end and drops it."""
    import ssl

    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        if request.method == "GET" and request.path.endswith("/instances"):
            # The QIDO-RS check that follows an empty STOW 200: "it is there".
            uid = request.query.get("SOPInstanceUID", "")
            return web.json_response([{"00080018": {"vr": "UI", "Value": [uid]}}])
        received = 0
        async for chunk in request.content.iter_chunked(1024 * 1024):
            received += len(chunk)
        if request.path.endswith("/instances"):
            return web.json_response({"Status": "Success", "Received": received})
        return web.Response(status=200)  # a STOW 200 without a list: all stored

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    app = web.Application(client_max_size=4 * 1024**3)
    app.router.add_route("*", "/{tail:.*}", handle)
    web.run_app(app, host="127.0.0.1", port=port, ssl_context=context, print=None)


@contextmanager
def _peer(kind: str, tmp: Path, pki: Any) -> Iterator[tuple[dict[str, Any], Any]]:
    """The destination config for kind, and a check() that returns what the peer received."""
    from tests.support.orthanc import OrthancProcess, dicomweb_plugin_path
    from tests.support.ports import free_port, wait_port
    from tests.support.scp import StorescpProcess

    if kind in ("dicom", "dicom-tls"):
        tls = (
            ["+tls", str(pki.server_key), str(pki.server_cert), "-ic"]
            if kind == "dicom-tls"
            else []
        )
        with StorescpProcess(output_dir=tmp / f"storescp-{kind}", extra_args=tls) as scp:
            config: dict[str, Any] = {
                "host": "127.0.0.1",
                "port": scp.port,
                "called_aet": scp.aet,
                "dimse_timeout": "10m",
            }
            if tls:
                config["tls"] = {"ca_file": str(pki.ca)}
            yield config, lambda: sum(p.stat().st_size for p in scp.output_dir.iterdir())
    elif kind == "dicom-slow":
        port = free_port()
        with _process([sys.executable, __file__, "--scp", str(port)]):
            wait_port(port, timeout=20)
            yield (
                {
                    "host": "127.0.0.1",
                    "port": port,
                    "called_aet": "SLOWSCP",
                    "dimse_timeout": "10m",
                },
                lambda: "pynetdicom",
            )
    elif kind in ("orthanc", "dicomweb"):
        plugins = [dicomweb_plugin_path() or ""] if kind == "dicomweb" else []
        with OrthancProcess(aet=kind.upper(), plugins=plugins, start_timeout=60) as peer:
            url = peer.url + ("/dicom-web" if kind == "dicomweb" else "")
            yield (
                {
                    "kind": kind,
                    "url": url,
                    "username": peer.username,
                    "password": peer.password,
                    "http_timeout": "10m",
                },
                lambda: len(peer.instances()),
            )
    else:
        port = free_port()
        args = [
            sys.executable,
            __file__,
            "--sink",
            str(port),
            str(pki.server_cert),
            str(pki.server_key),
        ]
        with _process(args):
            wait_port(port, timeout=20)
            yield (
                {
                    "kind": kind.removesuffix("-https"),
                    "url": f"https://127.0.0.1:{port}/x",
                    "tls": {"ca_file": str(pki.ca)},
                    "http_timeout": "10m",
                },
                lambda: "sink",
            )


@contextmanager
def _process(args: list[str]) -> Iterator[None]:
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _scp(port: int) -> None:
    """A pynetdicom storage SCP (all contexts), answering Success; stops on SIGTERM."""
    import signal
    import threading

    from tests.support.scp import ScriptedSCP

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with ScriptedSCP(aet="SLOWSCP", port=port):
        stop.wait()


def _upload(orthanc: Any, path: Path) -> str:
    """POST a file to Orthanc streamed from disk (the bench never holds it in memory)."""
    import base64

    with open(path, "rb") as body:
        req = urllib.request.Request(orthanc.url + "/instances", data=body, method="POST")
        token = base64.b64encode(f"{orthanc.username}:{orthanc.password}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
        req.add_header("Content-Type", "application/dicom")
        req.add_header("Content-Length", str(path.stat().st_size))
        with urllib.request.urlopen(req, timeout=600) as resp:
            return str(json.loads(resp.read())["ID"])


def _run_child(job: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(job)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    if out.returncode != 0:
        raise RuntimeError(f"child failed ({out.returncode}): {out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def bench(size_mb: int, kinds: list[str]) -> list[dict[str, Any]]:
    from tests.destinations.pki import make_pki
    from tests.support.dicom_factory import write_large_instance
    from tests.support.orthanc import OrthancProcess

    results = []
    with tempfile.TemporaryDirectory(prefix="sq-bench-") as name, ExitStack() as stack:
        tmp = Path(name)
        pki = make_pki(tmp)
        instance = tmp / "large.dcm"
        write_large_instance(instance, size_mb * 1024 * 1024)
        source = stack.enter_context(OrthancProcess(aet="SOURCE", start_timeout=60))
        instance_id = _upload(source, instance)
        instance.unlink()
        for kind in kinds:
            with _peer(kind, tmp, pki) as (config, received):
                job = {
                    "source": {
                        "url": source.url,
                        "username": source.username,
                        "password": source.password,
                    },
                    "destination": {"name": "bench", **config},
                    "instance": instance_id,
                    "spool": str(tmp / "spool.dcm"),
                }
                result = _run_child(job)
                result["kind"] = kind
                result["peer_received"] = received()
                results.append(result)
                print(json.dumps(result), flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=500)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--sink", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--scp", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(_forward(json.loads(args.child)))))
        return 0
    if args.sink:
        _sink(int(args.sink[0]), args.sink[1], args.sink[2])
        return 0
    if args.scp:
        _scp(args.scp)
        return 0
    results = bench(args.size_mb, [k.strip() for k in args.kinds.split(",") if k.strip()])
    print(f"\n{'kind':<16}{'baseline MB':>12}{'peak MB':>10}{'download s':>12}{'send s':>8}")
    for r in results:
        print(
            f"{r['kind']:<16}{r['baseline_mb']:>12}{r['peak_mb']:>10}"
            f"{r['download_s']:>12}{r['send_s']:>8}"
        )
    worst = max(r["peak_mb"] for r in results)
    print(f"\nworst peak {worst} MB (limit {LIMIT_MB} MB): {'OK' if worst < LIMIT_MB else 'OVER'}")
    return 0 if worst < LIMIT_MB else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
