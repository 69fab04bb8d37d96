"""Choose how MovieLens ratings count (core.feedback) on the validation part.

    STREAMREC_DATA_DIR=../shared/datasets .venv/bin/python -m benchmarks.feedback_mapping \
        [--out docs/evaluation/feedback_mapping.json]

Each mapping is one pass of benchmarks/sweep.py (validation, and test beside it,
on the whole file and its halves): ratings below a threshold as negative
feedback (they pair with nothing, add no popularity, and exclude the item for
the user), and/or ratings weighing stars / 4. The protocol is the same for all:
every rating is a target, whatever its stars.
"""

from __future__ import annotations

from typing import Any

from benchmarks.sweep import Configure, parser, sweep, with_consumer
from consumer.settings import ConsumerSettings
from core.feedback import Feedback

MAPPINGS: dict[str, dict[str, Any]] = {
    "flat": {},
    "negative below 2": {"rating_negative_below": 2.0},
    "negative below 2.5": {"rating_negative_below": 2.5},
    "negative below 3": {"rating_negative_below": 3.0},
    "stars / 4": {"rating_pivot": 4.0},
    "stars / 4 + negative below 2.5": {"rating_pivot": 4.0, "rating_negative_below": 2.5},
}


def with_mapping(fields: dict[str, Any]) -> Configure:
    consumer = ConsumerSettings()
    state = consumer.state
    rules = state.rules.model_copy(update={"feedback": Feedback(**fields)})
    return with_consumer(
        consumer.model_copy(update={"state": state.model_copy(update={"rules": rules})})
    )


def main() -> None:
    p = parser(__doc__, "docs/evaluation/feedback_mapping.json")
    p.add_argument("--mappings", default=",".join(MAPPINGS), help="comma-separated names")
    args = p.parse_args()
    choices = {name: MAPPINGS[name] for name in args.mappings.split(",")}
    sweep(args, "mapping", choices, with_mapping)


if __name__ == "__main__":
    main()
