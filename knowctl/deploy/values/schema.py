"""The values schema for ``knowctl deploy render``: the root ``Values`` and its Secret section.

Defaults here and in the sections (:mod:`~knowctl.deploy.values.workloads`,
:mod:`~knowctl.deploy.values.kubernetes`, :mod:`~knowctl.deploy.values.compose`) are the
documented production defaults. A values file (YAML) and ``--set a.b=c`` overrides are merged
on top and validated (:mod:`~knowctl.deploy.values.loading`); a bad value is a
:class:`~knowctl.deploy.values.base.ValuesError` whose message names the dotted key. Gateway
*settings* are not re-declared here: ``settings`` is checked against
:class:`knowctl.settings.Settings` itself, so the ConfigMap always carries exactly the options
the daemon knows.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from knowctl.deploy.values.base import StrictSection
from knowctl.deploy.values.compose import Compose
from knowctl.deploy.values.kubernetes import Ingress, NetworkPolicy
from knowctl.deploy.values.workloads import Gateway, Image, Redis
from knowctl.settings import CREDENTIAL_URL_FIELDS, SECRET_FIELDS, Settings

# Settings the Secret may hold as files: the secrets, and the URLs that may carry a password.
FILE_FIELDS = SECRET_FIELDS | CREDENTIAL_URL_FIELDS


class Secret(StrictSection):
    create: bool = Field(
        default=True,
        description="Render a placeholder Secret; false when sealed-secrets/External Secrets own it.",
    )
    name: str = Field(default="knowctl-secrets", description="Secret holding the gateway's secret settings.")
    fields: list[str] | None = Field(
        default=None,
        description="Secret settings mounted as files (KNOWCTL_<NAME>_FILE); each must be in the Secret. "
        "Unset: the ones the values use (admin_token; google_api_key unless "
        "settings.google_credentials is set; cdn_api_token when settings.cdn_purge_url is). "
        "May also name store_url, upstream_url or cdn_purge_url, to keep a URL with a password "
        "out of the values entirely.",
    )

    @field_validator("fields")
    @classmethod
    def _known(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        unknown = sorted(set(value) - FILE_FIELDS)
        if unknown:
            raise ValueError(f"not secret settings: {', '.join(unknown)}")
        return list(dict.fromkeys(value))


class Values(StrictSection):
    """Everything ``knowctl deploy render`` reads. See docs/deploy-*.md."""

    name: str = Field(
        default="knowctl", pattern=r"^[a-z]([-a-z0-9]{0,40}[a-z0-9])?$", description="Object name."
    )
    namespace: str = Field(
        default="knowctl", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", description="Kubernetes namespace."
    )
    image: Image = Field(default_factory=Image, description="The gateway image.")
    gateway: Gateway = Field(default_factory=Gateway, description="The gateway workload.")
    redis: Redis = Field(default_factory=Redis, description="The bundled Redis.")
    ingress: Ingress = Field(default_factory=Ingress, description="Kubernetes Ingress.")
    network_policy: NetworkPolicy = Field(
        default_factory=NetworkPolicy, description="Kubernetes NetworkPolicies."
    )
    secret: Secret = Field(default_factory=Secret, description="The gateway's secret settings.")
    compose: Compose = Field(default_factory=Compose, description="Compose-only services.")
    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="Gateway settings (names as in knowctl.settings.Settings); secrets are refused.",
    )

    @field_validator("settings")
    @classmethod
    def _no_secrets(cls, value: dict[str, Any]) -> dict[str, Any]:
        leaked = sorted(set(value) & SECRET_FIELDS)
        if leaked:
            raise ValueError(f"{', '.join(leaked)} is a secret: put it in the Secret, never in values")
        unknown = sorted(set(value) - set(Settings.model_fields))
        if unknown:
            raise ValueError(f"unknown setting(s) {', '.join(unknown)}")
        for i, deployment in enumerate(value.get("upstreams") or []):
            if isinstance(deployment, dict) and deployment.get("api_key"):
                raise ValueError(
                    f"upstreams.{i}.api_key is a secret: leave it out, and put it in the Secret as "
                    f"upstream-{deployment.get('name', '<name>')}-api-key (the render reads it from there)"
                )
        return value

    @model_validator(mode="after")
    def _one_source_per_url(self) -> Values:
        both = sorted(set(self.secret.fields or ()) & set(self.settings))
        if both:
            raise ValueError(
                f"{', '.join(both)}: in secret.fields (read from the Secret) and in settings; give one"
            )
        return self
