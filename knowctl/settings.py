"""The one source of every knowctl option, one cohesive module: every field, its check and its doc.

Values come, highest priority first, from: CLI flags (passed as keyword arguments to
:func:`load_settings`), environment variables ``KNOWCTL_*``, secret files named by
``KNOWCTL_<NAME>_FILE`` (Docker and Kubernetes secrets), the YAML config file
(``--config`` or ``KNOWCTL_CONFIG``), and the defaults declared here. Nothing else in the
package re-declares the list of options: the README's configuration table, the rendered
ConfigMap and the CLI all read it from :class:`Settings`.
"""

from __future__ import annotations

import os
import re
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from knowctl.policy.limits import parse_limits
from knowctl.policy.paths import KNOWN_ACTIONS
from knowctl.policy.priority import parse_shares
from knowctl.policy.tiers import GEMINI_TIERS, VERTEX_TIERS, TierName
from knowctl.policy.windows import zone

_ACTION_NAME = re.compile(r"[A-Za-z]{1,64}")

ENV_PREFIX = "KNOWCTL_"
# URL settings that may carry user:password@: shown only through knowctl.redact, readable from
# KNOWCTL_<NAME>_FILE like the secrets, and put in a Secret by `knowctl deploy render`.
CREDENTIAL_URL_FIELDS = frozenset({"store_url", "upstream_url", "cdn_purge_url"})

# The YAML file chosen for the Settings being built. A context variable rather than a
# class attribute, so two Settings built at once (tests) cannot see each other's file.
_config_file: ContextVar[Path | None] = ContextVar("knowctl_config_file", default=None)


class ConfigError(ValueError):
    """A configuration value or file that cannot be used; the message names the culprit."""


class _YamlFileSource(PydanticBaseSettingsSource):
    """Reads the optional YAML config file: a mapping of setting names to values."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ returns the whole mapping

    def __call__(self) -> dict[str, Any]:
        path = _config_file.get() or _env_config_path()
        if path is None:
            return {}
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of settings")
        known = set(self.settings_cls.model_fields)
        unknown = sorted(str(k) for k in data if str(k).replace("-", "_") not in known)
        if unknown:
            raise ConfigError(f"config file {path}: unknown setting(s) {', '.join(unknown)}")
        return {str(k).replace("-", "_"): v for k, v in data.items()}


class _SecretFileSource(PydanticBaseSettingsSource):
    """``KNOWCTL_<NAME>_FILE=/run/secrets/x`` supplies a secret setting from that file (also the
    URLs that may carry a password, CREDENTIAL_URL_FIELDS)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, field in self.settings_cls.model_fields.items():
            if field.annotation not in (SecretStr, SecretStr | None) and name not in CREDENTIAL_URL_FIELDS:
                continue
            file_var = f"{ENV_PREFIX}{name.upper()}_FILE"
            path = os.environ.get(file_var)
            if not path:
                continue
            try:
                values[name] = Path(path).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(f"{file_var}: cannot read {path}: {exc.strerror}") from exc
        return values


def _env_config_path() -> Path | None:
    raw = os.environ.get(f"{ENV_PREFIX}CONFIG")
    return Path(raw) if raw else None


class TierConfig(BaseModel):
    """A named set of per-user limits and a priority cap, given to keys of that tier."""

    model_config = ConfigDict(extra="forbid")

    limits: str = Field(description="Limits of each user of the tier, e.g. 100/minute,1000/day.")
    max_priority: Literal["LOW", "MEDIUM", "HIGH", "CRITICAL"] | None = None

    @field_validator("limits")
    @classmethod
    def _check_limits(cls, value: str) -> str:
        parse_limits(value)
        return value


class ModelQuota(BaseModel):
    """One model's provider limits; unset fields take the KNOWCTL_QUOTA_* defaults."""

    model_config = ConfigDict(extra="forbid")

    rpm: int | None = Field(None, ge=1)
    rpd: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    tpd: int | None = Field(None, ge=1)
    # What a batch of N embeddings counts in the request windows: N (as Google's batch limits
    # count them) or one call.
    batch_counts: Literal["items", "call"] = "items"


_DEPLOYMENT_NAME = r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$"
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")  # as knowctl.policy.paths reads them


