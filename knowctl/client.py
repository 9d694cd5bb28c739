"""The admin CLI's HTTP client for the daemon's admin API (httpx, imported lazily)."""

from __future__ import annotations

from typing import Any


class DaemonUnreachable(Exception):
    """Nothing answered at the daemon's URL."""


class AdminCallFailed(Exception):
    """The daemon answered with an error; ``status`` and its message are kept."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class AdminClient:
    def __init__(self, url: str, token: str | None, timeout: float = 10.0) -> None:
        import httpx

        headers = {"authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def call(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None) -> Any:
        import httpx

        try:
            response = self._http.request(method, path, json=json, params=params)
        except httpx.TransportError as exc:
            raise DaemonUnreachable(f"cannot reach the knowctl daemon at {self.url}: {exc}") from exc
        if response.status_code >= 400:
            raise AdminCallFailed(response.status_code, _error_message(response))
        return response.json() if response.content else None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _error_message(response: Any) -> str:
    try:
        error = response.json().get("error", {})
        return str(error.get("message") or response.text)
    except ValueError:
        return str(response.text[:200] or response.reason_phrase)
