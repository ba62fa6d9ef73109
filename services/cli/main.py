"""The `sendqueue` command: run services, queue resources, check a config."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Sequence

from aiormq.exceptions import AMQPConnectionError

from sendqueue.services.cli.admin_commands import (
    ADMIN_COMMANDS,
    add_admin_commands,
    run_admin_command,
)
from sendqueue.services.cli.healthz import add_healthz_command, run_healthz
from sendqueue.shared import logs
from sendqueue.shared.config import (
    Config,
    DestinationConfig,
    DicomDestinationConfig,
    OrthancDestinationConfig,
    load_config,
    mask_url,
    secrets_of,
    with_listen,
)
from sendqueue.shared.errors import ConfigError, SendQueueError
from sendqueue.shared.lifecycle import ServiceMain, run_until_signalled

log = logging.getLogger("sendqueue")


def _service(name: str) -> ServiceMain:
    """A service's entry point, imported only when asked for: a command pays for its own
    service's imports alone (the sender's pydicom and numpy are a third of a second, on
    the start-up of every ingest or retry process otherwise)."""
    if name == "ingest":
        from sendqueue.services.ingest.app import run_ingest

        return run_ingest
    if name == "retry":
        from sendqueue.services.retry.app import run_retry

        return run_retry
    from sendqueue.services.sender.app import run_sender

    return run_sender


def _services() -> dict[str, ServiceMain]:
    return {name: _service(name) for name in ("ingest", "sender", "retry")}


async def _with_orthanc_destinations(config: Config, *, wait: bool) -> Config:
    """capture_failed_jobs = "all": Orthanc's modalities and peers become destinations."""
    from sendqueue.shared.orthanc_destinations import with_orthanc_destinations

    return await with_orthanc_destinations(config, wait=wait)


def _check_config(config: Config) -> Config:
    """`check` shows Orthanc's modalities and peers as destinations when it can; Orthanc
    down is reported by the check itself."""
    try:
        return asyncio.run(_with_orthanc_destinations(config, wait=False))
    except SendQueueError as exc:
        print(f"note: Orthanc's modalities and peers could not be read: {exc}")
        return config


async def _run(config: Config, names: Sequence[str]) -> None:
    if "sender" in names and (len(names) > 1 or config.sender.process_count() > 1):
        # The sender's own processes: beside ingest and retry it gets a core of its own
        # (one process shares one GIL), and `[sender] processes` of them may run.
        from sendqueue.services.sender.processes import run_sender_processes

        mains = {name: _service(name) for name in names if name != "sender"}
        await run_until_signalled({"sender": run_sender_processes, **mains}, config)
        return
    await run_until_signalled({name: _service(name) for name in names}, config)


async def _send(config: Config, destination: str, ids: Sequence[str]) -> int:

    from sendqueue.shared.amqp import connect
    from sendqueue.shared.orthanc import OrthancClient
    from sendqueue.shared.resolver import Resolver
    from sendqueue.shared.submit import queue_resources
    from sendqueue.shared.topology import Names, prepare_bus

    if config.destination(destination) is None:
        raise ConfigError(f"unknown destination {destination!r}")
    names = Names(config.amqp.prefix)
    conn = await connect(config.amqp.url, "sendqueue-cli-send")
    orthanc = OrthancClient(config.orthanc)
    try:
        publisher = await prepare_bus(conn, config)
        return await queue_resources(
            resolver=Resolver(orthanc),
            publisher=publisher,
            names=names,
            on_queued=lambda _job: None,
            destination=destination,
            resource_ids=ids,
        )
    finally:
        await orthanc.close()
        await conn.close()


