"""Text from peers and DICOM headers reaches the operator's terminal without its controls."""

from __future__ import annotations

import argparse

import pytest

from sendqueue.services.cli import render
from sendqueue.services.cli.admin_commands import config_token, resolve_target
from sendqueue.shared.config import parse_config

HOSTILE = "ok\x1b[2J\x1b]0;pwned\x07\rDONE\x9b31m\u202eevil\u202c\x7f\x00end\tx\ny"


def test_printable_drops_escape_sequences_and_bidi_overrides():
    text = render.printable(HOSTILE)
    assert not any(ord(c) < 32 or 0x7F <= ord(c) <= 0x9F for c in text), repr(text)
    assert "\u202e" not in text and "\u202c" not in text
    assert text.startswith("ok[2J]0;pwned DONE31mevilend x y")


def test_every_table_and_message_the_cli_prints_is_printable():
    page = {
        "items": [
            {
                "id": "a1",
                "parked_at": 1.0,
                "destination": "pacs",
                "attempts": 3,
                "reason_class": "dimse\x1b[31m",
                "study_instance_uid": "1.2\x1b]8;;http://evil\x07",
                "patient_id": "P\r1",
                "reason": HOSTILE,
            }
        ],
        "total": 1,
    }
    status = {"destinations": [{"name": "pacs", "kind": "dicom", "state": "down\x1b[H"}]}
    for text in (
        render.render_parked(page),
        render.render_status(status, {"running": True, "action": "x\x1b[1m", "done": 1}),
    ):
        assert "\x1b" not in text and "\r" not in text and "\x07" not in text


@pytest.mark.parametrize(
    ("retry", "token"),
    [
        ({"admin_token": "a" * 16, "read_tokens": {"r": "r" * 16}}, "a" * 16),
        ({"admin_tokens": {"ops": "o" * 16}}, "o" * 16),
        ({"read_tokens": {"r": "r" * 16}}, "r" * 16),
        ({"admin_tokens": {"a": "a" * 16, "b": "b" * 16}}, ""),  # which one? say --token
    ],
)
def test_a_config_gives_the_cli_its_token(retry, token):
    config = parse_config({"retry": retry}, environ={})
    assert config_token(config.retry) == token


def test_a_tls_admin_listen_is_reached_over_https_trusting_its_certificate(tmp_path):
    cert = tmp_path / "admin.pem"
    config = tmp_path / "sq.toml"
    config.write_text(
        f'[retry]\nlisten = "127.0.0.1:9102"\nadmin_token = "{"a" * 16}"\n'
        f'tls_cert = "{cert}"\ntls_key = "{cert}"\n'
    )
    args = argparse.Namespace(url=None, config=str(config), token=None)
    target = resolve_target(args, {})
    assert (target.url, target.ca_file) == ("https://127.0.0.1:9102", str(cert))
