"""The load test's outputs: results JSON, a Markdown summary, PNG plots, a console summary.

``summarise`` is pure (records in, a JSON-ready dict out); the writers only format.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from streamrec.loadtest.http import Record
from streamrec.loadtest.probes import FreshnessSample, LagSample
from streamrec.loadtest.stats import (
    NextClicks,
    latency_summary,
    online_hit_rate,
    per_second,
    state_aligned_hit_rate,
)

PLOTS = ("latency_over_time.png", "latency_histogram.png", "lag_over_time.png")


@dataclass(frozen=True)
class Observed:
    """What one measured phase recorded."""

    records: Sequence[Record]  # every lookup
    fresh: Sequence[FreshnessSample]  # freshness probes
    lag: Sequence[LagSample]  # consumer lag over time
    next_clicks: NextClicks  # the replayed clicks, for the online hit rates


@dataclass(frozen=True)
class Phase:
    """How the phase was run: its length, the page size, the session rule, its config."""

    duration_s: float
    k: int
    config: dict[str, Any] = field(default_factory=dict)
    session_gap_ms: int | None = None


def summarise(
    observed: Observed, phase: Phase, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Everything the report shows, as plain JSON values."""
    records, fresh, lag = observed.records, observed.fresh, observed.lag
    next_clicks, k, session_gap_ms = observed.next_clicks, phase.k, phase.session_gap_ms
    duration_s, config = phase.duration_s, phase.config
    n = len(records)
    ok = [r for r in records if r.status == 200]
    statuses: dict[str, int] = {}
    for r in records:
        key = "timeout_or_transport" if r.status == 0 else str(r.status)
        statuses[key] = statuses.get(key, 0) + 1
    errors = n - len(ok)
    fresh_ms = [s.ms for s in fresh if s.ms is not None]
    lags = [s.lag for s in lag]
    lookups = [(r.user, r.at + r.latency_ms / 1000.0, r.items) for r in ok]
    return {
        "config": config,
        "requests": {
            "sent": n,
            "ok": len(ok),
            "errors": errors,
            "error_rate": errors / n if n else None,
            "server_errors_5xx": sum(1 for r in records if r.status >= 500),
            # 5xx other than 503: a 503 is the server shedding or waiting out a
            # dependency as designed (with Retry-After); anything else is a failure.
            "server_failures": sum(1 for r in records if r.status >= 500 and r.status != 503),
            "status_counts": statuses,
            "throughput_rps": len(ok) / duration_s if duration_s > 0 else None,
        },
        # Latency of every request, errors included: a fast 503 is still an answer
        # the user waited for, and dropping it would flatter an overloaded run.
        "latency_ms": latency_summary([r.latency_ms for r in records]),
        "latency_ok_ms": latency_summary([r.latency_ms for r in ok]),
        # How late the generator issued requests against its schedule: near zero
        # means the generator kept up and the latencies are the server's.
        "generator_late_ms": latency_summary([r.late_ms for r in records]),
        "freshness_ms": {
            "samples": len(fresh),
            "reflected": len(fresh_ms),
            "timed_out": len(fresh) - len(fresh_ms),
            "in_sources": sum(1 for s in fresh if s.in_sources),
            **latency_summary(fresh_ms),
        },
        "consumer_lag_events": {
            "samples": len(lag),
            "max": max(lags) if lags else None,
            "mean": float(np.mean(lags)) if lags else None,
            "final": lags[-1] if lags else None,
            "series": [[round(s.at, 3), s.produced, s.applied] for s in lag],
        },
        "online_hr": online_hit_rate(lookups, next_clicks, k, session_gap_ms),
        "state_aligned_hr": state_aligned_hit_rate(
            [(r.user, r.newest, r.items) for r in ok], next_clicks, k, session_gap_ms
        ),
        **(extra or {}),
    }


def write_json(path: Path, summary: dict[str, Any]) -> None:
    path.write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))


