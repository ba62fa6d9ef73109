"""The operator commands: `sendqueue status | parked list|requeue|delete | pause | resume`.

They talk to the retry service's admin HTTP API, so they work from any host that reaches
its [retry] listen address. Exit codes are stable, for scripts:

    0  done
    1  the API refused, or some items could not be acted on (they stay parked)
    2  usage or configuration error: nothing was sent
    3  the admin API cannot be reached
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any

from sendqueue.services.cli import render
from sendqueue.services.cli.admin_client import AdminClient, url_from_listen
from sendqueue.shared.config import RetryConfig, load_config
from sendqueue.shared.durations import Duration
from sendqueue.shared.errors import AdminApiError, AdminUnreachable, ConfigError

#: The `command` values these functions handle (the hook in services/cli.py checks it).
ADMIN_COMMANDS = frozenset({"status", "parked", "pause", "resume"})

EXIT_OK, EXIT_API, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3

#: Option name -> the admin API's query/body key.
FILTERS = {
    "destination": "destination",
    "reason": "reason",
    "study": "study",
    "patient": "patient",
    "orthanc_job": "orthanc_job",
    "since": "since",
    "until": "until",
}
#: The API serves at most this many parked items per page; longer lists are paged.
_PAGE = 10_000
#: Progress of a bulk call: poll this often; without a terminal, print a line this often.
_POLL = 1.0
_LOG_EVERY = 5.0


class UsageError(Exception):
    """The command line cannot work as given (exit code 2)."""


@dataclass(frozen=True)
class Target:
    url: str
    token: str
    #: A CA file to trust besides the system's (the admin listen's own certificate).
    ca_file: str = ""


# -- command line -------------------------------------------------------------------------


def time_value(value: str) -> str:
    """argparse type of --since/--until, as the admin API takes them.

    Epoch seconds and ages ("2h" = two hours ago) pass as given. A date and time is the
    operator's local time, like the times the tables show, so it is sent as epoch seconds
    (the API reads a date without an offset as UTC).
    """
    for check in (float, Duration.parse):
        try:
            check(value)
            return value
        except ValueError:
            pass
    try:
        return repr(dt.datetime.fromisoformat(value).timestamp())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a time: use an age (2h), a local date and time "
            "(2024-05-01T08:00) or epoch seconds"
        ) from None


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of 1 or more, got {value!r}")
    return int(value)


def _connection() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    where = common.add_argument_group("where the admin API is")
    where.add_argument(
        "--config", metavar="FILE", help="sendqueue config: URL from [retry] listen, its token"
    )
    where.add_argument(
        "--url", help="admin API base URL, e.g. http://127.0.0.1:8102 (env SENDQUEUE_ADMIN_URL)"
    )
    where.add_argument("--token", help="admin token (env SENDQUEUE_ADMIN_TOKEN: not in ps)")
    common.add_argument("--json", action="store_true", help="print the API's JSON answer")
    return common


def _filters(limit_help: str) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("which parked items (all given filters must match)")
    group.add_argument("--destination", metavar="D", help="destination name")
    group.add_argument("--reason", metavar="R", help="reason class, e.g. dimse-a9xx, not-found")
    group.add_argument("--study", metavar="UID", help="StudyInstanceUID")
    group.add_argument("--patient", metavar="ID", help="PatientID")
    group.add_argument(
        "--orthanc-job",
        dest="orthanc_job",
        metavar="JOB",
        help="captured from this failed Orthanc store job (its ID in Orthanc's GET /jobs)",
    )
    group.add_argument("--since", metavar="T", type=time_value, help="parked at or after T")
    group.add_argument("--until", metavar="T", type=time_value, help="parked before T")
    group.add_argument("--limit", metavar="N", type=_positive, help=limit_help)
    return common


def add_admin_commands(subparsers: Any) -> None:
    """Add status, parked, pause and resume to the `sendqueue` subcommands."""
    conn = _connection()
    _add(subparsers, "status", "queues per destination, parked and failed counts", conn)
    parked = _add(subparsers, "parked", "list, requeue or delete parked items")
    actions = parked.add_subparsers(dest="parked_action", metavar="ACTION", required=True)
    limit = "show at most N (default 100)"
    _add(actions, "list", "parked items, oldest first, with why", conn, _filters(limit))
    for action, verb in (("requeue", "send again"), ("delete", "drop for good")):
        limit = f"{action} only the N oldest that match"
        text = f"{verb} parked items chosen by --id, by filters, or --all"
        cmd = _add(actions, action, text, conn, _filters(limit))
        cmd.add_argument(
            "--id", dest="ids", action="append", metavar="ID", help="a parked item's id (repeat)"
        )
        cmd.add_argument("--all", action="store_true", help="every parked item")
        if action == "requeue":
            cmd.add_argument("--to", metavar="DEST", help="send to this destination instead")
        else:
            cmd.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    for name, text in (("pause", "stop sending to"), ("resume", "start sending again to")):
        cmd = _add(subparsers, name, f"{text} a destination", conn)
        cmd.add_argument("destination", metavar="DEST", help="destination name")


def _add(
    subparsers: Any, name: str, text: str, *parents: argparse.ArgumentParser
) -> argparse.ArgumentParser:
    # No abbreviations: "--to" would silently be taken for "--token" by `parked delete`.
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name, parents=list(parents), help=text, description=text, allow_abbrev=False
    )
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The admin commands alone (`python -m sendqueue.services.cli.admin_commands`)."""
    parser = argparse.ArgumentParser(prog="sendqueue", description=__doc__.splitlines()[0])
    add_admin_commands(parser.add_subparsers(dest="command", required=True))
    return parser


