"""Optional CDN purge hook, in the shape of Cloudflare's purge-by-URL API:
``POST {cdn_purge_url}/zones/{zone}/purge_cache`` with ``{"files": [urls]}`` and a Bearer
token. Called when topic content is invalidated or regenerated; every failure is logged and
swallowed (the CDN then serves its copy until its own max-age runs out).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import quote

import orjson

from knowctl.daemon.cache import metrics as cm
from knowctl.net import http1

log = logging.getLogger("knowctl.cdn")

BATCH = 30  # Cloudflare accepts at most 30 URLs per purge-by-URL call
TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class CdnConfig:
    """What the CDN purge needs of the settings (built by knowctl.daemon.config.cdn_config)."""

    purge_url: str | None = None
    zone_id: str | None = None
    api_token: str | None = field(default=None, repr=False)
    public_base_url: str | None = None


class CdnPurger:
    def __init__(self, config: CdnConfig) -> None:
        token = config.api_token
        self._token = token
        self._base = (config.public_base_url or "").rstrip("/")
        self._endpoint = (
            f"{config.purge_url.rstrip('/')}/zones/{quote(config.zone_id, safe='')}/purge_cache"
            if config.purge_url and config.zone_id
            else None
        )
        self.enabled = bool(self._endpoint and token and self._base)
        self._pool: http1.Pool | None = None  # the same HTTP client as upstream calls, opened on first use

    @functools.cached_property
    def _target(self) -> tuple[http1.Origin, str]:
        """Where purges go: the endpoint's origin and path, parsed once."""
        assert self._endpoint is not None
        return http1.Origin.split(self._endpoint)

    def topic_urls(self, topics: Iterable[str]) -> list[str]:
        """The public URLs of these topics (names are validated: safe in a path)."""
        return [f"{self._base}/topics/{quote(t, safe='')}" for t in topics]

    async def purge_topics(self, topics: Iterable[str]) -> bool:
        return await self.purge(self.topic_urls(topics))

    async def purge(self, urls: list[str]) -> bool:
        """Purge ``urls``; True if every batch was accepted (or there was nothing to do)."""
        if not self.enabled or not urls:
            return True
        assert self._endpoint is not None
        if self._pool is None:
            self._pool = http1.Pool(max_connections=2, connect_timeout=TIMEOUT_S, timeout=TIMEOUT_S)
        origin, path = self._target
        ok = True
        headers = {"authorization": f"Bearer {self._token}", "content-type": "application/json"}
        for start in range(0, len(urls), BATCH):
            files = urls[start : start + BATCH]
            try:
                async with self._pool.request(
                    "POST", origin, path, headers, orjson.dumps({"files": files})
                ) as r:
                    await r.read()
                    if r.status >= 300:
                        ok = False
                        log.warning("cdn: purge of %d URL(s) refused with HTTP %d", len(files), r.status)
            except http1.HttpError as exc:
                ok = False
                log.warning("cdn: purge of %d URL(s) failed: %s", len(files), type(exc).__name__)
        cm.CDN_PURGES.labels("ok" if ok else "failed").inc()
        return ok

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
