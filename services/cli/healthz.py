"""`sendqueue healthz`: exit 0 when a service's /healthz says ok (container and systemd
health checks).

Without --listen, it checks the service that this container runs: PID 1's command line
(`sendqueue <service> --config FILE [--listen HOST:PORT]`) names it, and the config gives
its listen address. That is what the image's HEALTHCHECK relies on, whichever of the three
services a container was started as.
"""

from __future__ import annotations

import argparse
import http.client
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from sendqueue.services.cli.admin_client import url_from_listen
from sendqueue.shared.config import load_config
from sendqueue.shared.errors import ConfigError

SERVICES = ("ingest", "sender", "retry")
_TIMEOUT = 5.0


def add_healthz_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    text = "exit 0 if a service's /healthz answers ok (default: the service PID 1 runs)"
    cmd = sub.add_parser("healthz", help=text, description=text)
    cmd.add_argument("--listen", metavar="HOST:PORT", help="the service's listen address")


def run_healthz(args: argparse.Namespace, cmdline: Path = Path("/proc/1/cmdline")) -> int:
    try:
        listens = [args.listen] if args.listen else listens_of(_argv(cmdline))
    except (ConfigError, OSError, ValueError) as exc:
        print(f"sendqueue healthz: {exc}")
        return 2
    results = [_check(listen) for listen in listens]
    for listen, (ok, detail) in zip(listens, results, strict=True):
        print(f"{'ok  ' if ok else 'FAIL'}  {listen}: {detail}")
    return 0 if all(ok for ok, _ in results) else 1


def _argv(cmdline: Path) -> list[str]:
    return [part for part in cmdline.read_bytes().decode().split("\0") if part]


def listens_of(argv: Sequence[str]) -> list[str]:
    """The listen addresses of the service(s) a `sendqueue ...` command line runs."""
    words = list(argv)
    command = next((w for w in words if w in (*SERVICES, "run")), None)
    if command is None or "--config" not in words[:-1]:
        raise ValueError(f"not a sendqueue service command line: {' '.join(words)!r}")
    if "--listen" in words[:-1]:
        return [words[words.index("--listen") + 1]]
    config = load_config(words[words.index("--config") + 1])
    names = SERVICES if command == "run" else (command,)
    return [getattr(config, name).listen for name in names]


def _check(listen: str) -> tuple[bool, str]:
    url = url_from_listen(listen) + "/healthz"
    try:
        return _get(url)
    except (http.client.HTTPException, ConnectionResetError):
        # The retry service's admin listen may speak HTTPS ([retry] tls_cert): a health
        # check sends nothing secret, so any certificate will do.
        return _get("https" + url.removeprefix("http"), ssl._create_unverified_context())
    except (OSError, ValueError) as exc:
        return False, repr(exc)


def _get(url: str, context: ssl.SSLContext | None = None) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT, context=context) as response:
            body = json.loads(response.read() or b"{}")
            return response.status == 200, str(body.get("status", response.status))
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code} {exc.read(300).decode(errors='replace')}"
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, http.client.HTTPException | ConnectionResetError):
            raise exc.reason from None
        return False, repr(exc)
    except (http.client.HTTPException, ConnectionResetError):
        if context is None:
            raise
        return False, "no HTTP answer"
    except (OSError, ValueError) as exc:
        return False, repr(exc)