class TierLimits(BaseModel):
    """The limits a provider keeps apart for one service tier of a model at a deployment."""

    model_config = ConfigDict(extra="forbid")

    rpm: int | None = Field(None, ge=1, description="Requests per minute at this tier.")
    rpd: int | None = Field(None, ge=1, description="Requests per day at this tier.")
    tpm: int | None = Field(None, ge=1, description="Tokens per minute at this tier.")
    tpd: int | None = Field(None, ge=1, description="Tokens per day at this tier.")


class DeploymentModel(BaseModel):
    """One model an upstream deployment serves: its name there, and its limits there."""

    model_config = ConfigDict(extra="forbid")

    upstream_model: str | None = Field(
        None, description="The model's name at this deployment, when it differs (a rename)."
    )
    rpm: int | None = Field(None, ge=1, description="Requests per minute this deployment serves the model.")
    rpd: int | None = Field(None, ge=1, description="Requests per day.")
    tpm: int | None = Field(None, ge=1, description="Tokens per minute.")
    tpd: int | None = Field(None, ge=1, description="Tokens per day.")
    tiers: dict[TierName, TierLimits] = Field(
        default_factory=dict,
        description="Limits the provider keeps apart per service tier (e.g. {priority: {rpm: 20}}): calls "
        "of that tier are counted there instead; tiers not listed share the model's.",
    )

    @field_validator("upstream_model")
    @classmethod
    def _check_name(cls, value: str | None) -> str | None:
        if value is not None and not _MODEL_NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not a model name")
        return value


