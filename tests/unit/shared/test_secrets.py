"""Secrets in the config: token rules, where credentials may go, and masking everywhere."""

from __future__ import annotations

import io
import json
import logging

import pytest

from sendqueue.services.retry.admin.auth import check_admin_exposure
from sendqueue.shared import logs
from sendqueue.shared.config import MIN_TOKEN_LENGTH, mask_url, parse_config, secrets_of
from sendqueue.shared.errors import ConfigError

GOOD = "a" * MIN_TOKEN_LENGTH


def retry(**keys: object) -> dict[str, object]:
    return {"retry": {"listen": "127.0.0.1:8102", **keys}}


@pytest.mark.parametrize(
    ("keys", "environ", "named"),
    [
        ({"admin_token": "short-token"}, {}, "retry.admin_token"),
        ({}, {"SENDQUEUE_ADMIN_TOKEN": "short"}, "SENDQUEUE_ADMIN_TOKEN"),
        ({"admin_tokens": {"alice": "alice-1"}}, {}, "retry.admin_tokens.alice"),
        ({"read_tokens": {"bob": "x" * (MIN_TOKEN_LENGTH - 1)}}, {}, "retry.read_tokens.bob"),
        ({"read_tokens": {"bob": " " + GOOD}}, {}, "retry.read_tokens.bob"),
    ],
)
def test_every_token_has_a_minimum_length(keys, environ, named):
    with pytest.raises(ConfigError) as error:
        parse_config(retry(**keys), environ=environ)
    assert named in str(error.value) and f"at least {MIN_TOKEN_LENGTH} characters" in str(
        error.value
    )
    assert "openssl rand" in str(error.value)


def test_a_token_cannot_be_both_read_and_admin():
    with pytest.raises(ConfigError, match="both a read token and an admin token"):
        parse_config(retry(admin_token=GOOD, read_tokens={"bob": GOOD}), environ={})


def test_tokens_by_scope():
    config = parse_config(
        retry(admin_token=GOOD, admin_tokens={"ops": "o" * 20}, read_tokens={"bob": "r" * 20}),
        environ={},
    )
    assert config.retry.tokens() == {GOOD: "admin", "o" * 20: "ops"}
    assert config.retry.readers() == {"r" * 20: "bob"}


@pytest.mark.parametrize(
    ("keys", "words"),
    [
        # A config valid before read tokens existed: loopback, no token.
        ({}, "set [retry] allow_anonymous = true"),
        ({"listen": "0.0.0.0:8102"}, "refusing to expose the admin API"),
        ({"listen": "0.0.0.0:8102", "allow_anonymous": True}, "refusing to expose"),
        ({"admin_token": GOOD, "allow_anonymous": True}, "remove allow_anonymous"),
    ],
)
def test_the_admin_api_without_tokens_starts_only_when_allowed_out_loud(keys, words):
    config = parse_config(retry(**keys), environ={})
    with pytest.raises(ConfigError) as error:
        check_admin_exposure(config)
    assert words in str(error.value)


def test_anonymous_loopback_and_token_configs_start():
    for keys in (
        {"allow_anonymous": True},
        {"admin_token": GOOD},
        {"read_tokens": {"bob": GOOD}, "listen": "0.0.0.0:8102"},
    ):
        check_admin_exposure(parse_config(retry(**keys), environ={}))


def test_tls_cert_and_key_go_together():
    with pytest.raises(ConfigError, match=r"tls_cert and retry\.tls_key go together"):
        parse_config(retry(admin_token=GOOD, tls_cert="/etc/ssl/admin.pem"), environ={})


@pytest.mark.parametrize(
    "url",
    [
        "https://user:secret@pacs.example/dicom-web",
        "https://user@pacs.example/dicom-web",
        "http://user:p@ss@orthanc.example:8042",
        "https://user:s3cr3t@pacs.example?x=1",
    ],
)
@pytest.mark.parametrize("kind", ["dicomweb", "orthanc"])
def test_credentials_inside_a_destination_url_stop_the_start_up(url, kind):
    data = {"destinations": [{"name": "cloud", "kind": kind, "url": url}]}
    with pytest.raises(ConfigError) as error:
        parse_config(data, environ={})
    text = str(error.value)
    assert "must not contain credentials" in text
    assert "`username`" in text and "SENDQUEUE_DEST_CLOUD_PASSWORD" in text
    assert not any(word in text for word in ("secret", "s3cr3t", "p@ss"))  # not repeated


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("amqp://user:pw@host:5672/v", "amqp://user:******@host:5672/v"),
        ("amqp://user:p@ss@host:5672/v", "amqp://user:******@host:5672/v"),
        ("amqp://user:@@@host/", "amqp://user:******@host/"),
        ("see http://a:b@x/ and amqp://c:d@e@y/", "see http://a:******@x/ and amqp://c:******@y/"),
        ("amqp://host:5672/v", "amqp://host:5672/v"),
    ],
)
def test_mask_url_hides_passwords_even_with_an_at_sign(url, masked):
    assert mask_url(url) == masked


@pytest.fixture
def captured():
    """The root logger writing to a buffer with the service's formatter; restored after."""
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    buffers = {}
    for fmt in ("text", "json"):
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logs.JsonFormatter() if fmt == "json" else logs.TextFormatter())
        buffers[fmt] = stream
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield buffers
    root.handlers[:] = saved
    root.setLevel(level)
    logs._SECRETS.clear()


def test_every_log_line_masks_passwords_and_the_configs_secrets(captured):
    config = parse_config(
        {
            "orthanc": {"password": "orthanc-pw-with-@-in-it"},
            "amqp": {"url": "amqp://sq:amqp@pw@127.0.0.1:5672/"},
            "retry": {"admin_token": "admin-token-4f1c2a9e", "read_tokens": {"r": "r" * 20}},
            "destinations": [
                {
                    "name": "cloud",
                    "kind": "dicomweb",
                    "url": "https://pacs.example",
                    "username": "u",
                    "password": "dest-pw-77@x",
                }
            ],
        },
        environ={},
    )
    secrets = secrets_of(config)
    assert {"orthanc-pw-with-@-in-it", "amqp@pw", "admin-token-4f1c2a9e", "dest-pw-77@x"} <= set(
        secrets
    )
    logs.hide_secrets(secrets)
    log = logging.getLogger("sendqueue.test")
    log.warning("connecting to %s", config.amqp.url)
    log.warning("peer said: bad password 'dest-pw-77@x' for https://u:dest-pw-77@x@pacs.example/")
    try:
        raise RuntimeError("token admin-token-4f1c2a9e refused; orthanc-pw-with-@-in-it")
    except RuntimeError:
        log.exception("failed")
    logs.job_event(log, "parked", destination="cloud", reason="auth with " + "r" * 20)
    for fmt, stream in captured.items():
        text = stream.getvalue()
        assert text.count("******") >= 5, (fmt, text)
        for secret in secrets:
            assert secret not in text, (fmt, secret, text)
    for line in captured["json"].getvalue().splitlines():
        json.loads(line)  # still one JSON object per line