# -- from arguments to requests (pure) ----------------------------------------------------


def resolve_target(args: argparse.Namespace, environ: Mapping[str, str]) -> Target:
    """--url, else --config's [retry] listen, else SENDQUEUE_ADMIN_URL; the token likewise."""
    token = args.token or environ.get("SENDQUEUE_ADMIN_TOKEN", "")
    ca_file = ""
    if args.url and args.config:
        raise UsageError("give --config or --url, not both")
    if args.url:
        url = args.url
    elif args.config:
        config = load_config(args.config, environ)
        url = url_from_listen(config.retry.listen, tls=bool(config.retry.tls_cert))
        token = token or config_token(config.retry)
        ca_file = config.retry.tls_cert
    elif environ.get("SENDQUEUE_ADMIN_URL"):
        url = environ["SENDQUEUE_ADMIN_URL"]
    else:
        raise UsageError(
            "where is the admin API? give --config FILE, --url URL or set SENDQUEUE_ADMIN_URL"
        )
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"the admin URL must start with http:// or https://, got {url!r}")
    return Target(url=url, token=token, ca_file=ca_file)


def config_token(retry: RetryConfig) -> str:
    """The token a config file gives the CLI: its admin_token, else its only admin token,
    else its only read token (enough for status and lists)."""
    if retry.admin_token:
        return retry.admin_token
    for tokens in (retry.admin_tokens, retry.read_tokens):
        if len(tokens) == 1:
            return next(iter(tokens.values()))
    return ""


def filter_query(args: argparse.Namespace) -> dict[str, str]:
    return {key: getattr(args, opt) for opt, key in FILTERS.items() if getattr(args, opt)}


def selection(args: argparse.Namespace) -> dict[str, Any]:
    """The body of a requeue/delete call; UsageError when the selection is unclear."""
    filters = filter_query(args)
    if args.ids:
        if filters or args.all or args.limit:
            raise UsageError("--id cannot be combined with --all, --limit or filters")
        body: dict[str, Any] = {"ids": list(dict.fromkeys(args.ids))}
    elif args.all:
        if filters:
            raise UsageError("--all cannot be combined with filters: drop one of them")
        body = {"all": True}
    elif filters:
        body = dict(filters)
    else:
        what = args.parked_action
        raise UsageError(f"say what to {what}: --id ID, filters (--destination ...) or --all")
    if getattr(args, "to", None):
        body["to"] = args.to
    return body


# -- running ------------------------------------------------------------------------------


