"""Send windows: days, overnight ranges, several windows, time zones, the next change."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from sendqueue.shared.send_window import SendWindow

PARIS = "Europe/Paris"


def at(text: str, zone: str = "UTC") -> datetime:
    """An aware time; 2026-12-07 is a Monday."""
    from zoneinfo import ZoneInfo

    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone))


def test_an_overnight_window_belongs_to_the_day_it_opens():
    night = SendWindow.parse("Mon-Fri 19:00-07:00", "UTC")
    assert not night.is_open(at("2026-12-07 03:00"))  # Monday night before: Sunday's, none
    assert not night.is_open(at("2026-12-07 18:59:59"))
    assert night.is_open(at("2026-12-07 19:00"))
    assert night.is_open(at("2026-12-08 06:59"))  # Tuesday morning: Monday's window
    assert not night.is_open(at("2026-12-08 07:00"))
    assert night.is_open(at("2026-12-12 06:00"))  # Saturday morning: Friday's window
    assert not night.is_open(at("2026-12-12 19:30"))


def test_several_windows_day_lists_wrapping_ranges_and_whole_days():
    window = SendWindow.parse(["Mon-Fri 19:00-07:00", "Sat,Sun 00:00-24:00"], "UTC")
    assert window.is_open(at("2026-12-13 12:00"))  # Sunday
    assert window.is_open(at("2026-12-12 03:00"))  # Saturday: Friday's night, then the weekend
    # Monday 03:00: the weekend ended at midnight, Monday's night opens at 19:00
    assert not window.is_open(at("2026-12-14 03:00"))
    assert window.next_change(at("2026-12-11 20:00")) == at("2026-12-14 00:00")
    weekend = SendWindow.parse("Fri-Mon 10:00-11:00", "UTC")
    assert [weekend.is_open(at(f"2026-12-{d:02d} 10:30")) for d in range(7, 14)] == [
        True, False, False, False, True, True, True,
    ]  # fmt: skip
    assert SendWindow.parse("08:00:30-08:00:40", "UTC").is_open(at("2026-12-09 08:00:35"))


def test_the_next_change_is_the_next_opening_or_closing():
    night = SendWindow.parse("Mon-Fri 19:00-07:00", "UTC")
    assert night.next_change(at("2026-12-07 12:00")) == at("2026-12-07 19:00")
    assert night.next_change(at("2026-12-07 20:00")) == at("2026-12-08 07:00")
    # Saturday 07:00 closes Friday's window; the next opening is Monday 19:00
    assert night.next_change(at("2026-12-12 08:00")) == at("2026-12-14 19:00")
    # adjacent windows make one: the change is where the union ends
    joined = SendWindow.parse(["10:00-11:00", "11:00-12:00"], "UTC")
    assert joined.next_change(at("2026-12-07 10:30")) == at("2026-12-07 12:00")


def test_times_are_wall_clock_in_the_named_zone():
    paris = SendWindow.parse("Mon-Fri 19:00-07:00", PARIS)
    # 18:30 UTC on a December Monday is 19:30 in Paris
    assert paris.is_open(datetime(2026, 12, 7, 18, 30, tzinfo=UTC))
    assert paris.next_change(datetime(2026, 12, 7, 12, 0, tzinfo=UTC)) == at(
        "2026-12-07 19:00", PARIS
    )
    # across a daylight-saving change it still opens at 19:00 local
    summer = paris.next_change(datetime(2026, 3, 30, 12, 0, tzinfo=UTC))
    assert summer.astimezone(UTC) == datetime(2026, 3, 30, 17, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("19:00", "is not"),
        ("Mon-Fry 19:00-07:00", "'mon-fry' is not a day"),
        ("25:00-07:00", "is not a time of day"),
        ("07:00-07:00", "opens and closes at the same time"),
        ("24:00-07:00", "cannot open at 24:00"),
    ],
)
def test_a_malformed_window_is_an_error_naming_it(spec, message):
    with pytest.raises(ValueError, match=message):
        SendWindow.parse(spec, "UTC")


def test_an_unknown_zone_is_an_error():
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
        SendWindow.parse("19:00-07:00", "Mars/Olympus")
