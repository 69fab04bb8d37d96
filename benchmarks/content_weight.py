"""Choose the blend's content weight (w_content) on the validation part.

    STREAMREC_DATA_DIR=../shared/datasets .venv/bin/python -m benchmarks.content_weight \
        [--weights 0,0.05,0.1,0.25,0.5] [--out docs/evaluation/content_weight.json]

The content term (offline/content.py) scores candidates the embedding has not
seen by the TF-IDF cosine of their catalogue categories and tags with each of
the user's sources. Each weight is one pass of benchmarks/sweep.py (validation,
and test beside it, on the whole file and its halves), which also reports the
blend's HR@10 on targets unseen before the part (new_item) and on an item's
very first click (first_click): the segments content is for.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from benchmarks.sweep import Configure, parser, sweep
from producer.dataset import resolve_dataset
from producer.movielens import load_movielens_catalogue
from serving.blend import BlendConfig


def main() -> None:
    p = parser(__doc__, "docs/evaluation/content_weight.json")
    p.add_argument("--weights", default="0,0.05,0.1,0.25,0.5")
    args = p.parse_args()
    catalogue = load_movielens_catalogue(Path(resolve_dataset(args.dataset, download=False)))

    def with_weight(w: float) -> Configure:
        def configure(setup):  # type: ignore[no-untyped-def]
            cfg = BlendConfig(**{**setup.serving.blend.model_dump(), "w_content": w})
            return replace(setup, catalogue=catalogue).with_blend(cfg)

        return configure

    choices = {w: float(w) for w in args.weights.split(",")}
    sweep(args, "w_content", choices, with_weight)


if __name__ == "__main__":
    main()
