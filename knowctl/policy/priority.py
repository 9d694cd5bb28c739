"""Request priorities, their order, and each one's share of a quota window (its headroom)."""

from __future__ import annotations

from enum import IntEnum


class Priority(IntEnum):
    """Higher value, more important. Strict priority between levels, FIFO within one."""

    LOW = 0
    MEDIUM = 1
    HIGH = 2
    CRITICAL = 3

    @classmethod
    def parse(cls, text: str) -> Priority:
        """Case-insensitive name; a clear ValueError names the accepted values."""
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise ValueError(
                f"unknown priority {text!r}: use one of {', '.join(p.name for p in cls)}"
            ) from None


DEFAULT_SHARES: dict[Priority, float] = {
    Priority.LOW: 0.6,
    Priority.MEDIUM: 1.0,
    Priority.HIGH: 1.0,
    Priority.CRITICAL: 1.0,
}


def parse_shares(spec: str | dict[str, float]) -> dict[Priority, float]:
    """``LOW=0.6,MEDIUM=1`` (or a mapping) over the defaults; shares must not fall as priority rises."""
    items = (
        spec.items()
        if isinstance(spec, dict)
        else (part.split("=", 1) for part in spec.split(",") if part.strip())
    )
    shares = dict(DEFAULT_SHARES)
    for pair in items:
        if len(pair) != 2:
            raise ValueError(f"priority share {pair!r} is not NAME=FRACTION")
        name, value = pair
        share = float(value)
        if not 0 < share <= 1:
            raise ValueError(f"share of {name} must be in (0, 1], got {share}")
        shares[Priority.parse(str(name))] = share
    ordered = [shares[p] for p in Priority]
    if ordered != sorted(ordered):
        raise ValueError("a higher priority cannot have a smaller share than a lower one")
    return shares


def effective_priority(requested: str | None, default: Priority, cap: Priority | None) -> Priority:
    """The priority a request runs at: its header (or the default), held to the caller's cap."""
    priority = Priority.parse(requested) if requested else default
    return min(priority, cap) if cap is not None else priority
