"""Choose the co-occurrence half-life on the validation part; report the test part too.

    STREAMREC_DATA_DIR=../shared/datasets .venv/bin/python -m benchmarks.co_half_life \
        [--half-lives none,30,90,365,1095] [--out docs/evaluation/co_half_life.json]

Each half-life (days; ``none``: counts never decay) is one pass of
benchmarks/sweep.py: validation (and test) on the whole file and its halves.
"""

from __future__ import annotations

from benchmarks.sweep import Configure, parser, sweep, with_consumer
from consumer.settings import ConsumerSettings

DAY = 24 * 3600 * 1000


def with_half_life(days: float | None) -> Configure:
    consumer = ConsumerSettings()
    hl = None if days is None else int(days * DAY)
    state = consumer.state.model_copy(update={"co_half_life_ms": hl})
    return with_consumer(consumer.model_copy(update={"state": state}))


def main() -> None:
    p = parser(__doc__, "docs/evaluation/co_half_life.json")
    p.add_argument("--half-lives", default="none,30,90,365,1095")
    args = p.parse_args()
    choices = {h: None if h == "none" else float(h) for h in args.half_lives.split(",")}
    sweep(args, "half_life_days", choices, with_half_life)


if __name__ == "__main__":
    main()
