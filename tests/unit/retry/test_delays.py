"""The per-destination count of jobs waiting in delay tiers (a small SQLite file)."""

from __future__ import annotations

import sqlite3
from contextlib import closing

import pytest

from sendqueue.services.retry import delays as ledger_module
from sendqueue.services.retry.delays import DelayLedger


@pytest.fixture
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(ledger_module.time, "time", lambda: now[0])
    return now


def test_counts_by_tier_until_each_job_leaves(tmp_path, clock):
    ledger = DelayLedger(tmp_path / "delays.sqlite3")
    ledger.add("pacs", "10s", 10)
    ledger.add("pacs", "10s", 11)
    ledger.add("pacs", "1m", 60)
    ledger.add("archive", "10s", 10)
    assert ledger.waiting("pacs") == {"10s": 2, "1m": 1}
    clock[0] += 10.5
    assert ledger.waiting("pacs") == {"10s": 1, "1m": 1}
    assert ledger.waiting("archive") == {}
    clock[0] += 60
    assert ledger.waiting("pacs") == {}
    ledger.close()


def test_a_reopened_ledger_keeps_what_has_not_left_yet(tmp_path, clock):
    ledger = DelayLedger(tmp_path / "delays.sqlite3")
    ledger.add("pacs", "10s", 10)
    ledger.add("pacs", "1m", 60)
    ledger.close()
    clock[0] += 30
    reopened = DelayLedger(tmp_path / "delays.sqlite3")
    assert reopened.waiting("pacs") == {"1m": 1}
    reopened.close()
    # the job that left was dropped from the file too
    with closing(sqlite3.connect(tmp_path / "delays.sqlite3")) as db:
        assert db.execute("SELECT count(*) FROM leaving").fetchone() == (1,)


def test_a_job_removed_early_leaves_the_count_and_the_file(tmp_path, clock):
    ledger = DelayLedger(tmp_path / "delays.sqlite3")
    ledger.add("pacs", "10s", 10)
    ledger.add("pacs", "10s", 12)
    ledger.add("archive", "10s", 10)
    ledger.remove("pacs", "10s")
    ledger.remove("pacs", "1m")  # none there: nothing happens
    assert ledger.waiting("pacs") == {"10s": 1}
    ledger.close()
    reopened = DelayLedger(tmp_path / "delays.sqlite3")
    assert reopened.waiting("pacs") == {"10s": 1}
    assert reopened.waiting("archive") == {"10s": 1}
    reopened.close()
