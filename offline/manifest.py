"""The manifest: what an index is, how and from what it was built.

Travels with every index as manifest.json; serving shows it, and ``publish``
orders versions by ``built_at``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Manifest:
    """What an index is and how it was made; travels with the index as manifest.json."""

    version: str  # "20261122T221500Z-ab12cd": UTC build second + short content hash
    item_count: int
    dim: int
    built_at: str  # ISO-8601 UTC, microseconds: orders versions built within one second
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    before_ts: int | None = None  # events at/after this ts (ms) were excluded; None = all

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Manifest:
        """Strict: a missing key or a wrong type raises ValueError, never a half-manifest."""
        try:
            before_ts = d["before_ts"]
            manifest = cls(
                version=_typed(d["version"], str, "version"),
                item_count=_typed(d["item_count"], int, "item_count"),
                dim=_typed(d["dim"], int, "dim"),
                built_at=_typed(d["built_at"], str, "built_at"),
                method=_typed(d["method"], str, "method"),
                params=dict(_typed(d["params"], dict, "params")),
                source=_typed(d["source"], str, "source"),
                before_ts=None if before_ts is None else _typed(before_ts, int, "before_ts"),
            )
        except KeyError as exc:
            raise ValueError(f"manifest lacks {exc}") from None
        return manifest


def _typed(value: Any, kind: type, name: str) -> Any:
    # bool is an int subclass; a JSON true is not a count.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"manifest field {name} must be {kind.__name__}, got {value!r}")
    return value
