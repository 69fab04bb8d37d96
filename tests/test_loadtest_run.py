"""A short load test through the real stack (Redis, Tansu, consumer and API processes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from producer.movielens import load_ratings
from producer.sources import MovieLensSource, load_interactions
from streamrec.loadtest.report import PLOTS
from streamrec.loadtest.run import LoadTestOptions, run_loadtest
from streamrec.local.stack import LocalStack

pytestmark = pytest.mark.realdata


def test_short_loadtest_writes_results_and_measures_everything(
    stack: LocalStack, movielens_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # LiveRun finds the stack through these (ports, and the pid files in its state
    # dir): it reuses the session's servers, isolated by its own topic and
    # namespace, and leaves them running.
    monkeypatch.setenv("STREAMREC_REDIS_URL", stack.redis_url)
    monkeypatch.setenv("STREAMREC_KAFKA_BOOTSTRAP", stack.bootstrap)
    monkeypatch.setenv("STREAMREC_STATE_DIR", str(stack.state_dir))
    out = tmp_path / "out"
    summary = run_loadtest(
        LoadTestOptions(
            out_dir=out,
            warmup=0.5,
            rate=300.0,
            rps=100.0,
            duration_s=8.0,
            freshness_every_s=0.2,
            # Shedding is tested on its own (test_overload.py). Here a CI box that
            # is busy with other jobs must not turn into 503s: a generous limit
            # leaves only genuine server errors to count.
            api_env={
                "STREAMREC_SERVING_MAX_IN_FLIGHT": "512",
                "STREAMREC_SERVING_MAX_WAITING": "512",
                "STREAMREC_SERVING_QUEUE_WAIT_S": "5",
            },
            progress=False,
        ),
        load_interactions(MovieLensSource(movielens_dir), limit=6000),
    )
    req = summary["requests"]
    assert req["sent"] == 800  # 100 req/s x 8 s, open loop: the schedule is fixed
    assert req["server_errors_5xx"] == 0, req["status_counts"]
    assert req["ok"] > 0 and summary["latency_ms"]["p99"] is not None
    assert summary["events_sent"] > 0
    fresh = summary["freshness_ms"]
    assert fresh["reflected"] > 0 and fresh["p50"] is not None
    # Each probe is a new one-click user, so the answer lists the probe's item as
    # its source (a probe clicking for a real user could be buried by a burst).
    assert fresh["in_sources"] == fresh["reflected"]
    assert summary["consumer_lag_events"]["samples"] > 0
    hr = summary["online_hr"]
    assert hr["evaluated"] > 0 and 0.0 <= hr["hr"] <= 1.0
    assert hr["within_session"]["evaluated"] + hr["new_session"]["evaluated"] > 0
    aligned = summary["state_aligned_hr"]
    assert aligned["evaluated"] > 0 and 0.0 <= aligned["hr"] <= 1.0

    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["requests"] == req
    # Probes go out with the replay and carry its event time: a probe before the
    # first replayed event, or dated by the wall clock, would be decades past the
    # MovieLens slice and top the trending set.
    ts = load_ratings(movielens_dir, limit=6000)["ts"][on_disk["config"]["warmup_events"] :]
    probes = on_disk["freshness_samples"]
    assert len(probes) == fresh["samples"]
    assert all(p["at"] >= 0 and int(ts.min()) <= p["ts"] <= int(ts.max()) for p in probes)
    assert all(p["user"].startswith("probe-") for p in probes)
    keys = ("latency_ms", "freshness_ms", "consumer_lag_events", "online_hr", "state_aligned_hr")
    for key in (*keys, "config"):
        assert key in on_disk
    md = (out / "summary.md").read_text()
    assert "latency p99" in md and "online HR@10" in md and "state-aligned HR@10" in md
    for name in PLOTS:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
