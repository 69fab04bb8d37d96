"""The prequential evaluation through the live stack: Kafka in, consumer, Redis, HTTP out.

Warm-up events are replayed through Kafka and applied by a real consumer
process; then, for each test event in order, the API is asked over HTTP for the
user's recommendations, the event is produced, and the next request waits until
the consumer has applied it, so every answer sees exactly the events before it
(per-event, not batched: the same order of reads and writes as in-process).

The API is asked for ``read.request_k`` items and the answer is filtered for
every item the user rated, as the in-process loop excludes them inside blend:
the server itself only excludes the history it reads (``history_len``). Both
runs read the same trending head because ``read.request_k`` is what decides its
length (``ServingSettings.trend_fetch``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from typing import Any

import httpx
import pandas as pd

from consumer.logic import SessionRules
from consumer.store import StoreConfig
from core.events import ClickEvent
from offline.evaluate import (
    KS,
    Method,
    MethodResult,
    ReadSpec,
    SessionSplit,
    index_builder_for,
    prequential,
)
from offline.job import build_index

log = logging.getLogger("streamrec.evaluate")


def _env(rules: SessionRules, store: StoreConfig, read: ReadSpec, method: Method) -> dict[str, str]:
    """Consumer and serving settings that make the live stack run ``method`` on these rules."""
    env = {
        "STREAMREC_CONSUMER_SESSION_GAP_MS": str(rules.gap_ms),
        "STREAMREC_CONSUMER_PAIR_WINDOW": str(rules.pair_window),
        "STREAMREC_CONSUMER_HISTORY_LEN": str(rules.history_len),
        "STREAMREC_CONSUMER_LINEAR_PAIR_WEIGHTS": str(rules.linear_pair_weights).lower(),
        "STREAMREC_CONSUMER_FORWARD_WEIGHT": str(rules.forward_weight),
        "STREAMREC_CONSUMER_CO_TOP_M": str(store.co_top_m),
        "STREAMREC_CONSUMER_POP_MAX": str(store.pop_max),
        "STREAMREC_CONSUMER_TREND_HALF_LIFE_MS": str(store.half_life_ms),
        # A tiny poll wait: the loop waits for each single event to be applied.
        "STREAMREC_CONSUMER_POLL_TIMEOUT_MS": "20",
        "STREAMREC_SERVING_HISTORY_LEN": str(read.history_len),
        "STREAMREC_SERVING_TREND_CANDIDATES": str(read.trend_candidates),
        "STREAMREC_SERVING_MAX_K": str(max(read.request_k, 1)),
    }
    for name, value in asdict(method.cfg).items():
        env[f"STREAMREC_SERVING_BLEND__{name.upper()}"] = str(value)
    return env


def live_run(
    df: pd.DataFrame,
    events: Sequence[ClickEvent],
    start: int,
    stop: int,
    method: Method,
    *,
    rules: SessionRules,
    store: StoreConfig,
    read: ReadSpec,
    dim: int,
    catalog: int,
) -> dict[str, Any]:
    from producer.client import ClickProducer
    from streamrec.harness import LiveRun

    began = time.perf_counter()
    result = MethodResult()
    seen: dict[str, set[str]] = {}
    sessions = SessionSplit(rules)
    for e in events[:start]:
        seen.setdefault(e.user_id, set()).add(e.item_id)
        sessions.see(e)
    with LiveRun(partitions=1) as run:
        # One partition: events of different users keep their global order, as
        # in-process (co rows and trending depend on it, not only sessions).
        build_index(df, run.artifacts, dim=dim, before_ts=events[start].ts, source="evaluate")
        env = _env(rules, store, read, method)
        run.start_consumer(extra_env=env)
        api = run.start_api(extra_env=env)
        with ClickProducer(run.kafka) as producer:
            for e in events[:start]:
                producer.send(e)
            producer.flush()
            run.wait_applied(start, timeout=600)
            log.info(
                "live warm-up: %d events applied in %.0f s", start, time.perf_counter() - began
            )
            with httpx.Client(base_url=api, timeout=10) as http:
                for i in range(start, stop):
                    e = events[i]
                    reply = http.get(f"/recommendations/{e.user_id}", params={"k": read.request_k})
                    reply.raise_for_status()
                    body = reply.json()
                    user_seen = seen.get(e.user_id, set())
                    ids = [it["item_id"] for it in body["items"] if it["item_id"] not in user_seen]
                    ids = ids[: max(KS)]
                    result.add(
                        ids,
                        e.item_id,
                        bool(body["fallback"]),
                        cold=not body["sources"],
                        new_session=sessions.starts_session(e),
                    )
                    producer.send(e)
                    producer.flush()
                    run.wait_applied(i + 1, timeout=60)
                    seen.setdefault(e.user_id, set()).add(e.item_id)
                    sessions.see(e)
    return {
        "methods": {method.name: result.summary(catalog)},
        "predictions": stop - start,
        "seconds": round(time.perf_counter() - began, 1),
        "range": [start, stop],
    }


def agreement(live: dict[str, Any], ref: dict[str, Any]) -> dict[str, float]:
    """Relative difference live vs in-process for each headline metric (0.01 = 1%)."""
    out: dict[str, float] = {}
    for key in [f"{m}@{k}" for m in ("hr", "mrr", "ndcg") for k in KS]:
        a, b = float(live[key]), float(ref[key])
        out[key] = 0.0 if a == b else abs(a - b) / max(abs(b), 1e-12)
    return out


def live_compare(
    df: pd.DataFrame,
    events: Sequence[ClickEvent],
    start: int,
    stop: int,
    *,
    methods: Sequence[Method],
    rules: SessionRules,
    store: StoreConfig,
    read: ReadSpec,
    dim: int,
    catalog: int,
) -> dict[str, Any]:
    """The blend on events[start:stop], live and in process; their relative differences."""
    method = next(m for m in methods if m.name == "blend")
    # The server excludes only the history it reads, so ask for its largest
    # page and filter rated items client-side; the reference reads the same
    # trending head (its length follows request_k), so both rank alike.
    read = replace(read, request_k=100)
    live = live_run(
        df,
        events,
        start,
        stop,
        method,
        rules=rules,
        store=store,
        read=read,
        dim=dim,
        catalog=catalog,
    )
    ref = prequential(
        events,
        start,
        stop,
        [method],
        rules=rules,
        store=store,
        read=read,
        index_builder=index_builder_for(df, dim=dim),
        catalog=catalog,
    )
    diff = agreement(live["methods"]["blend"], ref.methods["blend"])
    return {
        "live": {
            **live,
            "note": (
                "Live: events through Kafka (one partition), a consumer process, Redis and "
                "GET /recommendations over HTTP; each answer waits for every earlier event "
                "to be applied. In-process: the same events through fold + MemoryState + blend."
            ),
        },
        "live_reference": {
            "methods": ref.methods,
            "predictions": ref.predictions,
            "range": [start, stop],
        },
        "agreement": {"relative_difference": diff, "max": max(diff.values())},
    }
