"""What the topic API needs of the settings: ``TopicsConfig``, the slice ``TopicService``
takes (built by knowctl.daemon.config.topics_config), with the CDN purge's own slice in it."""

from __future__ import annotations

from dataclasses import dataclass

from knowctl.daemon.topics.cdn import CdnConfig


@dataclass(frozen=True, slots=True)
class TopicsConfig:
    """What the topic API needs of the settings (built by knowctl.daemon.config.topics_config);
    each field has the name of the setting it comes from, ``topics_generate`` resolved."""

    auth_mode: str  # the auth mode in force
    topics_generate: str  # keys, allowlist, anyone or none
    topics_allowed: frozenset[str]
    topics_prompt_template: str
    topics_model: str
    topics_public: bool
    topics_browser_max_age: int
    topics_cdn_max_age: int
    topics_popular_threshold: int
    topics_popular_window_s: float
    topics_refresh_fraction: float
    topics_refresh_interval: float
    vertex_project: str | None
    vertex_location: str
    cdn: CdnConfig
