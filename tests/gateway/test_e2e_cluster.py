"""The quota-accuracy and cache e2e tests, unchanged, with their daemons on a real 3-master
Redis Cluster instead of the single server.

The test functions and their fixtures are imported, not copied: only ``redis_url`` (the
store every daemon of those tests is started with) is overridden for this module. The
selection keeps the suite's time modest: the burst tests of provider quota (RPM, priority
share, TPM) and the cache's cross-daemon L2 hit, invalidation and coalescing.
"""

from __future__ import annotations

import pytest

from tests.gateway.test_cache_e2e import (
    pair,
    test_50_concurrent_identical_requests_across_two_daemons_reach_the_simulator_once,
    test_an_entry_cached_by_one_daemon_is_an_l2_hit_on_the_other,
    test_cli_invalidate_makes_both_daemons_miss_l1_included,
)
from tests.gateway.test_quota_e2e import (
    daemons,
    test_low_priority_stops_at_its_share_and_critical_gets_the_rest,
    test_rpm_burst_over_three_daemons_uses_the_whole_limit_and_no_more,
    test_tpm_burst_with_varied_prompt_sizes,
)

__all__ = [
    "daemons",
    "pair",
    "test_50_concurrent_identical_requests_across_two_daemons_reach_the_simulator_once",
    "test_an_entry_cached_by_one_daemon_is_an_l2_hit_on_the_other",
    "test_cli_invalidate_makes_both_daemons_miss_l1_included",
    "test_low_priority_stops_at_its_share_and_critical_gets_the_rest",
    "test_rpm_burst_over_three_daemons_uses_the_whole_limit_and_no_more",
    "test_tpm_burst_with_varied_prompt_sizes",
]


@pytest.fixture
def redis_url(redis_cluster_url: str) -> str:
    """The store of every daemon started by the imported tests: the session's Cluster."""
    return redis_cluster_url
