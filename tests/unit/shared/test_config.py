"""Config decoding and validation: bad input gets an error that names the key."""

import pytest

from sendqueue.shared.config import (
    is_loopback,
    load_config,
    mask_url,
    parse_config,
    parse_listen,
    with_listen,
)
from sendqueue.shared.durations import Duration, format_duration
from sendqueue.shared.errors import ConfigError

MINIMAL = {
    "destinations": [{"name": "pacs", "host": "127.0.0.1", "port": 11112}],
    "routes": [{"destinations": ["pacs"]}],
}


def test_defaults_fill_every_section():
    config = parse_config(MINIMAL, environ={})
    assert config.amqp.prefix == "sendqueue"
    assert config.retry.delays == [10, 60, 300, 1800, 7200]
    assert config.destinations[0].kind == "dicom"
    assert config.routes[0].level == "instance"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("10s", 10), ("5m", 300), ("2h", 7200), ("1d", 86400), (3, 3), ("1.5s", 1.5)],
)
def test_durations_accept_units(text, seconds):
    assert Duration.parse(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["10x", "", "-1s", "s", True, -2])
def test_bad_durations_are_rejected(bad):
    with pytest.raises(ValueError):
        Duration.parse(bad)


def test_format_duration_is_exact_and_short():
    assert [format_duration(s) for s in (10, 60, 90, 3600, 0.25, 1.067)] == [
        "10s",
        "1m",
        "90s",
        "1h",
        "250ms",
        "1067ms",
    ]


@pytest.mark.parametrize(
    ("patch", "fragment"),
    [
        ({"retry": {"delays": ["10x"]}}, "$.retry.delays[0]"),
        ({"retry": {"typo": 1}}, "unknown field `typo`"),
        ({"ingest": {"listen": "nope"}}, "$.ingest"),
        ({"ingest": {"start_from": "yesterday"}}, "$.ingest.start_from"),
        ({"routes": [{"destinations": ["nowhere"]}]}, "unknown destinations"),
        ({"destinations": [{"name": "a b", "host": "h"}]}, "destination name"),
        ({"destinations": [{"name": "x", "host": "h", "called_aet": "A" * 17}]}, "called_aet"),
        ({"retry": {"max_attempts": 0}}, "max_attempts"),
        ({"amqp": {"prefix": ""}}, "prefix"),
    ],
)
def test_invalid_config_names_the_bad_key(patch, fragment):
    with pytest.raises(ConfigError) as caught:
        parse_config({**MINIMAL, **patch}, environ={})
    assert fragment in str(caught.value)


def test_duplicate_destinations_are_rejected():
    doubled = {"destinations": MINIMAL["destinations"] * 2}
    with pytest.raises(ConfigError, match="duplicate destination names: pacs"):
        parse_config(doubled, environ={})


def test_secrets_come_from_the_environment():
    env = {"SENDQUEUE_ORTHANC_PASSWORD": "s3cret", "SENDQUEUE_ADMIN_TOKEN": "tok-0123456789abcdef"}
    config = parse_config(MINIMAL, environ=env)
    assert config.orthanc.password == "s3cret"
    assert config.retry.admin_token == "tok-0123456789abcdef"


def test_the_broker_url_from_the_environment_wins_over_the_file():
    data = {**MINIMAL, "amqp": {"url": "amqp://guest:guest@127.0.0.1:5672/"}}
    env = {"SENDQUEUE_AMQP_URL": "amqp://sq:pw@10.0.0.9:5672/site"}
    assert parse_config(data, environ=env).amqp.url == "amqp://sq:pw@10.0.0.9:5672/site"
    assert parse_config(data, environ={}).amqp.url == "amqp://guest:guest@127.0.0.1:5672/"


def test_the_broker_url_may_list_the_nodes_of_a_cluster():
    nodes = "amqp://sq:pw@10.0.0.1:5672/site, amqp://sq:pw@10.0.0.2:5672/site"
    data = {**MINIMAL, "amqp": {"url": nodes}}
    assert parse_config(data, environ={}).amqp.url == nodes
    with pytest.raises(ConfigError, match=r"comma-separated amqp://.*sq:\*\*\*\*\*\*@"):
        parse_config({**MINIMAL, "amqp": {"url": "amqp://sq:pw@a/, http://sq:pw@b/"}}, environ={})


def test_per_destination_overrides():
    data = {
        "retry": {"delays": ["1s"], "max_attempts": 3},
        "destinations": [
            {"name": "a", "host": "h", "delays": ["2s", "4s"], "max_attempts": 9},
            {"name": "b", "host": "h"},
        ],
    }
    config = parse_config(data, environ={})
    assert config.delays_for("a") == [2, 4]
    assert config.max_attempts_for("a") == 9
    assert config.delays_for("b") == [1]
    assert config.max_attempts_for("b") == 3
    assert config.all_delays() == [1, 2, 4]


def test_load_config_reports_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[orthanc\nurl=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken)


def test_listen_and_loopback_helpers():
    assert parse_listen("127.0.0.1:8100") == ("127.0.0.1", 8100)
    assert parse_listen("[::1]:9") == ("::1", 9)
    assert is_loopback("127.0.0.2") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")


def test_mask_url_hides_the_password():
    assert mask_url("amqp://user:pw@host:5672/v") == "amqp://user:******@host:5672/v"


def test_listen_override_replaces_one_service_and_is_validated():
    config = parse_config(MINIMAL, environ={})
    second = with_listen(config, "sender", "127.0.0.1:8111")
    assert second.sender.listen == "127.0.0.1:8111"
    assert second.ingest.listen == config.ingest.listen
    with pytest.raises(ConfigError, match="--listen"):
        with_listen(config, "sender", "8111")