class UpstreamDeployment(BaseModel):
    """One upstream deployment of the pool: where its quota lives and how to reach it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=_DEPLOYMENT_NAME, description="Lower-case letters, digits and '-'.")
    family: Literal["gemini", "vertex"] = Field(
        "gemini", description="gemini (a Gemini API key's project) or vertex (a project in a location)."
    )
    url: str | None = Field(
        None, description="Base URL instead of Google's host (a proxy in front, a simulator)."
    )
    api_key: SecretStr | None = Field(None, description="API key (better api_key_file).")
    api_key_file: Path | None = Field(None, description="File holding the API key (a mounted Secret).")
    credentials: str | None = Field(
        None, description="OAuth: 'adc' (application-default credentials) or a service-account JSON file."
    )
    project: str | None = Field(None, description="Vertex project.")
    location: str = Field("global", description="Vertex location (global included).")
    order: int = Field(0, ge=0, description="Preference: lower first; ties go to the most headroom.")
    proxy: str | None = Field(
        None,
        description="HTTP proxy its calls go through (http://host:port): https through CONNECT, TLS "
        "checked as without one. Unset: HTTPS_PROXY / HTTP_PROXY unless NO_PROXY names the host.",
    )
    learned_start_rpm: int | None = Field(
        60,
        ge=1,
        description="For a model it declares no limit for (Vertex Dynamic Shared Quota): learn its "
        "capacity from the provider's 429s, starting at this many requests per minute and doubling "
        "while it fills; null: do not learn, only hold it after a 429.",
    )
    service_tiers: dict[Literal["LOW", "MEDIUM", "HIGH", "CRITICAL"], TierName] = Field(
        default_factory=dict,
        description="The provider's service tier for calls of each knowctl priority, where the caller set "
        "none (e.g. {CRITICAL: priority, LOW: flex}): Gemini API flex, standard or priority (the body's "
        "serviceTier); Vertex flex, priority, dedicated or shared (its request-type headers).",
    )
    models: dict[str, DeploymentModel] | None = Field(
        None,
        description="The models it serves (a list, or {model: {upstream_model, rpm, rpd, tpm, tpd}}); "
        "unset: every model, with no declared limits.",
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        return _check_http_url(value).rstrip("/") if value else None

    @field_validator("proxy")
    @classmethod
    def _check_proxy(cls, value: str | None) -> str | None:
        if not value:
            return None
        from urllib.parse import urlsplit

        if not value.startswith("http://"):
            raise ValueError("must be an http:// proxy (https is tunnelled through it with CONNECT)")
        parts = urlsplit(_check_http_url(value))
        if parts.username or parts.password:
            raise ValueError("proxy credentials are not supported: allow the gateway's address at the proxy")
        return value.rstrip("/")

    @field_validator("models", mode="before")
    @classmethod
    def _listed(cls, value: Any) -> Any:
        if isinstance(value, list):  # [gemini-2.5-flash, ...]: served as named, no declared limits
            return {str(name): {} for name in value}
        return value

    @field_validator("models")
    @classmethod
    def _check_models(cls, value: dict[str, DeploymentModel] | None) -> dict[str, DeploymentModel] | None:
        for name in value or {}:
            if not _MODEL_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a model name")
        return value

    def key(self) -> str | None:
        """The API key, from the setting or its file (read now: a rotated Secret is picked up
        at the next start)."""
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        if self.api_key_file is not None:
            try:
                return self.api_key_file.read_text(encoding="utf-8").strip() or None
            except OSError as exc:
                raise ConfigError(
                    f"upstreams.{self.name}.api_key_file: cannot read it: {exc.strerror}"
                ) from exc
        return None

    @model_validator(mode="after")
    def _check_deployment(self) -> UpstreamDeployment:
        if self.api_key is not None and self.api_key_file is not None:
            raise ValueError("set api_key or api_key_file, not both")
        if self.family == "vertex" and not self.project:
            raise ValueError("a vertex deployment needs its project")
        if self.family == "gemini" and self.project:
            raise ValueError("project is for vertex deployments (a Gemini API key names its own)")
        allowed = GEMINI_TIERS if self.family == "gemini" else VERTEX_TIERS
        wrong = sorted({t for t in self.service_tiers.values() if t not in allowed})
        if wrong:
            raise ValueError(
                f"service_tiers: {', '.join(wrong)} is not a {self.family} tier ({', '.join(allowed)})"
            )
        return self


class Settings(BaseSettings):
    """Every option of the daemon and the admin CLI. Field docs become the reference."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        validate_default=True,
        case_sensitive=False,
        # A ValidationError's text quotes the bad input otherwise: a URL with its password.
        hide_input_in_errors=True,
    )

    # --- serving ---------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Address the daemon listens on.")
    port: int = Field(8080, ge=0, le=65535, description="Port the daemon listens on.")
    workers: int = Field(1, ge=1, le=64, description="Worker processes sharing the port.")
    tls_cert_file: Path | None = Field(
        None,
        description="Serve HTTPS (and wss:// for the Live API, which google-genai always opens "
        "over TLS) with this PEM certificate chain; set with tls_key_file.",
    )
    tls_key_file: Path | None = Field(
        None, description="The PEM private key of tls_cert_file (a secret: a file only)."
    )
    simulate: bool = Field(
        False, description="Run the built-in simulator in-process and use it as the upstream."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    log_format: Literal["auto", "json", "text"] = Field(
        "auto", description="Log format: JSON lines, human text, or auto (text on a terminal)."
    )
    drain_timeout: float = Field(
        30.0,
        gt=0,
        description="Seconds a stopping daemon waits for admitted and queued requests to finish "
        "(keep terminationGracePeriodSeconds above preStop + this).",
    )
    access_log: bool = Field(
        True,
        description="One structured log line per request (request id, route, status, user, cache "
        "result, quota decision, latency).",
    )
    max_body_bytes: int = Field(
        10 * 1024 * 1024, ge=1024, description="Largest request body accepted, in bytes."
    )
    max_buffered_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        description="Request body bytes one daemon process holds at once, all requests together "
        "(each worker process has its own bound); a body that would pass it is refused with a "
        "503 and Retry-After. At least max_body_bytes. A held body is also parsed and sent "
        "upstream: the process's memory grows by up to about four times this.",
    )
    max_header_bytes: int = Field(
        32 * 1024,
        ge=1024,
        description="Largest request head (request line and header fields), in bytes; a larger "
        "one is refused with a 400.",
    )
    client_header_timeout: float = Field(
        10.0,
        gt=0,
        description="Seconds a request head may take to arrive, from the connection's opening (or, "
        "on a kept-alive connection, from the head's first byte); then the connection closes "
        "(with a 408 if part of a head came).",
    )
    client_body_timeout: float = Field(
        30.0,
        gt=0,
        description="Seconds a request body may take to arrive once its head has; then it gets a "
        "408 and the connection closes.",
    )
    keep_alive_timeout: int = Field(
        620,
        ge=2,
        description="Seconds an idle connection stays open after an answer. Keep it above the "
        "idle timeout of every proxy in front (nginx upstream 60 s, AWS ALB 60 s, Google Cloud "
        "load balancers 600 s): a proxy that reuses a connection the daemon has just closed "
        "answers its caller with a 502.",
    )
    max_connections_per_client: int = Field(
        512,
        ge=0,
        description="Concurrent connections one client address may hold (0: no cap); one more is "
        "answered 429 and closed. Addresses in trusted_proxies are exempt.",
    )

    # --- upstream ----------------------------------------------------------------
    upstream_url: str | None = Field(
        None,
        description="Replace scheme, host and port (plus an optional base path) of every upstream "
        "call; unset sends each API family to Google's own host (or KNOWCTL_UPSTREAM_URL_FILE).",
    )
    upstream_connect_timeout: float = Field(
        5.0, gt=0, description="Seconds to open a connection to the upstream."
    )
    upstream_timeout: float = Field(
        120.0, gt=0, description="Seconds an upstream call may take before it is abandoned (504)."
    )
    upstream_max_connections: int = Field(
        512, ge=1, description="Pooled upstream connections kept per daemon process."
    )
    google_credentials: str | None = Field(
        None,
        description="Upstream OAuth credentials: 'adc' for application-default credentials, or a "
        "service-account JSON file path. Unset: none (the metadata server is never probed).",
    )
    google_api_key: SecretStr | None = Field(
        None, description="Gemini API key used upstream (or KNOWCTL_GOOGLE_API_KEY_FILE)."
    )

    # --- state -------------------------------------------------------------------
    store_url: str = Field(
        "memory://",
        description="Shared state: memory:// (one process), redis://[:password@]host:port/db, "
        "rediss:// (TLS), redis+cluster://host:port[,host:port...]/ (Redis Cluster), "
        "redis+sentinel://host:port[,host:port...]/service[/db] (Sentinel-managed master). "
        "With a password, better KNOWCTL_STORE_URL_FILE (a file holding the URL); it is shown as ***.",
    )
    store_timeout: float = Field(
        0.05,
        gt=0,
        description="Seconds any single store (Redis) call may take; behind a circuit breaker that "
        "opens when no call has answered for max(0.5, 4 x this) seconds.",
    )
    max_replicas: int = Field(
        1,
        ge=1,
        description="Most daemon processes that may share one store (the autoscaler's maximum times "
        "workers): while the store is down each takes 1/max_replicas of every limit.",
    )

    # --- callers -------------------------------------------------------------------
    auth_mode: Literal["keys", "passthrough", "anonymous"] | None = Field(
        None,
        description="Who callers are: keys (gateway-issued keys), passthrough (their own Google "
        "credentials), anonymous (client IP). Unset: keys when the gateway holds Google "
        "credentials, passthrough when it holds none, anonymous with --simulate.",
    )
    allowed_actions: str = Field(
        ",".join(KNOWN_ACTIONS),
        description="Model actions forwarded in keys mode (comma-separated), where the gateway pays "
        "for every call; any other action is a 404 there. Passthrough and anonymous callers may "
        "send any action.",
    )
    trusted_proxies: str = Field(
        "",
        description="Comma-separated addresses or CIDRs whose X-Forwarded-For is believed "
        "(e.g. 10.0.0.0/8). Empty: the direct peer is the client.",
    )
    user_limits: str = Field(
        "10/minute,100/hour,500/day",
        description="Per-user sliding-window limits (COUNT/PERIOD, comma-separated); none turns them off.",
    )
    ip_limits: str = Field("none", description="Per-client-IP limits, same syntax as user_limits.")
    tiers: dict[str, TierConfig] = Field(
        default_factory=dict,
        description="Named tiers (config file): {name: {limits: '100/minute', max_priority: HIGH}}.",
    )
    metrics_require_token: bool = Field(
        False, description="Put /api/metrics behind the admin token too (open by default for Prometheus)."
    )
    unauthenticated_max_priority: Literal["LOW", "MEDIUM", "HIGH", "CRITICAL"] = Field(
        "MEDIUM",
        description="Highest X-Knowctl-Priority a caller the gateway has not authenticated may use "
        "(anonymous callers, and pass-through credentials not yet seen to succeed upstream); "
        "higher asks run at this level.",
    )

    # --- provider quota -------------------------------------------------------------
    quota_rpm: int | None = Field(None, ge=1, description="Requests per minute per model. Unset: unlimited.")
    quota_rpd: int | None = Field(None, ge=1, description="Requests per day per model. Unset: unlimited.")
    quota_tpm: int | None = Field(None, ge=1, description="Tokens per minute per model. Unset: unlimited.")
    quota_tpd: int | None = Field(None, ge=1, description="Tokens per day per model. Unset: unlimited.")
    quota_models: dict[str, ModelQuota] = Field(
        default_factory=dict,
        description="Per-model limits (config file): {model: {rpm, rpd, tpm, tpd}}; "
        "unset keys use the defaults.",
    )
    upstreams: list[UpstreamDeployment] = Field(
        default_factory=list,
        description="Upstream deployments (config file): a pool over several keys, projects and "
        "regions, each with its models and limits; a call is admitted wherever there is room. "
        "Unset: one upstream from upstream_url, google_api_key and google_credentials.",
    )
    upstreams_cross_family: bool = Field(
        False,
        description="Let a generateContent, stream or countTokens call addressed to one API family be "
        "served by a deployment of the other (Gemini API <-> Vertex AI), with that deployment's own "
        "credentials; see docs/architecture.md, 'Upstream deployments', for what differs.",
    )
    fallbacks: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Model fallback chains (config file): {gemini-2.5-pro: [gemini-2.5-flash]}. When no "
        "deployment of a model has room, the next model with room serves the call instead (its answer "
        "says so in X-Knowctl-Model); X-Knowctl-Fallback: off on a request turns it off.",
    )
    overflow_order: dict[
        Literal["LOW", "MEDIUM", "HIGH", "CRITICAL"], list[Literal["stale", "fallback", "queue"]]
    ] = Field(
        default_factory=dict,
        description="What a call gets when no deployment of its model has room, in order, per priority "
        "(config file): {LOW: [stale, fallback]}; a 429 after the last. Unset: stale, fallback, queue.",
    )
    quota_minute_s: float = Field(60.0, gt=0, description="Length of the 'minute' windows, in seconds.")
    quota_day_s: float = Field(86400.0, gt=0, description="Length of the rolling 'day' windows, in seconds.")
    quota_day_tz: str | None = Field(
        None,
        description="Make the day windows calendar days that reset at midnight in this zone "
        "(the Gemini API: America/Los_Angeles). Unset: rolling windows.",
    )
    quota_tokens: Literal["input", "total"] = Field(
        "input", description="What TPM/TPD count: input (prompt) tokens, as Google does, or total tokens."
    )
    token_estimator: Literal["bytes", "count_tokens"] = Field(
        "bytes",
        description="How tokens are reserved before a call: UTF-8 bytes / token_bytes_per_token, "
        "or an exact countTokens call upstream.",
    )
    token_bytes_per_token: float = Field(4.0, gt=0, description="Divisor of the bytes estimator.")
    default_max_output_tokens: int = Field(
        8192,
        ge=1,
        description="Output tokens reserved in total-token mode when a request sets no maxOutputTokens.",
    )
    priority_shares: str = Field(
        "LOW=0.6,MEDIUM=1.0,HIGH=1.0,CRITICAL=1.0",
        description="Share of each window a priority may fill (headroom for higher priorities).",
    )
    default_priority: Literal["LOW", "MEDIUM", "HIGH", "CRITICAL"] = Field(
        "MEDIUM", description="Priority of requests without an X-Knowctl-Priority header."
    )
    queue_size: int = Field(100, ge=0, description="Requests that may wait for quota, per daemon.")
    queue_per_caller: int = Field(
        10,
        ge=1,
        description="Places of the quota wait queue one caller (a key's user, a pass-through "
        "credential, an address) may hold at once, per daemon; over it that caller gets a 429 "
        "while others still queue.",
    )
    queue_timeout: float = Field(30.0, gt=0, description="Seconds a request may wait for quota before a 429.")
    upstream_backoff_s: float = Field(
        1.0, gt=0, description="First back-off after an upstream 429 without RetryInfo; doubles per repeat."
    )
    upstream_backoff_max_s: float = Field(60.0, gt=0, description="Longest back-off after upstream 429s.")

    # --- cache ------------------------------------------------------------------------
    cache_enabled: bool = Field(True, description="Cache complete successful answers.")
    cache_l1_ttl: float = Field(600.0, gt=0, description="Seconds an answer stays in the in-process cache.")
    cache_l1_max_entries: int = Field(10_000, ge=0, description="Entries kept in the in-process cache.")
    cache_l1_max_bytes: int = Field(64 * 1024 * 1024, ge=0, description="Bytes kept in the in-process cache.")
    cache_l2_ttl: float = Field(3600.0, gt=0, description="Seconds an answer stays in the shared store.")
    cache_stale_ttl: float = Field(
        3600.0,
        ge=0,
        description="Seconds a stale copy is kept past the TTL, for fallback when quota runs out.",
    )
    cache_scope: Literal["shared", "user", "tier"] = Field(
        "user",
        description="Who is served an answer cached for another caller: user (nobody else: each key "
        "user, and each address in anonymous mode, has its own), tier (users of one tier), shared "
        "(everyone: saves the most, but a caller learns from X-Knowctl-Cache and Age what others "
        "asked and when). Pass-through credentials always have their own.",
    )
    coalesce_timeout: float = Field(
        30.0, gt=0, description="Seconds identical concurrent requests wait for the first one's answer."
    )
    cache_embeddings_ttl: float = Field(
        7 * 86400.0,
        gt=0,
        description="Seconds one text's embedding is kept (each text of a batch on its own, in memory "
        "within the in-process cache's bounds and in the shared store).",
    )
    interactions_ttl: float = Field(
        55 * 86400.0,
        gt=0,
        description="Seconds the gateway remembers who created an interaction (only its owner may read, "
        "cancel, delete or continue it); Google keeps stored interactions up to 55 days.",
    )

    upload_bytes_per_day: int = Field(
        20 * 1024**3,
        ge=0,
        description="File bytes one caller may upload in any 24 hours, counted per chunk across "
        "every daemon (0: no limit); past it a chunk is refused with a 429 and Retry-After.",
    )

    # --- Live API (WebSocket) --------------------------------------------------------------
    live_max_message_bytes: int = Field(
        16 * 1024 * 1024,
        ge=1024,
        description="Largest Live API WebSocket message, in bytes, either way; a larger one "
        "closes the session (1009).",
    )
    live_max_session_s: float = Field(
        900.0,
        gt=0,
        description="Longest a Live API session may stay open, in seconds; then it is closed "
        "(1008, with the reason).",
    )
    live_max_sessions_per_user: int = Field(
        5,
        ge=1,
        description="Live API sessions one caller may hold open at once on one daemon; one more "
        "is refused with close code 1008 and the reason.",
    )
    live_setup_timeout_s: float = Field(
        10.0,
        gt=0,
        description="How long a new Live API session may take to send its setup message before "
        "it is closed (1008).",
    )

    # --- topics -----------------------------------------------------------------------
    topics_model: str = Field("gemini-2.5-flash", description="Model that generates topic content.")
    topics_prompt_template: str = Field(
        "Write a clear, accurate introduction to {{ topic }} for a curious reader, in about 200 words.",
        description="Jinja template of the topic prompt; {{ topic }} is the topic name.",
    )
    topics_public: bool = Field(True, description="Serve topics with public browser/CDN cache headers.")
    topics_browser_max_age: int = Field(300, ge=0, description="Cache-Control max-age of topic answers.")
    topics_cdn_max_age: int = Field(1800, ge=0, description="CDN-Cache-Control max-age of topic answers.")
    topics_popular_threshold: int = Field(
        10, ge=1, description="Requests within the popularity window that make a topic popular."
    )
    topics_popular_window_s: float = Field(3600.0, gt=0, description="Window of the topic request counts.")
    topics_refresh_fraction: float = Field(
        0.8, gt=0, lt=1, description="Refresh a popular topic once this fraction of its TTL has passed."
    )
    topics_refresh_interval: float = Field(
        300.0, gt=0, description="Seconds between popular-topic refresh checks."
    )
    topics_generate: Literal["keys", "allowlist", "anyone", "none"] | None = Field(
        None,
        description="Who may make GET /topics/{topic} generate a topic that is not cached: keys "
        "(callers with a valid gateway key), allowlist (anyone, but only the topics in "
        "topics_allowed), anyone, or none (only knowctl topics prewarm). Cached topics are public "
        "in every mode. Unset: keys in keys auth mode, anyone otherwise.",
    )
    topics_allowed: Annotated[list[str], NoDecode] = Field(
        [],
        description="Topics anyone may have generated under topics_generate=allowlist (only these) "
        "or keys (these without a key): comma-separated names, or a list in the config file.",
    )
    vertex_project: str | None = Field(
        None, description="Vertex project for topic generation (else Gemini API)."
    )
    vertex_location: str = Field("global", description="Vertex location for topic generation.")
    cdn_purge_url: str | None = Field(
        None,
        description="Cloudflare-style purge API base (https://api.cloudflare.com/client/v4); "
        "unset: no CDN purge (or KNOWCTL_CDN_PURGE_URL_FILE).",
    )
    cdn_zone_id: str | None = Field(None, description="CDN zone whose cache is purged.")
    cdn_api_token: SecretStr | None = Field(
        None, description="CDN API token (or KNOWCTL_CDN_API_TOKEN_FILE)."
    )
    public_base_url: str | None = Field(
        None,
        description="Public URL of the gateway, used to name purged topic URLs (https://gw.example.com).",
    )

    # --- admin -------------------------------------------------------------------
    admin_token: SecretStr | None = Field(
        None,
        description="Bearer token for the admin API (or KNOWCTL_ADMIN_TOKEN_FILE). Unset: admin "
        "endpoints answer only on loopback.",
    )
    url: str = Field("http://127.0.0.1:8080", description="Where the admin CLI finds the daemon.")

    @field_validator("max_buffered_bytes")
    @classmethod
    def _check_buffered(cls, value: int, info: ValidationInfo) -> int:
        body = info.data.get("max_body_bytes")
        if body is not None and value < body:
            raise ValueError(f"must be at least max_body_bytes ({body}): a larger body could never be held")
        return value

    @field_validator("upstream_url")
    @classmethod
    def _check_upstream_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        assert value is not None
        return _check_http_url(value).rstrip("/")

    @field_validator("upstreams")
    @classmethod
    def _check_upstreams(
        cls, value: list[UpstreamDeployment], info: ValidationInfo
    ) -> list[UpstreamDeployment]:
        if not value:
            return value
        names = [d.name for d in value]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"deployment names must be unique: {', '.join(twice)}")
        single = [n for n in ("upstream_url", "google_api_key", "google_credentials") if info.data.get(n)]
        if single:
            raise ValueError(f"set either upstreams or {', '.join(single)} (the pool of one), not both")
        limits = [n for n in ("quota_rpm", "quota_rpd", "quota_tpm", "quota_tpd") if info.data.get(n)]
        limits += [
            f"quota_models.{m}"
            for m, q in (info.data.get("quota_models") or {}).items()
            if any(getattr(q, w) is not None for w in ("rpm", "rpd", "tpm", "tpd"))
        ]
        if limits:
            raise ValueError(
                "with upstreams the limits are each deployment's (upstreams[].models): "
                f"drop {', '.join(limits)}"
            )
        return value

    @field_validator("fallbacks")
    @classmethod
    def _check_fallbacks(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        from knowctl.policy.fallback import check_chains

        for name in (n for chain in value.items() for n in (chain[0], *chain[1])):
            if not _MODEL_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a model name")
        check_chains(value)
        return value

    @model_validator(mode="after")
    def _check_tls(self) -> Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together: set both or neither")
        for path in (self.tls_cert_file, self.tls_key_file):
            if path is not None and not path.is_file():
                raise ValueError(f"TLS file {path} does not exist")
        if self.tls_cert_file is not None and self.simulate:
            raise ValueError("--simulate serves its built-in upstream over plain HTTP: leave TLS unset")
        return self

    @field_validator("cdn_purge_url")
    @classmethod
    def _check_cdn_purge_url(cls, value: str | None) -> str | None:
        return _check_http_url(value) if value else None

    @field_validator("store_url")
    @classmethod
    def _check_store_url(cls, value: str) -> str:
        from knowctl.store.urls import check_store_url  # no redis-py import: keeps the CLI fast

        return check_store_url(value)

    @field_validator("allowed_actions")
    @classmethod
    def _check_actions(cls, value: str) -> str:
        for name in (item.strip() for item in value.split(",")):
            if name and not _ACTION_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not an action name (letters only, as in embedContent)")
        return value

    @property
    def allowed_action_names(self) -> frozenset[str]:
        return frozenset(item.strip() for item in self.allowed_actions.split(",") if item.strip())

    @field_validator("user_limits", "ip_limits")
    @classmethod
    def _check_limit_spec(cls, value: str) -> str:
        parse_limits(value)
        return value

    @field_validator("priority_shares")
    @classmethod
    def _check_shares(cls, value: str) -> str:
        parse_shares(value)
        return value

    @field_validator("quota_day_tz")
    @classmethod
    def _check_tz(cls, value: str | None) -> str | None:
        if value:
            zone(value)
        return value or None

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, value: str) -> str:
        import ipaddress

        for item in filter(None, (part.strip() for part in value.split(","))):
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or CIDR") from None
        return value

    @field_validator("topics_allowed", mode="before")
    @classmethod
    def _split_topics(cls, value: Any) -> Any:
        if isinstance(value, str):  # the environment's form: comma-separated
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("topics_allowed")
    @classmethod
    def _check_topics(cls, value: list[str]) -> list[str]:
        from knowctl.policy.cachekey import check_topic

        return list(dict.fromkeys(check_topic(topic) for topic in value))

    def __repr_args__(self) -> Any:
        # repr() ends up in tracebacks and debug logs: no URL password in it.
        from knowctl.redact import redact_url

        for name, value in super().__repr_args__():
            if name in CREDENTIAL_URL_FIELDS and isinstance(value, str):
                value = redact_url(value)
            yield name, value

    def redacted(self) -> dict[str, Any]:
        """Every setting as JSON-ready values, safe to print: secrets as ``***`` (None when
        unset), passwords inside URLs as ``***``."""
        from knowctl.redact import redact_text, redact_url

        values = self.model_dump(mode="json")
        for name, value in values.items():
            if name in SECRET_FIELDS:
                values[name] = "***" if value else None
            elif isinstance(value, str):
                values[name] = redact_url(value) if name in CREDENTIAL_URL_FIELDS else redact_text(value)
        return values

    def resolved_auth_mode(self, holds_credentials: bool) -> str:
        """The auth mode in force: explicit, or the safe default for these credentials."""
        if self.auth_mode is not None:
            return self.auth_mode
        if self.simulate:
            return "anonymous"
        return "keys" if holds_credentials else "passthrough"

    def resolved_topics_generate(self, auth_mode: str) -> str:
        """Who may have a topic generated: explicit, or the safe default for ``auth_mode``
        (in keys mode a MISS would spend the gateway's own credentials)."""
        if self.topics_generate is not None:
            return self.topics_generate
        return "keys" if auth_mode == "keys" else "anyone"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            _SecretFileSource(settings_cls),
            _YamlFileSource(settings_cls),
        )


SECRET_FIELDS = frozenset(
    name for name, f in Settings.model_fields.items() if f.annotation in (SecretStr, SecretStr | None)
)


def _check_http_url(value: str) -> str:
    from knowctl.redact import check_authority

    if not value.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    check_authority(value)
    from urllib.parse import urlsplit

    if not urlsplit(value).hostname:
        raise ValueError("needs a host after '//'")
    return value


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build Settings; ``overrides`` are CLI flags (None means 'not given')."""
    given = {k: v for k, v in overrides.items() if v is not None}
    token = _config_file.set(config_file)
    try:
        return Settings(**given)
    finally:
        _config_file.reset(token)
