"""The admin commands' argument handling and text rendering: pure functions, no I/O."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import pytest

from sendqueue.services.cli import admin_commands as admin_cli
from sendqueue.services.cli.admin_client import url_from_listen
from sendqueue.services.cli.admin_commands import (
    UsageError,
    build_parser,
    resolve_target,
    selection,
)
from sendqueue.services.cli.render import (
    format_age,
    format_time,
    progress_line,
    render_parked,
    render_result,
    render_status,
    render_table,
)

URL = ["--url", "http://127.0.0.1:8102"]


def parse(*argv: str):
    return build_parser().parse_args(list(argv))


# -- what is sent -------------------------------------------------------------------------


def test_ids_are_sent_as_a_list_without_duplicates():
    args = parse("parked", "requeue", "--id", "a1", "--id", "b2", "--id", "a1", *URL)
    assert selection(args) == {"ids": ["a1", "b2"]}


def test_filters_become_the_api_selector_and_to_is_passed_along():
    args = parse(
        "parked",
        "requeue",
        "--destination",
        "pacs",
        "--reason",
        "dimse-a9xx",
        "--study",
        "1.2.3",
        "--patient",
        "P1",
        "--since",
        "2h",
        "--to",
        "archive",
        *URL,
    )
    assert selection(args) == {
        "destination": "pacs",
        "reason": "dimse-a9xx",
        "study": "1.2.3",
        "patient": "P1",
        "since": "2h",
        "to": "archive",
    }


def test_all_selects_everything():
    assert selection(parse("parked", "delete", "--all", *URL)) == {"all": True}


@pytest.mark.parametrize(
    "argv, words",
    [
        (["parked", "requeue"], "say what to requeue"),
        (["parked", "delete"], "say what to delete"),
        (["parked", "requeue", "--all", "--destination", "pacs"], "--all cannot"),
        (["parked", "delete", "--id", "x", "--patient", "P1"], "--id cannot"),
        (["parked", "requeue", "--id", "x", "--limit", "3"], "--id cannot"),
    ],
)
def test_an_unclear_selection_is_a_usage_error(argv, words):
    with pytest.raises(UsageError, match=words):
        selection(parse(*argv, *URL))


def test_a_usage_error_exits_2_before_anything_is_sent(capsys):
    # Port 9 (discard) would make a real request fail with exit 3, not 2.
    code = admin_cli.main(["parked", "delete", "--url", "http://127.0.0.1:9"])
    assert code == admin_cli.EXIT_USAGE
    assert "say what to delete" in capsys.readouterr().err


def test_to_exists_for_requeue_only():
    with pytest.raises(SystemExit) as exit_info:
        parse("parked", "delete", "--all", "--to", "archive", *URL)
    assert exit_info.value.code == 2


@pytest.mark.parametrize("value", ["2h", "90m", "1700000000", "1700000000.5"])
def test_ages_and_epoch_seconds_pass_unchanged(value):
    assert parse("parked", "list", "--since", value, *URL).since == value


def test_a_date_and_time_is_the_operators_local_time():
    args = parse("parked", "list", "--since", "2024-05-01T08:00", *URL)
    local = dt.datetime(2024, 5, 1, 8, 0).astimezone()  # naive -> this machine's zone
    assert float(args.since) == local.timestamp()


def test_a_date_with_an_offset_keeps_its_offset():
    args = parse("parked", "list", "--until", "2024-05-01T08:00+02:00", *URL)
    assert float(args.until) == dt.datetime(2024, 5, 1, 6, 0, tzinfo=dt.UTC).timestamp()


def test_a_time_that_is_none_of_these_is_refused(capsys):
    with pytest.raises(SystemExit):
        parse("parked", "list", "--since", "yesterday", *URL)
    assert "not a time" in capsys.readouterr().err


def test_limit_must_be_positive():
    with pytest.raises(SystemExit):
        parse("parked", "list", "--limit", "0", *URL)


# -- where the API is ---------------------------------------------------------------------


def write_config(tmp_path, listen: str = "0.0.0.0:9102", token: str = "file-token-0123456789"):
    path = tmp_path / "sendqueue.toml"
    path.write_text(f'[retry]\nlisten = "{listen}"\nadmin_token = "{token}"\n')
    return str(path)


def test_config_gives_the_url_from_retry_listen_and_its_token(tmp_path):
    args = parse("status", "--config", write_config(tmp_path))
    target = resolve_target(args, {})
    assert (target.url, target.token) == ("http://127.0.0.1:9102", "file-token-0123456789")


def test_token_option_beats_environment_beats_config(tmp_path):
    config = write_config(tmp_path)
    env = {"SENDQUEUE_ADMIN_TOKEN": "env-token-0123456789"}
    assert resolve_target(parse("status", "--config", config), env).token == "env-token-0123456789"
    args = parse("status", "--config", config, "--token", "cli-token")
    assert resolve_target(args, env).token == "cli-token"


def test_the_url_may_come_from_the_environment():
    env = {"SENDQUEUE_ADMIN_URL": "http://pacs-gw:8102", "SENDQUEUE_ADMIN_TOKEN": "t"}
    target = resolve_target(parse("status"), env)
    assert (target.url, target.token) == ("http://pacs-gw:8102", "t")


@pytest.mark.parametrize(
    "argv, words",
    [
        ([], "where is the admin API"),
        (["--url", "pacs-gw:8102"], "must start with http"),
    ],
)
def test_a_missing_or_malformed_url_is_a_usage_error(argv, words):
    with pytest.raises(UsageError, match=words):
        resolve_target(parse("status", *argv), {})


def test_config_and_url_together_are_refused(tmp_path):
    args = parse("status", "--config", write_config(tmp_path), "--url", "http://x:1")
    with pytest.raises(UsageError, match="not both"):
        resolve_target(args, {})


def test_an_unreadable_config_exits_2(tmp_path, capsys):
    code = admin_cli.main(["status", "--config", str(tmp_path / "missing.toml")])
    assert code == admin_cli.EXIT_USAGE
    assert "cannot read config file" in capsys.readouterr().err


@pytest.mark.parametrize(
    "listen, url",
    [
        ("127.0.0.1:8102", "http://127.0.0.1:8102"),
        ("0.0.0.0:8102", "http://127.0.0.1:8102"),
        ("[::]:8102", "http://[::1]:8102"),
        ("[::1]:8102", "http://[::1]:8102"),
        ("pacs-gw.example.org:8102", "http://pacs-gw.example.org:8102"),
    ],
)
def test_listen_addresses_become_urls(listen, url):
    assert url_from_listen(listen) == url


# -- what is shown ------------------------------------------------------------------------


def test_tables_pad_columns_and_right_align_numbers():
    text = render_table(("NAME", "COUNT"), [("pacs", 3), ("archive", 1200)], right=[1])
    assert text.splitlines() == ["NAME     COUNT", "pacs         3", "archive   1200"]


@pytest.mark.parametrize(
    "seconds, text",
    [(None, "-"), (0, "0s"), (45.4, "45s"), (192, "3m 12s"), (7500, "2h 05m"), (273600, "3d 04h")],
)
def test_ages_are_short(seconds, text):
    assert format_age(seconds) == text


def test_times_are_local_and_iso_like():
    epoch = time.mktime((2024, 5, 1, 14, 3, 22, 0, 0, -1))
    assert format_time(epoch) == "2024-05-01 14:03:22"
    assert format_time(None) == "-"


QUEUES = {
    "destinations": [
        {
            "name": "pacs",
            "kind": "dicom",
            "ready": 12,
            "in_flight": 2,
            "delayed": {"10s": 3, "1m": 1},
            "parked": 7,
            "consumers": 1,
            "state": "up",
            "oldest_waiting_seconds": 192,
        },
        {"name": "archive", "kind": "dicomweb", "state": "paused", "delayed": {}},
    ],
    "delay_tiers": [{"tier": "10s", "messages": 3}, {"tier": "1m", "messages": 1}],
    "failed": 0,
    "parked": 7,
}


def test_status_shows_a_row_per_destination_and_the_totals():
    lines = render_status(QUEUES).splitlines()
    assert lines[0].split() == [
        "DESTINATION",
        "KIND",
        "STATE",
        "READY",
        "IN",
        "FLIGHT",
        "DELAYED",
        "PARKED",
        "CONSUMERS",
        "OLDEST",
        "WAITING",
    ]
    assert lines[1].split() == ["pacs", "dicom", "up", "12", "2", "4", "7", "1", "3m", "12s"]
    assert lines[2].split() == ["archive", "dicomweb", "paused", "-", "-", "0", "-", "-", "-"]
    assert "parked: 7   failed: 0" in lines
    assert "waiting in delay tiers: 10s: 3, 1m: 1" in lines


def test_status_names_a_running_bulk_operation():
    operation = {"running": True, "action": "requeue", "done": 250, "total": 1000}
    assert render_status(QUEUES, operation).endswith("running: requeue: 250/1000 (25%)")


ITEM = {
    "id": "0f3c",
    "destination": "pacs",
    "parked_at": time.mktime((2024, 5, 1, 14, 3, 22, 0, 0, -1)),
    "attempts": 1,
    "reason_class": "dimse-a9xx",
    "study_instance_uid": "1.2.3",
    "patient_id": "P1",
    "reason": "C-STORE of 1.2.826.0.1.3680043.8.498."
    + "1234567890" * 4
    + " failed:\nDIMSE status 0xA900 (Error: data set does not match SOP class)",
}


def test_parked_items_show_when_where_and_why_on_one_line_each():
    lines = render_parked({"items": [ITEM], "total": 1}).splitlines()
    assert lines[0].split()[:4] == ["ID", "PARKED", "AT", "DESTINATION"]
    row = lines[1]
    assert row.startswith("0f3c  2024-05-01 14:03:22  pacs")
    assert "dimse-a9xx" in row and "1.2.3" in row and "P1" in row
    # Cut in the middle, where the UID is: the end of a reason says most. The newline
    # became a space.
    reason = row.split("  ")[-1].strip()
    assert reason.startswith("C-STORE of 1.2.826.0.1")
    assert reason.endswith("failed: DIMSE status 0xA900 (Error: data set does not match SOP class)")
    assert len(reason) == 100 and "…" in reason
    assert lines[-1] == "1 of 1 parked item(s) shown"


def test_a_partial_list_says_how_to_see_more():
    text = render_parked({"items": [ITEM], "total": 250})
    assert text.endswith("1 of 250 parked item(s) shown; narrow with filters or raise --limit")


def test_an_empty_list_says_so():
    assert render_parked({"items": [], "total": 0}) == "no parked items match"


def test_results_name_the_count_and_any_failures():
    assert render_result("requeue", {"requeued": 4, "failed": 0}) == (
        "requeued 4 parked item(s) to their destinations"
    )
    assert render_result("requeue", {"requeued": 2, "failed": 0}, "archive") == (
        "requeued 2 parked item(s) to archive"
    )
    assert render_result("delete", {"deleted": 3, "failed": 1}) == (
        "deleted 3 parked item(s); 1 failed and stay parked (see the retry service's log)"
    )


def test_progress_lines():
    assert progress_line({"action": "delete", "done": 5, "total": 20}) == "delete: 5/20 (25%)"
    assert progress_line({"action": "rebuild", "done": 5, "total": 0}) == "rebuild: 5 done"


async def test_a_long_bulk_call_reports_the_servers_progress_on_stderr(monkeypatch, capsys):
    # Given a server whose operation advances while the call runs (stderr: not a terminal)
    monkeypatch.setattr(admin_cli, "_POLL", 0.01)
    monkeypatch.setattr(admin_cli, "_LOG_EVERY", 0.0)
    states = iter(
        {"running": True, "action": "requeue", "done": n, "total": 300} for n in (100, 200, 300)
    )

    class Api:
        async def operation(self):
            return next(states, {"running": False, "action": None, "done": 0, "total": 0})

    async def bulk_call():
        await asyncio.sleep(0.3)
        return {"requeued": 300, "failed": 0}

    # When the call is awaited with progress
    result = await admin_cli._with_progress(Api(), bulk_call())

    # Then the answer is the call's, and each step was a line on stderr, none on stdout
    assert result == {"requeued": 300, "failed": 0}
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        "requeue: 100/300 (33%)",
        "requeue: 200/300 (66%)",
        "requeue: 300/300 (100%)",
    ]


# -- Orthanc's failed sends ---------------------------------------------------------------


def test_orthanc_job_selects_the_items_captured_from_that_job():
    args = parse("parked", "delete", "--orthanc-job", "6f1c-22", *URL)
    assert selection(args) == {"orthanc_job": "6f1c-22"}


def test_parked_items_from_orthanc_jobs_are_summed_up_per_job():
    item = {
        "id": "x1",
        "parked_at": 1_700_000_000,
        "destination": "pacs",
        "attempts": 4,
        "reason_class": "dimse-a9xx",
        "reason": "refused",
        "source": "orthanc-job",
        "orthanc_job": "6f1c-22",
        "orthanc_job_failed_at": 1_699_999_000,
        "orthanc_job_error": "Error in the network protocol: connection refused",
        "orthanc_job_instances": 10,
    }
    text = render_parked({"items": [item, {**item, "id": "x2"}, {"id": "x3"}], "total": 3})
    assert "captured from Orthanc's failed sends:" in text
    [line] = [row for row in text.splitlines() if row.startswith("6f1c-22")]
    assert format_time(1_699_999_000) in line
    assert line.split()[3:5] == ["10", "2"]  # instances of the job, parked here
    assert line.endswith("Error in the network protocol: connection refused")
    assert "captured from" not in render_parked({"items": [{"id": "x3"}], "total": 1})
