"""Typed feedback: how much one event counts, by its type and weight.

An event's weight scales everything it adds to the item state: its pairs with
the earlier items of its session (both directions), its popularity and its
trending score. The user's own history records every event either way.

- ``type_weights`` gives each type's weight; a type not listed weighs
  ``default_weight``. The defaults cover common spellings (RetailRocket's
  ``view``/``addtocart``/``transaction`` among them).
- An event's own ``weight`` field, when it has one, multiplies its type's weight
  (a quantity, a dwell-time factor), except for ``rating`` events, whose weight
  is the rating itself (see below).
- **Negative feedback** adds nothing positive: a type in ``negative_types``
  (``dislike``, ...), an event whose weight comes out at or below 0, or a
  rating below ``rating_negative_below``. Such an event pairs with nothing,
  adds no popularity or trending, is never a source of the user's
  recommendations, and excludes its item from that user's answers while it is
  in their history (``serving.blend.split_history``).
- ``rating`` events (MovieLens): stars in ``weight``. Below
  ``rating_negative_below`` they are negative; otherwise they weigh the
  ``rating`` type's weight, times ``weight / rating_pivot`` when a pivot is set.

Chosen for MovieLens on ml-latest-small's validation part (docs/evaluation.md).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_serializer

RATING = "rating"

DEFAULT_TYPE_WEIGHTS: dict[str, float] = {
    "click": 1.0,
    "rating": 1.0,
    "view": 0.5,
    "add_to_cart": 2.0,
    "addtocart": 2.0,
    "cart": 2.0,
    "purchase": 3.0,
    "transaction": 3.0,
    "order": 3.0,
}
DEFAULT_NEGATIVE_TYPES = frozenset({"dislike", "hide", "not_interested", "skip"})


class Feedback(BaseModel):
    """What an event of each type adds (env
    ``STREAMREC_CONSUMER_STATE__RULES__FEEDBACK__TYPE_WEIGHTS='{"view": 0.5}'``, ...)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type_weights: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_TYPE_WEIGHTS))
    default_weight: float = Field(default=1.0, ge=0.0, le=1000.0)
    negative_types: frozenset[str] = DEFAULT_NEGATIVE_TYPES
    # MovieLens: a rating below this is negative feedback; None: every rating counts.
    rating_negative_below: float | None = None
    # Ratings weigh stars / pivot (e.g. 4: a 4-star rating counts 1); None: flat.
    rating_pivot: float | None = Field(default=None, gt=0.0)

    def __hash__(self) -> int:  # frozen, but the type weights are a dict
        return hash(
            (
                tuple(sorted(self.type_weights.items())),
                self.default_weight,
                self.negative_types,
                self.rating_negative_below,
                self.rating_pivot,
            )
        )

    @field_serializer("negative_types")
    def _sorted(self, types: frozenset[str]) -> list[str]:
        return sorted(types)  # reports and settings dumps stay stable and JSON-able

    def weight(self, etype: str, value: float | None) -> float:
        """The weight of one event; at or below 0 means negative feedback."""
        if etype in self.negative_types:
            return 0.0
        w = self.type_weights.get(etype, self.default_weight)
        if value is None:
            return w
        if etype == RATING:
            below = self.rating_negative_below
            if below is not None and value < below:
                return 0.0
            return w * value / self.rating_pivot if self.rating_pivot else w
        return w * value
