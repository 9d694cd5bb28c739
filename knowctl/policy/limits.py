"""Rate-limit specs as operators write them: ``10/minute,100/hour,500/day`` or ``none``.

Each item is ``COUNT/PERIOD`` where PERIOD is ``second``, ``minute``, ``hour``, ``day`` (or
their plurals), optionally with a multiplier (``5/10minutes``), or a plain number of seconds
with an ``s`` (``3/30s``). The parsed windows' names (``minute``, ``hour``...) appear in store
keys and in the ``RateLimit`` headers.
"""

from __future__ import annotations

import re

from knowctl.policy.windows import Window

_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
_ITEM = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([a-z]+)\s*$")
_SECONDS = re.compile(r"^\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)s\s*$")


def parse_limits(spec: str) -> tuple[Window, ...]:
    """The windows a spec names; ``none`` (or empty) means no limit at all."""
    text = spec.strip().lower()
    if text in ("", "none", "off", "unlimited"):
        return ()
    windows: list[Window] = []
    for item in text.split(","):
        windows.append(_parse_item(item))
    names = [w.name for w in windows]
    if len(set(names)) != len(names):
        raise ValueError(f"limits {spec!r} name the same period twice")
    return tuple(windows)


def _parse_item(item: str) -> Window:
    seconds = _SECONDS.match(item)
    if seconds:
        count, length = int(seconds.group(1)), float(seconds.group(2))
        if length <= 0:
            raise ValueError(f"limit {item.strip()!r}: the period must be longer than 0 s")
        return Window(name=f"{seconds.group(2)}s", length_s=length, limit=count)
    match = _ITEM.match(item)
    unit = match.group(3).rstrip("s") if match else ""
    if not match or unit not in _UNITS:
        raise ValueError(
            f"limit {item.strip()!r} is not COUNT/PERIOD (e.g. 10/minute, 100/hour, 5/10minutes, 3/30s)"
        )
    multiplier = int(match.group(2)) if match.group(2) else 1
    if multiplier == 0:
        raise ValueError(f"limit {item.strip()!r}: the period must be longer than 0")
    name = unit if multiplier == 1 else f"{multiplier}{unit}s"
    return Window(name=name, length_s=float(_UNITS[unit] * multiplier), limit=int(match.group(1)))
