"""Pure pacing arithmetic, the replay summary and the progress line: no broker, no clock."""

from __future__ import annotations

import io

import pytest

from producer.progress import Progress
from producer.replay import Pacing, ReplaySummary

T0 = 1_600_000_000_000


def test_speed_scales_event_time() -> None:
    # 10x real time: an event 5 s after the first is due 0.5 s into the replay.
    assert Pacing(speed=10.0).due_time(T0 + 5_000, T0, 123) == pytest.approx(0.5)
    assert Pacing(speed=1000.0).due_time(T0 + 3_600_000, T0, 0) == pytest.approx(3.6)
    assert Pacing(speed=10.0).due_time(T0, T0, 0) == 0.0


def test_rate_spaces_events_evenly() -> None:
    # 100 events/s: event 50 is due at 0.5 s, whatever its timestamp.
    assert Pacing(rate=100.0).due_time(T0 + 999_999, T0, 50) == pytest.approx(0.5)
    assert Pacing(rate=100.0).due_time(T0, T0, 0) == 0.0


def test_unpaced_is_always_due() -> None:
    assert Pacing().due_time(T0 + 10**9, T0, 10**6) == 0.0
    assert not Pacing().paced and Pacing(rate=1).paced and Pacing(speed=2).paced


@pytest.mark.parametrize("kwargs", [{"speed": 2.0, "rate": 10.0}, {"speed": 0.0}, {"rate": -1.0}])
def test_invalid_pacing(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Pacing(**kwargs)


def test_summary_rate_and_dict() -> None:
    summary = ReplaySummary(sent=500, seconds=0.25, first_ts=T0, last_ts=T0 + 9)
    assert summary.rate == 2000.0
    assert summary.as_dict() == {
        "sent": 500,
        "failed": 0,
        "seconds": 0.25,
        "rate": 2000.0,
        "first_ts": T0,
        "last_ts": T0 + 9,
    }
    assert ReplaySummary(0, 0.0, None, None).rate == 0.0


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_line_and_throttle() -> None:
    out = _Terminal()
    bar = Progress("replay", 1000, stream=out, max_hz=5)
    bar.update(1)  # first update draws
    for n in range(2, 500):
        bar.update(n)  # within 0.2 s of the first draw: no redraw
    assert out.getvalue().count("\r") == 1
    bar.close()
    text = out.getvalue()
    assert text.endswith("\n") and text.count("\r") == 2
    assert "499/1,000" in text and "events/s" in text
    assert "ETA" in bar.line(bar._start + 1.0)  # half done after 1 s: ETA shown


def test_progress_writes_plain_lines_to_a_log() -> None:
    out = io.StringIO()  # not a terminal: no carriage returns, a line per LOG_EVERY_S
    bar = Progress("replay", 1000, stream=out, max_hz=5)
    for n in range(1, 500):
        bar.update(n)
    bar.close(1000)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(lines) == 2
    assert lines[0].startswith("replay  1/1,000") and "1,000/1,000" in lines[1]