async def _check(config: Config) -> bool:
    from sendqueue.services.sender.destinations import create_destination
    from sendqueue.shared.amqp import connect
    from sendqueue.shared.orthanc import OrthancClient

    results: list[tuple[str, bool, str]] = []
    orthanc = OrthancClient(config.orthanc)
    orthanc_label = "orthanc " + mask_url(config.orthanc.url)
    try:
        system = await orthanc.get_json("/system")
        results.append((orthanc_label, True, f"version {system.get('Version')}"))
    except Exception as exc:
        results.append((orthanc_label, False, str(exc)))
    finally:
        await orthanc.close()
    try:
        conn = await asyncio.wait_for(connect(config.amqp.url, "sendqueue-check"), 15)
        await conn.close()
        results.append(("rabbitmq " + mask_url(config.amqp.url), True, "connected"))
    except Exception as exc:
        results.append(("rabbitmq " + mask_url(config.amqp.url), False, repr(exc)))
    for dest in config.destinations:
        target = create_destination(dest)
        label = f"destination {dest.name} ({dest.kind}{_stands_for(dest)})"
        try:
            await target.probe()
            results.append((label, True, "answers"))
        except SendQueueError as exc:
            results.append((label, False, str(exc)))
        finally:
            await target.close()
    for label, ok, detail in results:
        # A peer's error may quote a URL or echo a credential: masked like a log line.
        print(logs.mask(f"{'ok  ' if ok else 'FAIL'}  {label}: {detail}"))
    return all(ok for _, ok, _ in results)


def _stands_for(dest: DestinationConfig) -> str:
    """The Orthanc modality or peer a destination stands for, with its settings."""
    modality = getattr(dest, "orthanc_modality", "")
    peer = getattr(dest, "orthanc_peer", "")
    if modality and isinstance(dest, DicomDestinationConfig):
        return (
            f", Orthanc modality {modality!r}: {dest.called_aet}@{dest.host}:{dest.port},"
            f" calling AET {dest.calling_aet}, TLS {'on' if dest.tls else 'off'}"
        )
    if peer and isinstance(dest, OrthancDestinationConfig):
        user = f", user {dest.username}" if dest.username else ""
        return f", Orthanc peer {peer!r}: {dest.url}{user}"
    return ""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sendqueue", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    add_admin_commands(sub)
    add_healthz_command(sub)
    for name, text in (
        ("ingest", "follow Orthanc's changes and queue send jobs"),
        ("sender", "send queued instances to their destinations"),
        ("retry", "retry failed sends, park the hopeless, serve the admin API"),
        ("run", "run ingest, sender and retry (the sender in processes of its own)"),
        ("check", "validate the config and check Orthanc, RabbitMQ and each destination"),
    ):
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument("--config", required=True, help="path of the TOML config file")
        if name in ("ingest", "sender", "retry"):
            cmd.add_argument(
                "--listen",
                metavar="HOST:PORT",
                help=f"serve metrics and health here instead of [{name}] listen",
            )
    send = sub.add_parser("send", help="queue Orthanc resources for a destination")
    send.add_argument("--config", required=True)
    send.add_argument("--to", required=True, metavar="DEST", help="destination name")
    send.add_argument(
        "ids",
        nargs="+",
        metavar="ORTHANC_ID",
        help="Orthanc instance, series, study or patient IDs",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ADMIN_COMMANDS:
        return run_admin_command(args)  # talks to the admin API; --config is optional
    if args.command == "healthz":
        return run_healthz(args)
    logs.configure()
    amqp_url = "?"
    try:
        config = load_config(args.config)
        logs.hide_secrets(secrets_of(config))
        if getattr(args, "listen", None):
            config = with_listen(config, args.command, args.listen)
        amqp_url = mask_url(config.amqp.url)
        if args.command == "check":
            config = _check_config(config)
            return 0 if asyncio.run(_check(config)) else 1
        if args.command == "send":
            config = asyncio.run(_with_orthanc_destinations(config, wait=False))
            count = asyncio.run(_send(config, args.to, args.ids))
            print(f"queued {count} instance(s) for {args.to}")
            return 0
        config = asyncio.run(_with_orthanc_destinations(config, wait=True))
        names = ["ingest", "sender", "retry"] if args.command == "run" else [args.command]
        asyncio.run(_run(config, names))
        return 0
    except ConfigError as exc:
        print(logs.mask(f"sendqueue: {exc}"), file=sys.stderr)
        return 2
    except SendQueueError as exc:
        print(logs.mask(f"sendqueue: {exc}"), file=sys.stderr)
        return 1
    except (AMQPConnectionError, OSError) as exc:
        # Typically RabbitMQ unreachable at start-up: say where, without the password.
        print(f"sendqueue: cannot connect (RabbitMQ {amqp_url}): {exc!r}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def entry() -> None:
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
