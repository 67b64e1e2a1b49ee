"""A small worker's allocator settings leave it room under distributed's pause threshold."""

from __future__ import annotations

import os

import pytest

import xgpp
from xgpp.cluster import MALLOC_TOP_PAD, MALLOC_TRIM_THRESHOLD, worker_environment

GiB = 2**30


def test_retained_heap_is_capped_by_the_worker_memory_limit():
    small = worker_environment(1, memory_limit=1 * GiB)
    assert int(small["MALLOC_TRIM_THRESHOLD_"]) == GiB // 16
    assert int(small["MALLOC_TOP_PAD_"]) == GiB // 16
    # a large worker keeps the measured fast settings; no limit means no cap
    for limit in (64 * GiB, None):
        env = worker_environment(1, memory_limit=limit)
        assert int(env["MALLOC_TRIM_THRESHOLD_"]) == MALLOC_TRIM_THRESHOLD
        assert int(env["MALLOC_TOP_PAD_"]) == MALLOC_TOP_PAD


@pytest.mark.timeout(120)
def test_local_workers_with_a_1gib_limit_start_with_the_capped_settings():
    with xgpp.cluster("local", n_workers=1, threads_per_worker=1, memory_limit="1GiB",
                      dashboard_address=None) as client:
        env = next(iter(client.run(lambda: {k: os.environ.get(k) for k in (
            "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")}).values()))
        limit = next(iter(client.scheduler_info()["workers"].values()))["memory_limit"]
    assert limit == GiB
    assert env == {"MALLOC_TRIM_THRESHOLD_": str(GiB // 16), "MALLOC_TOP_PAD_": str(GiB // 16)}


@pytest.mark.timeout(120)
def test_the_workers_profiler_is_off_unless_asked_for():
    def enabled():
        import dask

        return dask.config.get("distributed.worker.profile.enabled")

    for profile in (False, True):
        with xgpp.cluster("local", n_workers=1, threads_per_worker=1, memory_limit="1GiB",
                          dashboard_address=None, profile=profile) as client:
            got = next(iter(client.run(enabled).values()))
        assert got is profile


@pytest.mark.timeout(120)
def test_a_second_cluster_gets_its_own_settings_not_the_first_ones():
    # distributed's nanny copies pre-spawn-environ into this process's os.environ and prefers
    # it next time; xgpp restores the environment when a cluster closes
    before = os.environ.get("MALLOC_TRIM_THRESHOLD_")
    with xgpp.cluster("local", n_workers=1, threads_per_worker=1, memory_limit="1GiB",
                      dashboard_address=None):
        pass
    assert os.environ.get("MALLOC_TRIM_THRESHOLD_") == before
    with xgpp.cluster("local", n_workers=1, threads_per_worker=1, memory_limit="64GiB",
                      dashboard_address=None) as client:
        got = set(client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_")).values())
    assert got == {str(MALLOC_TRIM_THRESHOLD)}
