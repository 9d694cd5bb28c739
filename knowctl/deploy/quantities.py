"""Sizes and quantities in deployment values: Kubernetes CPU and memory, Redis and nginx sizes."""

from __future__ import annotations

import re

CPU_QUANTITY = re.compile(r"^(\d+m|\d+(\.\d+)?)$")
MEMORY_QUANTITY = re.compile(r"^\d+(Ki|Mi|Gi|Ti)$")
PROMETHEUS_DURATION = re.compile(r"^\d+(ms|s|m|h|d)$")
# Redis memory sizes: bytes, or k/m/g (powers of 1000) and kb/mb/gb (powers of 1024).
_REDIS_SIZE = re.compile(r"^(\d+)(k|kb|m|mb|g|gb)?$", re.I)
_REDIS_UNITS = {"": 1, "k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2, "g": 1000**3, "gb": 1024**3}
_BINARY_UNITS = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4}
# With persistence, an AOF rewrite forks Redis: the child shares the parent's pages until
# either writes them, so a busy store can need its dataset twice over for the rewrite.
PERSISTENT_MAXMEMORY_SHARE = 0.5
# Without persistence Redis still needs room beyond maxmemory: client buffers, fragmentation.
MAXMEMORY_SHARE = 0.8


def cpu_cores(quantity: str) -> float:
    """A Kubernetes CPU quantity (250m, 1.5) in cores."""
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def memory_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity with a binary unit (256Mi) in bytes."""
    return int(quantity[:-2]) * _BINARY_UNITS[quantity[-2:]]


def redis_bytes(size: str) -> int:
    """A Redis memory size (768mb, 1gb, 100000) in bytes; ValueError if it is not one."""
    match = _REDIS_SIZE.match(size.strip())
    if not match:
        raise ValueError(f"{size!r} is not a Redis memory size such as 512mb or 1gb")
    return int(match.group(1)) * _REDIS_UNITS[(match.group(2) or "").lower()]


def maxmemory_problem(maxmemory: int, limit: int, persistent: bool) -> str | None:
    """Why a Redis maxmemory does not fit its container's memory limit, or None."""
    mib = 1024**2
    if maxmemory == 0:
        return "maxmemory is 0 (no limit): Redis would grow until the container is killed"
    if maxmemory >= limit:
        return (
            f"maxmemory ({maxmemory // mib} MiB) is not below the container's memory limit "
            f"({limit // mib} MiB): the container is killed before Redis refuses a write"
        )
    share = PERSISTENT_MAXMEMORY_SHARE if persistent else MAXMEMORY_SHARE
    if maxmemory > limit * share:
        why = (
            "with appendonly an AOF rewrite forks Redis and the child can need as much memory again"
            if persistent
            else "Redis needs room beyond maxmemory for client buffers and fragmentation"
        )
        return (
            f"maxmemory ({maxmemory // mib} MiB) is above {int(share * 100)}% of the container's "
            f"memory limit ({limit // mib} MiB): {why}"
        )
    return None


def nginx_bytes(size: str) -> int | None:
    """An nginx size (10m, 512k, 1g, 1024) in bytes, or None if it is not one."""
    match = re.match(r"^(\d+)([kKmMgG]?)$", size.strip())
    if not match:
        return None
    return int(match.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[match.group(2).lower()]
