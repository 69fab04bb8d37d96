"""The learned ranker: re-orders the blend's candidates by a model of their features.

The hand-tuned blend (``serving.blend``) stays the first stage and the
fallback. The ranker takes its pool, the blend's best ``pool`` items (trending
filler included when the personal ones run short) plus the trending head's
best ``trend_extra`` items not already in it, so a return visit can be
answered from what is popular now, and scores each pooled item from the
features below with a gradient-boosted tree model (LightGBM, logistic
objective) that ``streamrec build-index`` trains on a replayed stream
(``evaluation.ranker``) and ships in the index version.

Features of one candidate ``c`` for one request (``FEATURES``, in order):

- the blend's own view: its score, the item's position in the pool, whether
  it was personal, the kind of its reason;
- co-occurrence: Σ_p decay**p · co(s_p, c) / max co(s_p, ·) over the user's
  sources (damped as the blend damps), the largest of those normalised values,
  the largest raw count (log), the newest source holding it and its best
  rank in any source's row, and how many sources hold it;
- embedding: the decayed sum and the largest cosine, the newest source;
- content: the decayed sum of content cosines (cold candidates);
- the session linear model (``offline.linear``, rows shipped in the index
  version): the decayed sum of each source row's weight over that row's
  largest, the largest raw weight, the newest source holding it and its best
  rank in any source's row;
- trending: its prior (score / top) and its rank in the head;
- popularity: log of its all-time count where the read holds it;
- age: log seconds from its first click in the index version's build to now
  (NaN for an item first clicked after the build: newer than the index);
- the user and the moment: history entries read, sources, log seconds since
  the newest entry (a return visit has a long one), whether this request
  starts a new session (that gap over the session gap), how many entries
  the current session holds, how many earlier visits (sessions) the history
  holds and what share of them began with an item in today's trending head
  (a user who starts visits with what is popular is served best by it then).

A missing value (an item in no co row has no co rank) is NaN, which the trees
route on their own. Nothing here does I/O. The evaluation calls ``Ranker.rank``
on the reference's ``Candidates``; the API builds the same pool with the fast
blend and the same matrix from its item cache's arrays
(``serving.ranker_fast.fast_features``, equal to :func:`features` value for
value: tests/test_ranker_fast.py), then ``Ranker.order``, as ``rank`` does.

The trees are scored by native code compiled from the model (lleaves, LLVM)
once per loaded model, ~4x LightGBM's own predict on a request's ~130 rows
(benchmarks/ranker_cost.py). Compiling costs seconds of CPU, so the object
code is kept in the index version's directory, named by what it was compiled
from and for (the model, lleaves and llvmlite, the host CPU) and by its own
digest, which is checked before it loads (~10 ms): ``build-index`` compiles
once, and each API worker that loads the version, at start or at a swap,
reads it; where compiling fails, LightGBM predicts. The two agree within 1e-12
(tests/test_ranker.py, property test), so the ranked lists are the same.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import threading
import weakref
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from offline.index import ItemIndex
from serving.blend import (
    CO_CLICKED,
    SAME_CATEGORY,
    SIMILAR,
    TRENDING,
    BlendConfig,
    Candidates,
    Reason,
    Scored,
    blend,
    fill_with_trending,
    scaled_co,
    trend_norms,
)
from serving.history import sessions

if TYPE_CHECKING:
    import lightgbm

log = logging.getLogger("streamrec.serving")

FEATURES: Final = (
    "blend_score",
    "blend_position",
    "personalised",
    "reason",
    "co_sum",
    "co_max",
    "co_log_count",
    "co_source",
    "co_rank",
    "co_sources",
    "emb_sum",
    "emb_max",
    "emb_source",
    "content_sum",
    "lin_sum",
    "lin_max",
    "lin_source",
    "lin_rank",
    "trend",
    "trend_rank",
    "log_pop",
    "log_age_s",
    "history_len",
    "n_sources",
    "log_gap_s",
    "new_session",
    "session_len",
    "visits",
    "start_trend",
)
REASON_CODE: Final = {CO_CLICKED: 0.0, SIMILAR: 1.0, SAME_CATEGORY: 2.0, TRENDING: 3.0}
NAN: Final = math.nan


@dataclass(frozen=True, slots=True)
class Moment:
    """When a request is made and what the user's history says about it.

    "Now" is the stream clock (the largest event time the state holds), which
    the evaluation and the server both know, so a replay of old events and a
    live stream look alike to the model; never before the user's newest entry.
    """

    now_ms: int
    history: Sequence[tuple[int, str]]  # (ts_ms, item), newest first
    session_gap_ms: int

    @classmethod
    def of(
        cls, clock: int | None, history: Sequence[tuple[int, str]], session_gap_ms: int
    ) -> Moment:
        stamps = [t for t in (clock, history[0][0] if history else None) if t is not None]
        return cls(max(stamps, default=0), history, session_gap_ms)


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """How many of the blend's items the ranker re-orders: the blend's best 100
    hold the next click about twice as often as its best 10 on ml-latest-small's
    validation part; the 30 trending extras are there for return visits."""

    pool: int = 100
    trend_extra: int = 30
    # Then up to this many of the linear model's best items not in the pool yet.
    linear_extra: int = 0


def candidate_pool(
    cands: Candidates,
    exclude: Collection[str],
    cfg: BlendConfig,
    size: PoolConfig,
    allow: Callable[[str], bool] | None = None,
) -> list[Scored]:
    """The blend's best ``size.pool`` items, then up to ``size.trend_extra`` more
    from the trending head (as the blend's filler, best first); ``allow`` as in
    the blend (a request's category rule)."""
    return extend_pool(
        blend(cands, exclude, size.pool, cfg, allow), cands, exclude, cfg, size, allow
    )


def extend_pool(
    first: list[Scored],
    cands: Candidates,
    exclude: Collection[str],
    cfg: BlendConfig,
    size: PoolConfig,
    allow: Callable[[str], bool] | None = None,
    trend_norm: Mapping[str, float] | None = None,
) -> list[Scored]:
    """``first`` (the blend's best ``size.pool``, from either scorer), the
    trending extras after it, then the linear model's. ``trend_norm``: the
    trending list's ``trend_norms`` where the caller holds them already."""
    if size.trend_extra <= 0 and size.linear_extra <= 0:
        return first
    banned = set(exclude)
    banned.update(cands.sources)
    out = list(first)
    if size.trend_extra > 0:
        norm = trend_norms(cands.trending) if trend_norm is None else trend_norm
        want = len(first) + size.trend_extra
        out = fill_with_trending(out, cands.trending, norm, banned, want, cfg.w_trend, allow)
    if size.linear_extra > 0 and cands.linear:
        banned.update(s.item_id for s in out)
        out.extend(linear_extras(cands, banned, size.linear_extra, cfg, allow))
    return out


def linear_extras(
    cands: Candidates,
    banned: Collection[str],
    n: int,
    cfg: BlendConfig,
    allow: Callable[[str], bool] | None = None,
) -> list[Scored]:
    """The ``n`` best items by the linear model's decayed, row-normalised sum over
    the sources (ties on item id), none of ``banned``; each explained by the
    source of its largest term (co-clicked: the model is fitted on sessions).
    Their score is 0: the blend did not score them."""
    total: dict[str, float] = {}
    best: dict[str, tuple[float, str]] = {}
    for p, _, item, _, term in linear_terms(cands, cfg):
        if item in banned:
            continue
        total[item] = total.get(item, 0.0) + term
        if term > best.get(item, (0.0, ""))[0]:
            best[item] = (term, cands.sources[p])
    ranked = sorted(total, key=lambda item: (-total[item], item))
    if allow is not None:
        ranked = [item for item in ranked if allow(item)]
    return [Scored(item, 0.0, Reason(CO_CLICKED, best[item][1])) for item in ranked[:n]]


def linear_terms(
    cands: Candidates, cfg: BlendConfig
) -> Iterator[tuple[int, int, str, float, float]]:
    """(source position, rank in its row, item, weight, weight over the row's
    largest times the source's recency decay) of every positive weight in the
    sources' linear rows (their first ``candidates_per_item``)."""
    for p, src in enumerate(cands.sources):
        row = list(cands.linear.get(src, ()))[: cfg.candidates_per_item]
        top = row[0][1] if row else 0.0
        if top <= 0:
            continue
        recency = cfg.recency_decay**p
        for rank, (item, weight) in enumerate(row):
            if weight > 0:
                yield p, rank, item, weight, recency * weight / top


def features(
    cands: Candidates, pool: Sequence[Scored], moment: Moment, cfg: BlendConfig
) -> np.ndarray:
    """The ``len(pool)`` x ``len(FEATURES)`` matrix of the pooled items' features.

    Built as Python lists and converted once: indexing a numpy array element by
    element costs several times a list's, and a request walks ~1,000 entries."""
    if not pool:
        return np.zeros((0, len(FEATURES)), dtype=np.float64)
    user = user_features(moment, len(cands.sources), (item for item, _ in cands.trending))
    # One row per pooled item, every column at its "absent" value (see FEATURES).
    rows = [
        [s.score, float(i), float(s.personalised), REASON_CODE[s.reason.kind],
         0.0, 0.0, NAN, NAN, NAN, 0.0, 0.0, 0.0, NAN, 0.0, 0.0, 0.0, NAN, NAN,
         0.0, NAN, NAN, NAN, *user]
        for i, s in enumerate(pool)
    ]  # fmt: skip
    at = {s.item_id: row for s, row in zip(pool, rows, strict=True)}
    per_item = cfg.candidates_per_item
    pop = cands.popularity
    damping = cfg.pop_damping > 0
    for p, src in enumerate(cands.sources):
        recency = cfg.recency_decay**p
        co_row = cands.co.get(src, ())[:per_item]
        if co_row:
            raw = dict(co_row)
            pop_get = pop.get if damping and pop is not None else None
            co_row, scale = scaled_co(co_row, pop_get, cfg.pop_damping)
            if scale > 0:
                for rank, (item, value) in enumerate(co_row):
                    r = at.get(item)
                    if r is None or not value > 0:  # NaN (a degenerate row) counts as absent
                        continue
                    norm = value / scale
                    r[4] += recency * norm
                    if norm > r[5]:
                        r[5] = norm
                    count = math.log1p(raw[item])
                    if not count <= r[6]:  # NaN compares False: the first one sets it
                        r[6] = count
                    if math.isnan(r[7]):
                        r[7] = float(p)
                    if not rank >= r[8]:
                        r[8] = float(rank)
                    r[9] += 1.0
        for item, cos in list(cands.emb.get(src, ()))[:per_item]:
            r = at.get(item)
            if r is None or not cos > 0:  # so does a NaN cosine (a zero vector)
                continue
            r[10] += recency * cos
            if cos > r[11]:
                r[11] = cos
            if math.isnan(r[12]):
                r[12] = float(p)
        for item, cos in list(cands.content.get(src, ()))[:per_item]:
            r = at.get(item)
            if r is not None and cos > 0:
                r[13] += recency * cos
    for p, rank, item, weight, term in linear_terms(cands, cfg):
        r = at.get(item)
        if r is None:
            continue
        r[14] += term
        if weight > r[15]:
            r[15] = weight
        if math.isnan(r[16]):
            r[16] = float(p)
        if not rank >= r[17]:
            r[17] = float(rank)
    norm_trend = trend_norms(cands.trending)
    for rank, (item, _) in enumerate(cands.trending):
        r = at.get(item)
        if r is not None:
            r[18] = norm_trend.get(item, 0.0)
            r[19] = float(rank)
    if pop is not None:
        for item, r in at.items():
            known = pop.get(item)
            if known is not None:
                r[20] = math.log1p(max(known, 0.0))
    if cands.first_seen:
        first_seen, now = cands.first_seen, moment.now_ms
        for item, r in at.items():
            first = first_seen.get(item)
            if first is not None:
                r[21] = math.log1p(max(now - first, 0) / 1000.0)
    return np.array(rows, dtype=np.float64)


def user_features(moment: Moment, n_sources: int, head: Iterable[str]) -> list[float]:
    """The request's columns (history_len .. start_trend); ``head``: the trending
    head's items."""
    history = moment.history
    if not history:
        return [0.0, float(n_sources), NAN, 1.0, 0.0, 0.0, NAN]
    gap_ms = max(moment.now_ms - history[0][0], 0)
    new = gap_ms > moment.session_gap_ms
    cut = sessions(history, moment.session_gap_ms)
    # This request continues the user's newest session unless it starts one.
    session = 0 if new else len(cut[0])
    earlier = cut if new else cut[1:]
    start_trend = NAN
    if earlier:
        head = set(head)
        start_trend = sum(visit[-1][1] in head for visit in earlier) / len(earlier)
    log_gap = math.log1p(gap_ms / 1000.0)
    return [float(len(history)), float(n_sources), log_gap, float(new), float(session),
            float(len(earlier)), start_trend]  # fmt: skip


class StaleRanker(ValueError):
    """A well-formed model over other features than this code computes: one
    trained by another release."""


_BY_INDEX: weakref.WeakKeyDictionary[ItemIndex, Ranker | None] = weakref.WeakKeyDictionary()
_BY_INDEX_LOCK = threading.Lock()


_TREES_PREFIX = "ranker-trees-"


def _trees_key(model_text: str) -> str:
    """What compiled object code depends on: the model, the compiler, the CPU."""
    import lleaves
    import llvmlite
    import llvmlite.binding as llvm

    h = hashlib.sha256(model_text.encode())
    for part in (
        getattr(lleaves, "__version__", "?"),
        llvmlite.__version__,
        llvm.get_host_cpu_name(),
        llvm.get_host_cpu_features().flatten(),
    ):
        h.update(b"\0" + str(part).encode())
    return h.hexdigest()[:24]


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:24]


def _cached_trees(cache_dir: Path, key: str) -> Path | None:
    """The object code compiled earlier under ``key`` (:func:`_trees_key`), if a file
    holds it whole: its name ends in its own digest, checked here, since lleaves
    loads it without any check (a truncated or foreign file would crash)."""
    for path in sorted(cache_dir.glob(f"{_TREES_PREFIX}{key}-*.o")):
        digest = path.stem.rsplit("-", 1)[-1]
        try:
            if _digest(path.read_bytes()) == digest:
                return path
        except OSError:
            continue
        log.warning("removing %s: its content does not match its name", path)
        path.unlink(missing_ok=True)
    return None


def _keep_trees(cache_dir: Path, key: str, compiled: Path) -> None:
    """Keep freshly compiled object code in ``cache_dir`` (written whole, then
    renamed), for the next process that loads this version; a directory it may
    not write (a read-only volume) only costs that process a compile."""
    try:
        data = compiled.read_bytes()
        name = f"{_TREES_PREFIX}{key}-{_digest(data)}.o"
        fd, tmp = tempfile.mkstemp(prefix=".trees-", dir=cache_dir)
        try:
            os.fchmod(fd, 0o644)  # as the version's other files: any API user reads it
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, cache_dir / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        log.info("compiled ranker trees not kept in %s: %s", cache_dir, exc)


def ranker_of(index: ItemIndex, *, compile: bool = True) -> Ranker | None:
    """The learned ranker an index version carries (None: the blend ranks
    alone), parsed once per index and (unless ``compile`` is false: an API
    with the ranker off) compiled, from the version directory's object code
    where an earlier process left it (the API's loader thread does it first).
    A model that does not parse raises ValueError; one another release
    trained (other features) is set aside, logged: the blend ranks until the
    next build ships a model of this release."""
    with _BY_INDEX_LOCK:
        if index in _BY_INDEX:
            return _BY_INDEX[index]
    ranker = None
    if index.ranker_model is not None:
        try:
            ranker = Ranker.from_text(index.ranker_model)
        except StaleRanker as exc:
            log.warning("index %s: ranker not used, %s; the blend ranks", index.version, exc)
    if ranker is not None:
        ranker.cache_dir = index.directory
        if compile:
            ranker.compile()
    with _BY_INDEX_LOCK:
        _BY_INDEX[index] = ranker
    return ranker


class Ranker:
    """A trained model and the pool it re-orders. Thread-safe for ``rank``."""

    def __init__(self, booster: lightgbm.Booster, size: PoolConfig | None = None) -> None:
        names = list(booster.feature_name())
        if names != list(FEATURES):
            raise StaleRanker(f"the model's features {names} are not this code's {list(FEATURES)}")
        self.booster = booster
        self.size = size or PoolConfig()
        self._native: Any = None  # the compiled trees (lleaves.Model), once compiled
        self._tried = False
        self._compiling = threading.Lock()
        # Where compiled trees are kept and looked for (ranker_of: the version's directory).
        self.cache_dir: Path | None = None
        # Where the native trees came from: "compiled" here, "cache" (an earlier
        # compile's object code), or "" (not compiled).
        self.compiled_from = ""

    def compile(self) -> bool:
        """Compile the trees to native code for :meth:`scores`: seconds, once per
        model (the API's loader thread does it before a version serves; anything
        else on first use), or ~10 ms from the object code an earlier compile
        left in ``cache_dir`` (the index version's directory). False, logged,
        where it cannot: LightGBM then predicts, to the same lists."""
        with self._compiling:
            if not self._tried:
                self._native = self._compiled_trees()
                self._tried = True
        return self._native is not None

    def _compiled_trees(self) -> Any:
        cache_dir = self.cache_dir
        try:
            import lleaves

            text = self.booster.model_to_string()
            with tempfile.TemporaryDirectory(prefix="streamrec-ranker-") as tmp:
                path = Path(tmp) / "model.txt"
                path.write_text(text)
                native = lleaves.Model(model_file=str(path))
                if cache_dir is None:
                    native.compile()
                    self.compiled_from = "compiled"
                    return native
                key = _trees_key(text)
                cached = _cached_trees(cache_dir, key)
                if cached is not None:
                    native.compile(cache=str(cached))
                    self.compiled_from = "cache"
                    return native
                fresh = Path(tmp) / "trees.o"
                native.compile(cache=str(fresh))
                self.compiled_from = "compiled"
                _keep_trees(cache_dir, key, fresh)
        except Exception as exc:  # an accelerator: any failure means LightGBM predicts
            log.warning(
                "ranker trees not compiled (%s: %s); LightGBM predicts", type(exc).__name__, exc
            )
            return None
        return native

    @property
    def compiled(self) -> bool:
        return self._native is not None

    @classmethod
    def from_text(cls, text: str) -> Ranker:
        """A ranker from :meth:`to_text`; ValueError if it is not one."""
        import lightgbm

        try:
            doc = json.loads(text)
            size = PoolConfig(
                int(doc["pool"]), int(doc["trend_extra"]), int(doc.get("linear_extra", 0))
            )
            booster = lightgbm.Booster(model_str=doc["model"])
        except (KeyError, TypeError, json.JSONDecodeError, lightgbm.basic.LightGBMError) as exc:
            raise ValueError(f"not a ranker model: {exc}") from None
        return cls(booster, size)

    def to_text(self) -> str:
        doc = {
            "pool": self.size.pool,
            "trend_extra": self.size.trend_extra,
            "linear_extra": self.size.linear_extra,
            "features": list(FEATURES),
            "model": self.booster.model_to_string(),
        }
        return json.dumps(doc)

    def describe(self) -> dict[str, Any]:
        return {
            "pool": self.size.pool,
            "trend_extra": self.size.trend_extra,
            "linear_extra": self.size.linear_extra,
            "trees": self.booster.num_trees(),
        }

    def scores(self, x: np.ndarray) -> np.ndarray:
        """The model's score of each row of ``x``: the compiled trees (compiled on
        first use if need be), or LightGBM's predict where compiling failed."""
        if not len(x):
            return np.zeros(0)
        if not self._tried:
            self.compile()
        native = self._native
        if native is not None:
            return np.asarray(native.predict(np.ascontiguousarray(x, dtype=np.float64), n_jobs=1))
        return self.reference_scores(x)

    def reference_scores(self, x: np.ndarray) -> np.ndarray:
        """LightGBM's own predict: what the compiled trees must equal."""
        if not len(x):
            return np.zeros(0)
        out: Any = self.booster.predict(x, num_threads=1)
        return np.asarray(out, dtype=np.float64)

    def rank(
        self,
        cands: Candidates,
        exclude: Collection[str],
        k: int,
        cfg: BlendConfig,
        moment: Moment,
        allow: Callable[[str], bool] | None = None,
    ) -> list[Scored]:
        """The pool re-ordered by the model, best first, ties on item id; each
        item keeps the blend's reason and personal flag, its score is the model's."""
        if k <= 0:
            return []
        pool = candidate_pool(cands, exclude, cfg, self.size, allow)
        return self.rerank(pool, cands, k, cfg, moment)

    def rerank(
        self, pool: list[Scored], cands: Candidates, k: int, cfg: BlendConfig, moment: Moment
    ) -> list[Scored]:
        """:meth:`rank` from a pool already drawn (``candidate_pool``)."""
        if k <= 0 or not pool:
            return []
        return self.order(pool, features(cands, pool, moment, cfg), k)

    def order(self, pool: Sequence[Scored], x: np.ndarray, k: int) -> list[Scored]:
        """The best ``k`` of ``pool`` by the model's score of its feature matrix
        ``x`` (``features``, or ``serving.ranker_fast.fast_features`` of the same
        pool), ties on item id."""
        if k <= 0 or not pool:
            return []
        model = self.scores(x).tolist()
        order = sorted(range(len(pool)), key=lambda i: (-model[i], pool[i].item_id))[:k]
        return [
            Scored(pool[i].item_id, model[i], pool[i].reason, pool[i].personalised) for i in order
        ]
