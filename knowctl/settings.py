"""The one source of every knowctl option.

Values come, highest priority first, from: CLI flags (passed as keyword arguments to
:func:`load_settings`), environment variables ``KNOWCTL_*``, secret files named by
``KNOWCTL_<NAME>_FILE`` (Docker and Kubernetes secrets), the YAML config file
(``--config`` or ``KNOWCTL_CONFIG``), and the defaults declared here. Nothing else in the
package re-declares the list of options: the README's configuration table, the rendered
ConfigMap and the CLI all read it from :class:`Settings`.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, SecretStr, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "KNOWCTL_"

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
    """``KNOWCTL_<NAME>_FILE=/run/secrets/x`` supplies a secret setting from that file."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, field in self.settings_cls.model_fields.items():
            if field.annotation not in (SecretStr, SecretStr | None):
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


class Settings(BaseSettings):
    """Every option of the daemon and the admin CLI. Field docs become the reference."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", validate_default=True, case_sensitive=False
    )

    # --- serving ---------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Address the daemon listens on.")
    port: int = Field(8080, ge=0, le=65535, description="Port the daemon listens on.")
    workers: int = Field(1, ge=1, le=64, description="Worker processes sharing the port.")
    simulate: bool = Field(
        False, description="Run the built-in simulator in-process and use it as the upstream."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    log_format: Literal["auto", "json", "text"] = Field(
        "auto", description="Log format: JSON lines, human text, or auto (text on a terminal)."
    )
    max_body_bytes: int = Field(
        10 * 1024 * 1024, ge=1024, description="Largest request body accepted, in bytes."
    )

    # --- upstream ----------------------------------------------------------------
    upstream_url: str | None = Field(
        None,
        description="Replace scheme, host and port (plus an optional base path) of every upstream "
        "call; unset sends each API family to Google's own host.",
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
        description="Shared state: memory:// (one process), redis://, rediss:// "
        "(redis+sentinel:// and redis+cluster:// planned).",
    )
    store_timeout: float = Field(
        0.25, gt=0, description="Seconds any single store (Redis) call may take."
    )

    # --- admin -------------------------------------------------------------------
    admin_token: SecretStr | None = Field(
        None,
        description="Bearer token for the admin API (or KNOWCTL_ADMIN_TOKEN_FILE). Unset: admin "
        "endpoints answer only on loopback.",
    )
    url: str = Field(
        "http://127.0.0.1:8080", description="Where the admin CLI finds the daemon."
    )

    @field_validator("upstream_url")
    @classmethod
    def _check_upstream_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        assert value is not None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("store_url")
    @classmethod
    def _check_store_url(cls, value: str) -> str:
        scheme = value.split("://", 1)[0] if "://" in value else ""
        if scheme not in ("memory", "redis", "rediss"):
            raise ValueError("must be memory://, redis://host:port/db or rediss://...")
        return value

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


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build Settings; ``overrides`` are CLI flags (None means 'not given')."""
    given = {k: v for k, v in overrides.items() if v is not None}
    token = _config_file.set(config_file)
    try:
        return Settings(**given)
    finally:
        _config_file.reset(token)
