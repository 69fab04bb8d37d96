"""Loading the embedding index and hot-swapping it when a new version is published.

The swap is a single reference assignment on the event loop thread: a request
reads ``state.index`` once and keeps that object to the end, so in-flight
requests finish on the old index and none fails during a swap. Loading (file
reads, FAISS deserialisation) runs in a worker thread so the loop keeps serving.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import IndexNotFound
from offline.index import ItemIndex, current_version, load_current
from serving.ranker import ranker_of

if TYPE_CHECKING:
    from serving.state import AppState

log = logging.getLogger(__name__)


def _load_or_none(artifacts_dir: Path, hot: list[str], k: int, ranked: bool) -> ItemIndex | None:
    try:
        index = load_current(artifacts_dir)
    except IndexNotFound as exc:
        log.warning("%s", exc)  # says which: nothing published, or unreadable
        return None
    _warm(index, hot, k, ranked)
    return index


def _load_warm(artifacts_dir: Path, hot: list[str], k: int, ranked: bool) -> ItemIndex:
    index = load_current(artifacts_dir)
    _warm(index, hot, k, ranked)
    return index


def _warm(index: ItemIndex, hot: list[str], k: int, ranked: bool) -> None:
    """Fill the index's neighbour cache for the hot items, before any request sees it.

    Runs in the loader thread: one batched FAISS search here instead of a cold
    search inside the first requests after every swap.
    """
    if hot:
        # Coldest first: the cache evicts the least recently inserted, so when
        # the list outgrows it the hottest items are the ones that stay.
        index.similar_many(hot[::-1], k)
    index.content  # noqa: B018 - builds the content neighbours here, not in a request
    # The learned ranker's trees, parsed and (where the API ranks with them)
    # compiled here; a version whose model does not parse fails to load
    # (ValueError) and the current one stays.
    ranker_of(index, compile=ranked)


async def _hot_items(state: AppState) -> list[str]:
    try:
        return await asyncio.wait_for(
            state.store.hot_items(state.settings.warm_items), state.settings.request_timeout_s
        )
    except Exception:
        # Warming is an optimisation: without Redis the index still loads, cold.
        log.warning("could not read the trending items to warm the index cache", exc_info=True)
        return []


async def load_initial(state: AppState) -> None:
    """Load the current index if there is one; otherwise say loudly that embeddings are off."""
    artifacts = state.settings.artifacts_dir
    hot = await _hot_items(state)
    try:
        index = await asyncio.to_thread(
            _load_or_none,
            artifacts,
            hot,
            state.settings.blend.candidates_per_item,
            state.settings.ranker,
        )
    except Exception:
        # A corrupt artifact must not keep the API down: co-occurrence and
        # trending still work. The poller retries on the next published version.
        log.exception("embedding index in %s failed to load", artifacts)
        state.metrics.index_failed()
        index = None
    if index is None:
        log.warning(
            "no embedding index in %s: serving without the embedding signal "
            "(co-occurrence and trending only) until one is published",
            artifacts,
        )
        return
    state.index = index
    state.metrics.index_loaded(index.version, _built_ts(index), len(index), swap=False)
    log.info("embedding index %s loaded (%d items)", index.version, len(index))


async def poll_once(state: AppState) -> bool:
    """Swap in the published index if its version differs from the one held. True if swapped."""
    artifacts = state.settings.artifacts_dir
    version = await asyncio.to_thread(current_version, artifacts)
    held = state.index
    if version is None or (held is not None and held.version == version):
        return False
    if version == state.failed_version:
        return False  # already logged; wait for the next publish instead of retrying
    hot = await _hot_items(state)
    try:
        new = await asyncio.to_thread(
            _load_warm,
            artifacts,
            hot,
            state.settings.blend.candidates_per_item,
            state.settings.ranker,
        )
    except IndexNotFound:
        if await asyncio.to_thread(current_version, artifacts) != version:
            return False  # replaced between the two calls; the next poll sees the new one
        # Still current yet unreadable: a broken artifact. Same handling as below.
        state.failed_version = version
        state.metrics.index_failed()
        log.exception("embedding index %s is unreadable; keeping the current index", version)
        return False
    except Exception:
        state.failed_version = version
        state.metrics.index_failed()
        log.exception("embedding index %s failed to load; keeping the current index", version)
        return False
    if held is not None and new.version == held.version:
        return False
    state.index = new
    state.metrics.index_loaded(new.version, _built_ts(new), len(new), swap=True)
    # The new index's objects are long-lived: keep them out of full collections
    # too (serving.app.settle_heap; freeze alone, as a collect would stall the loop).
    gc.freeze()
    log.info(
        "embedding index swapped: %s -> %s (%d items)",
        None if held is None else held.version,
        new.version,
        len(new),
    )
    return True


async def watch(state: AppState) -> None:
    """Poll forever (until cancelled); a failed load is logged and retried, never fatal."""
    interval = state.settings.index_poll_s
    while True:
        await asyncio.sleep(interval)
        try:
            await poll_once(state)
        except asyncio.CancelledError:
            raise
        except Exception:
            state.metrics.index_failed()
            log.exception("embedding index poll failed; keeping the current index")


def _built_ts(index: ItemIndex) -> float | None:
    """The index's build time as epoch seconds (None: its manifest does not say)."""
    try:
        return datetime.fromisoformat(index.manifest.built_at).timestamp()
    except (AttributeError, TypeError, ValueError):
        return None