def _f(value: Any, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def summary_lines(s: dict[str, Any]) -> list[str]:
    """The one-screen summary (console and Markdown share it)."""
    c, req, lat, fr = s["config"], s["requests"], s["latency_ms"], s["freshness_ms"]
    lag, hr = s["consumer_lag_events"], s["online_hr"]
    return [
        f"offered load     {_f(c['rps'], 0)} req/s for {_f(c['duration_s'], 0)} s, "
        f"ingest {c['ingest']}, {c['workers']} API worker(s)",
        f"requests         {_f(req['sent'])} sent, {_f(req['ok'])} ok, "
        f"{_f(req['errors'])} errors ({_f(100 * (req['error_rate'] or 0), 3)}%), "
        f"{_f(req['server_errors_5xx'])} 5xx; statuses {req['status_counts']}",
        f"throughput       {_f(req['throughput_rps'], 1)} req/s answered 200",
        f"latency (ms)     p50 {_f(lat['p50'])}  p95 {_f(lat['p95'])}  "
        f"p99 {_f(lat['p99'])}  max {_f(lat['max'])} "
        f"(generator late p99 {_f(s['generator_late_ms']['p99'])})",
        f"freshness (ms)   p50 {_f(fr['p50'])}  p99 {_f(fr['p99'])}  max {_f(fr['max'])} "
        f"({fr['reflected']}/{fr['samples']} probes reflected)",
        f"consumer lag     max {_f(lag['max'])} events, mean {_f(lag['mean'], 1)}, "
        f"final {_f(lag['final'])}",
        f"events           {_f(s.get('events_sent'))} replayed at "
        f"{_f(s.get('events_rate'), 0)} events/s",
        f"online HR@{hr['k']}     {_f(hr['hr'], 4)} "
        f"({hr['hits']} hits / {hr['evaluated']} lookups with a later click)",
        *_split_lines(hr),
        *(
            [
                f"state-aligned HR@{sa['k']} {_f(sa['hr'], 4)} ({sa['hits']} / {sa['evaluated']}: "
                "next click after the newest one the answer's state held)",
                *_split_lines(sa),
            ]
            if (sa := s.get("state_aligned_hr"))
            else []
        ),
    ]


def _split_lines(hr: dict[str, Any]) -> list[str]:
    """Console lines of a hit rate's session split."""
    return [
        f"  {label:<14} {_f(part['hr'], 4)} ({part['hits']} / {part['evaluated']})"
        for label, part in _hr_parts(hr)
    ]


def _hr_rows(name: str, hr: dict[str, Any]) -> list[str]:
    """Markdown rows of one hit rate and its session split."""
    k = hr["k"]
    rows = [f"| {name} HR@{k} | {_f(hr['hr'], 4)} ({hr['hits']} / {hr['evaluated']}) |"]
    for label, part in _hr_parts(hr):
        rows.append(
            f"| {name} HR@{k}, {label} | {_f(part['hr'], 4)} "
            f"({part['hits']} / {part['evaluated']}) |"
        )
    return rows


def _hr_parts(hr: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The session split of a hit rate, when it was computed."""
    parts = ("within_session", "new_session")
    return [(key.replace("_", " "), hr[key]) for key in parts if key in hr]


def write_markdown(path: Path, s: dict[str, Any], command: str) -> None:
    lines = [
        "# streamrec load test",
        "",
        f"Command: `{command}`",
        "",
        "```",
        *summary_lines(s),
        "```",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for key in ("p50", "p95", "p99", "max"):
        lines.append(f"| latency {key} (ms) | {_f(s['latency_ms'][key])} |")
    for key in ("p50", "p99"):
        lines.append(f"| freshness {key} (ms) | {_f(s['freshness_ms'][key])} |")
    lines += [
        f"| error rate | {_f(s['requests']['error_rate'], 5)} |",
        f"| throughput (req/s) | {_f(s['requests']['throughput_rps'], 1)} |",
        f"| max consumer lag (events) | {_f(s['consumer_lag_events']['max'])} |",
        *_hr_rows("online", s["online_hr"]),
        *(_hr_rows("state-aligned", sa) if (sa := s.get("state_aligned_hr")) else []),
        "",
        *(f"![{name}]({name})" for name in PLOTS),
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")


def write_plots(out_dir: Path, records: Sequence[Record], lag: Sequence[LagSample]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")  # files only; never a display
    import matplotlib.pyplot as plt

    at = np.asarray([r.at for r in records])
    ms = np.asarray([r.latency_ms for r in records])
    paths = [out_dir / name for name in PLOTS]

    fig, ax = plt.subplots(figsize=(8, 4))
    ax.scatter(at, ms, s=2, alpha=0.3, label="request")
    for q in (50, 99):
        t, v = per_second(at, ms, q)
        ax.plot(t + 0.5, v, label=f"p{q} per second")
    ax.set(xlabel="time (s)", ylabel="latency (ms)", yscale="log", title="Request latency")
    ax.legend()
    fig.tight_layout()
    fig.savefig(paths[0], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4))
    if ms.size:
        bins = np.logspace(np.log10(max(ms.min(), 0.1)), np.log10(max(ms.max(), 1.0)), 60)
        ax.hist(ms, bins=bins.tolist())
    ax.set(xlabel="latency (ms)", ylabel="requests", xscale="log", title="Latency histogram")
    fig.tight_layout()
    fig.savefig(paths[1], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot([s.at for s in lag], [s.lag for s in lag])
    ax.set(xlabel="time (s)", ylabel="events produced, not yet applied", title="Consumer lag")
    fig.tight_layout()
    fig.savefig(paths[2], dpi=100)
    plt.close(fig)
    return paths
