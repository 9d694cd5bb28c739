"""Ids unique across daemons for quota and limit reservations: a random prefix per process
and a counter. ``uuid.uuid4()`` per request cost about 2 µs (os.urandom and a UUID object)
for the same guarantee."""

from __future__ import annotations

import itertools
import os

_prefix = ""
_counter = itertools.count()


def _renew() -> None:
    global _prefix, _counter
    _prefix = os.urandom(9).hex() + ":"
    _counter = itertools.count()


_renew()
os.register_at_fork(after_in_child=_renew)  # a forked worker must not repeat its parent's ids


def unique_id() -> str:
    return f"{_prefix}{next(_counter):x}"
