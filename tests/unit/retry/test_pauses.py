"""The pause state: the retry service starts while RabbitMQ blocks publishers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sendqueue.services.retry import pauses as pauses_module
from sendqueue.services.retry.pauses import PauseStore
from sendqueue.shared.schemas import ControlState, decode_control
from sendqueue.shared.topology import Names
from tests.unit.fakes import FakePublisher, eventually

pytestmark = pytest.mark.timeout(10)

NAMES = Names("t")


@pytest.fixture(autouse=True)
def broker_state(monkeypatch) -> list[ControlState | None]:
    """What the control state queue holds (nothing unless a test puts something)."""
    held: list[ControlState | None] = [None]

    async def latest(_connection: object, _names: Names) -> ControlState | None:
        return held[0]

    monkeypatch.setattr(pauses_module, "latest_control_state", latest)
    return held


def _store(tmp_path: Path, publisher: FakePublisher, paused: list[str]) -> PauseStore:
    (tmp_path / "paused.json").write_text(json.dumps({"paused": paused}))
    return PauseStore(str(tmp_path), NAMES, publisher)  # type: ignore[arg-type]


async def test_loading_returns_while_the_broker_refuses_the_broadcast(tmp_path, monkeypatch):
    # Given a broker that refuses every publish (a memory or disk alarm)
    monkeypatch.setattr(pauses_module, "_RETRY_FIRST", 0.01)
    publisher = FakePublisher()
    publisher.refuse()
    store = _store(tmp_path, publisher, ["pacs"])

    # When the pause state is loaded at start-up
    await store.load(connection=None)

    # Then loading returns at once, with the state known
    assert store.paused == {"pacs"}
    assert publisher.to(NAMES.control_exchange) == []

    # And the broadcast goes out once the broker confirms again
    publisher.confirm()
    await eventually(lambda: len(publisher.to(NAMES.control_exchange)) == 1)
    [sent] = publisher.to(NAMES.control_exchange)
    assert decode_control(sent.body).paused == ["pacs"]
    await store.close()


async def test_an_operator_change_supersedes_the_start_up_broadcast(tmp_path, monkeypatch):
    monkeypatch.setattr(pauses_module, "_RETRY_FIRST", 0.01)
    publisher = FakePublisher()
    publisher.refuse(3)
    store = _store(tmp_path, publisher, ["pacs"])
    await store.load(connection=None)
    await eventually(lambda: publisher._refusals == 0)
    # the start-up broadcast got through after three refusals, or the change below
    # supersedes it: either way the newest state is the last one sent
    await store.set("ris", True)
    await store.close()
    last = publisher.to(NAMES.control_exchange)[-1]
    assert decode_control(last.body).paused == ["pacs", "ris"]


async def test_the_brokers_state_wins_over_this_hosts_file(tmp_path, broker_state):
    # Given a file of an earlier term on this host, and a newer state in RabbitMQ (written
    # by a retry process on another host)
    broker_state[0] = ControlState(paused=["ris"])
    publisher = FakePublisher()
    store = _store(tmp_path, publisher, ["pacs"])
    # When a take-over loads the pause state, then RabbitMQ's is the one
    await store.load(connection=None)
    assert store.paused == {"ris"}
    await eventually(lambda: len(publisher.to(NAMES.control_exchange)) == 1)
    await store.close()