def run_admin_command(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> int:
    """Run one parsed admin command; returns the exit code (messages already printed)."""
    environ = os.environ if environ is None else environ
    try:
        target = resolve_target(args, environ)
        if args.command == "parked" and args.parked_action != "list":
            selection(args)  # a usage error must stop us before anything is sent
    except (UsageError, ConfigError) as exc:
        return _fail(str(exc), EXIT_USAGE)
    try:
        return asyncio.run(_execute(args, target))
    except AdminUnreachable as exc:
        return _fail(f"{exc} (is the retry service running?)", EXIT_UNREACHABLE)
    except AdminApiError as exc:
        return _fail(_explain(exc, target), EXIT_API)


def main(argv: list[str] | None = None) -> int:
    return run_admin_command(build_parser().parse_args(argv))


def _fail(message: str, code: int) -> int:
    print(f"sendqueue: {render.printable(message)}", file=sys.stderr)
    return code


def _explain(exc: AdminApiError, target: Target) -> str:
    text = f"the admin API refused: {exc} (HTTP {exc.status})"
    if exc.status == 401 and not target.token:
        text += "; give a token: --token, SENDQUEUE_ADMIN_TOKEN or --config"
    elif exc.status == 403:
        text += "; this needs an admin token, not a read token"
    return text


async def _execute(args: argparse.Namespace, target: Target) -> int:
    async with AdminClient(target.url, target.token, ca_file=target.ca_file) as api:
        if args.command == "status":
            return await _status(api, args)
        if args.command in ("pause", "resume"):
            return await _pause(api, args)
        if args.parked_action == "list":
            return await _list(api, args)
        return await _act(api, args)


async def _status(api: AdminClient, args: argparse.Namespace) -> int:
    queues = await api.queues()
    operation = await _operation(api)
    if args.json:
        _print_json({**queues, "operation": operation})
    else:
        print(render.render_status(queues, operation))
    return EXIT_OK


async def _pause(api: AdminClient, args: argparse.Namespace) -> int:
    call = api.pause if args.command == "pause" else api.resume
    result = await call(args.destination)
    if args.json:
        _print_json(result)
    else:
        state = "paused" if result.get("paused") else "sending"
        print(render.printable(f"{result.get('destination', args.destination)}: {state}"))
    return EXIT_OK


async def _list(api: AdminClient, args: argparse.Namespace) -> int:
    page = await fetch_parked(api, filter_query(args), args.limit or 100)
    if args.json:
        _print_json(page)
    else:
        print(render.render_parked(page))
    return EXIT_OK


async def fetch_parked(api: AdminClient, query: Mapping[str, str], limit: int) -> dict[str, Any]:
    """Up to `limit` matching items, oldest first, following the API's cursor."""
    items: list[dict[str, Any]] = []
    total, cursor = 0, None
    while len(items) < limit:
        page = await api.parked(query, min(_PAGE, limit - len(items)), cursor)
        items.extend(page.get("items", []))
        total, cursor = int(page.get("total") or 0), page.get("next_cursor")
        if not cursor:
            break
    return {"items": items, "total": total, "next_cursor": cursor}


async def _act(api: AdminClient, args: argparse.Namespace) -> int:
    action: str = args.parked_action
    body = selection(args)
    if args.limit:  # "the N oldest that match": pick them now, then act on exactly those
        page = await fetch_parked(api, filter_query(args), args.limit)
        ids = [item["id"] for item in page["items"]]
        if not ids:
            print("no parked items match: nothing to do")
            return EXIT_OK
        body = {"ids": ids, **({"to": args.to} if getattr(args, "to", None) else {})}
    if action == "delete" and not await _confirmed(api, args, body):
        print("nothing deleted")
        return EXIT_OK
    call = api.requeue(body) if action == "requeue" else api.delete(body)
    result = await _with_progress(api, call)
    if args.json:
        _print_json(result)
    else:
        print(render.render_result(action, result, body.get("to")))
    return EXIT_API if int(result.get("failed") or 0) else EXIT_OK


async def _confirmed(api: AdminClient, args: argparse.Namespace, body: Mapping[str, Any]) -> bool:
    """A person at a terminal confirms a delete by filter; scripts (no terminal) are trusted."""
    if args.yes or "ids" in body or not (sys.stdin.isatty() and sys.stderr.isatty()):
        return True
    total = (await api.parked(filter_query(args), 1))["total"]
    if not total:
        return False
    print(f"delete {total} parked item(s) for good? [y/N] ", end="", file=sys.stderr, flush=True)
    answer = await asyncio.to_thread(sys.stdin.readline)
    return answer.strip().lower() in ("y", "yes")


async def _with_progress(api: AdminClient, call: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    """Await a bulk call; meanwhile show the server's progress on stderr."""
    task = asyncio.ensure_future(call)
    tty = sys.stderr.isatty()
    shown, last_line = False, 0.0
    while not task.done():
        await asyncio.wait({task}, timeout=_POLL)
        operation = None if task.done() else await _operation(api)
        if not operation or not operation.get("running"):
            continue
        line = render.printable(render.progress_line(operation))
        if tty:
            print("\r" + line, end="", file=sys.stderr, flush=True)
            shown = True
        elif time.monotonic() - last_line >= _LOG_EVERY:
            print(line, file=sys.stderr, flush=True)
            last_line = time.monotonic()
    if shown:
        print(file=sys.stderr)
    return task.result()


async def _operation(api: AdminClient) -> dict[str, Any] | None:
    # Progress is a nicety: a failing progress poll must not fail the command.
    try:
        return await api.operation()
    except (AdminApiError, AdminUnreachable):
        return None


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


if __name__ == "__main__":
    sys.exit(main())
