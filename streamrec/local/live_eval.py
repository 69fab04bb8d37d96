"""The prequential evaluation through the live stack: Kafka in, consumer, Redis, HTTP out.

Warm-up events are replayed through Kafka and applied by a real consumer
process; then, for each test event in order, the API is asked over HTTP for the
user's recommendations, the event is produced, and the next request waits until
the consumer has applied it, so every answer sees exactly the events before it
(per-event, not batched: the same order of reads and writes as in-process).

The API is asked for ``setup.request_k`` items and the answer is filtered for
every item the user rated, as the in-process loop excludes them inside blend:
the server itself only excludes the history it reads (``history_len``). Both
runs read the same trending head because ``request_k`` is what decides its
length (``ServingSettings.read_spec``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import httpx
import pandas as pd

from core.events import ClickEvent
from core.settings import settings_env
from evaluation.metrics import KS, MethodResult, SessionSplit
from evaluation.prequential import EvalSetup, Method, index_builder_for, prequential
from offline.job import build_index
from producer.client import ClickProducer
from streamrec.local.harness import LiveRun

log = logging.getLogger("streamrec.evaluate")

# The live API is asked for its largest page and the answer filtered for rated
# items client-side (the server excludes only the history it reads); the
# in-process reference reads the same trending head, as its length follows k.
LIVE_REQUEST_K = 100


def live_env(setup: EvalSetup, method: Method) -> dict[str, str]:
    """The environment that makes the live stack run ``method`` on ``setup``'s state model."""
    # A tiny poll wait: the loop waits for each single event to be applied.
    consumer = setup.consumer.model_copy(update={"poll_timeout_ms": 20})
    # Item state read per request (no worker cache): each answer must see every
    # event before it, as in process, where a cache would lag by up to its
    # staleness bound. The cache's reads and the vectorised blend are held equal
    # to this path by tests/test_state_contract.py and tests/test_scoring.py.
    serving = setup.serving.model_copy(
        update={"blend": method.cfg, "max_k": max(setup.request_k, 1), "item_staleness_s": 0.0}
    )
    fields = ["blend", "history_len", "trend_candidates", "max_k", "item_staleness_s"]
    return {
        **settings_env(consumer, ["state", "poll_timeout_ms"]),
        **settings_env(serving, fields),
    }


def live_run(
    df: pd.DataFrame,
    events: Sequence[ClickEvent],
    span: range,
    method: Method,
    setup: EvalSetup,
) -> dict[str, Any]:
    """``method`` on ``events[span]`` through Kafka, a consumer process and the HTTP API."""
    began = time.perf_counter()
    start, stop = span.start, span.stop
    result = MethodResult()
    seen: dict[str, set[str]] = {}
    sessions = SessionSplit(setup.rules)
    for e in events[:start]:
        seen.setdefault(e.user_id, set()).add(e.item_id)
        sessions.see(e)
    with LiveRun(partitions=1) as run:
        # One partition: events of different users keep their global order, as
        # in-process (co rows and trending depend on it, not only sessions).
        build_index(
            df,
            run.artifacts,
            setup.offline,
            before_ts=events[start].ts,
            catalogue=setup.catalogue,
            source="evaluate",
        )
        env = live_env(setup, method)
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
                for i in span:
                    e = events[i]
                    reply = http.get(f"/recommendations/{e.user_id}", params={"k": setup.request_k})
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
                        user=e.user_id,
                    )
                    producer.send(e)
                    producer.flush()
                    run.wait_applied(i + 1, timeout=60)
                    seen.setdefault(e.user_id, set()).add(e.item_id)
                    sessions.see(e)
    catalog = (
        setup.catalog if setup.catalog is not None else len({e.item_id for e in events[:stop]})
    )
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
    span: range,
    methods: Sequence[Method],
    setup: EvalSetup,
) -> dict[str, Any]:
    """The blend on ``events[span]``, live and in process; their relative differences."""
    method = next(m for m in methods if m.name == "blend")
    setup = replace(setup, request_k=LIVE_REQUEST_K)
    live = live_run(df, events, span, method, setup)
    ref = prequential(
        events,
        span.start,
        span.stop,
        [method],
        # One index built before the span, as the live run publishes one.
        replace(setup, index_builder=index_builder_for(df, setup.offline), reindex_every=0),
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
            "range": [span.start, span.stop],
        },
        "agreement": {"relative_difference": diff, "max": max(diff.values())},
    }
