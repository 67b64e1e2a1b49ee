"""Tests for xgpp.cluster: local, address, gateway (real server on loopback) and cuda back ends."""

from __future__ import annotations

import os
import time

import dask.array as da
import numpy as np
import pytest

import xgpp
from xgpp import cluster as cluster_mod
from xgpp.cluster import (
    BACKENDS,
    AddressBackend,
    ClusterBackend,
    CUDABackend,
    GatewayBackend,
    LocalBackend,
    resolve_kind,
)


def _compute_sum(client) -> float:
    x = da.arange(1000, chunks=100, dtype="f8")
    return float(client.compute(x.sum()).result(timeout=60))


# --------------------------------------------------------------------------- registry, resolution


def test_gateway_without_address_says_how_to_set_it(monkeypatch):
    pytest.importorskip("dask_gateway")
    import dask

    with dask.config.set({"gateway.address": None}):
        with pytest.raises(ValueError, match="DASK_GATEWAY__ADDRESS"):
            GatewayBackend().start()


def test_public_entry_point_is_the_module():
    assert xgpp.cluster is cluster_mod  # calling it is tested in test_public_api


@pytest.mark.parametrize("cls", [LocalBackend, CUDABackend, GatewayBackend, AddressBackend])
def test_every_backend_is_registered_and_closes_safely_before_start(cls):
    """The ClusterBackend contract: registered under its kind, ``close`` safe before ``start``."""
    import dask

    assert set(BACKENDS) == {"local", "cuda", "gateway", "address"}
    assert BACKENDS[cls.kind] is cls and resolve_kind(cls.kind) == (cls.kind, {})
    for method in ("start", "close"):
        assert callable(getattr(cls, method)) and method in vars(ClusterBackend)
    before = dask.config.get("distributed.nanny.pre-spawn-environ", None)
    instance = cls(address="tcp://127.0.0.1:1") if cls is AddressBackend else cls()
    assert instance.client is None and instance.cluster is None
    instance.close()
    instance.close()  # twice is fine too
    assert instance.client is None and instance.cluster is None
    assert dask.config.get("distributed.nanny.pre-spawn-environ", None) == before


def test_close_after_a_failed_start_releases_everything():
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{sock.getsockname()[1]}"
    backend = AddressBackend(address=address, timeout=1)
    with pytest.raises(ConnectionError, match=rf"no Dask scheduler answered at '{address}'"):
        backend.start()
    backend.close()
    assert backend.client is None and backend.cluster is None


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("local", ("local", {})),
        ("gateway", ("gateway", {})),
        ("tcp://10.0.0.5:8786", ("address", {"address": "tcp://10.0.0.5:8786"})),
        ("scheduler.example.org:8786", ("address", {"address": "scheduler.example.org:8786"})),
    ],
)
def test_resolve_kind(kind, expected):
    assert resolve_kind(kind) == expected


def test_auto_is_local_without_gpu(monkeypatch):
    monkeypatch.setattr(cluster_mod, "gpu_available", lambda: False)
    assert resolve_kind("auto") == ("local", {})
    assert resolve_kind(None) == ("local", {})


def test_auto_is_cuda_with_gpu_and_dask_cuda(monkeypatch):
    monkeypatch.setattr(cluster_mod, "gpu_available", lambda: True)
    monkeypatch.setattr(cluster_mod, "_dask_cuda_importable", lambda: True)
    assert resolve_kind("auto") == ("cuda", {})


def test_auto_on_a_gpu_node_without_dask_cuda(monkeypatch):
    monkeypatch.setattr(cluster_mod, "gpu_available", lambda: True)
    monkeypatch.setattr(cluster_mod, "_dask_cuda_importable", lambda: False)
    monkeypatch.setattr(cluster_mod, "available_cores", lambda: 16)
    assert resolve_kind("auto") == ("cuda", {})  # several processes per GPU: no dask-cuda
    # options that need dask-cuda, or too few cores to split a GPU: local workers
    assert resolve_kind("auto", {"n_workers": 2}) == ("local", {})
    monkeypatch.setattr(cluster_mod, "available_cores", lambda: 4)
    assert resolve_kind("auto") == ("local", {})


def test_unknown_kind_lists_choices():
    with pytest.raises(ValueError, match=r"unknown cluster kind 'bogus'.*'local'"):
        resolve_kind("bogus")


# --------------------------------------------------------------------------- local


def test_local_sizing_and_worker_environment():
    backend = LocalBackend(n_workers=2, threads_per_worker=3)
    assert (backend.n_workers, backend.threads_per_worker) == (2, 3)
    assert backend.env["OMP_NUM_THREADS"] == "3"
    assert backend.env["MKL_NUM_THREADS"] == "3"
    assert int(backend.env["MALLOC_MMAP_THRESHOLD_"]) >= 16 * 2**20
    assert int(backend.env["MALLOC_TRIM_THRESHOLD_"]) > 65536
    n, t = LocalBackend.sizing(None, None)
    assert n >= 1 and t >= 1
    assert LocalBackend(env={"OMP_NUM_THREADS": 7}).env["OMP_NUM_THREADS"] == "7"


def test_local_cluster_computes_with_worker_environment(monkeypatch):
    import dask

    # distributed lets a variable already set in this process's environment win over
    # pre-spawn-environ (nanny._get_env_variables), so run as a shell without them would
    for name in ("OMP_NUM_THREADS", "MALLOC_MMAP_THRESHOLD_"):
        monkeypatch.delenv(name, raising=False)
    before = dask.config.get("distributed.nanny.pre-spawn-environ", None)
    with xgpp.cluster("local", n_workers=1, threads_per_worker=2, dashboard_address=":0") as client:
        assert _compute_sum(client) == float(np.arange(1000).sum())

        def env():
            import os

            return {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MALLOC_MMAP_THRESHOLD_")}

        seen = client.run(env)
        assert len(seen) == 1
        (worker_env,) = seen.values()
        assert worker_env == {
            "OMP_NUM_THREADS": "2",
            "MALLOC_MMAP_THRESHOLD_": str(cluster_mod.MALLOC_MMAP_THRESHOLD),
        }
        cluster = client.cluster
    assert client.status == "closed"
    assert cluster.status.name == "closed"
    # the worker environment was set for this cluster only
    assert dask.config.get("distributed.nanny.pre-spawn-environ", None) == before


def test_local_cluster_closes_when_body_raises():
    with pytest.raises(RuntimeError, match="boom"):
        with cluster_mod.cluster(
            "local", n_workers=1, processes=False, dashboard_address=":0"
        ) as client:
            raise RuntimeError("boom")
    assert client.status == "closed"


# --------------------------------------------------------------------------- address


def test_unreachable_address_fails_fast_and_clearly():
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{sock.getsockname()[1]}"
    start = time.monotonic()
    with pytest.raises(ConnectionError, match=rf"no Dask scheduler answered at '{address}'"):
        with xgpp.cluster(address, timeout=1):
            pass
    assert time.monotonic() - start < 10


def test_address_connects_to_running_scheduler():
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as lc:
        with xgpp.cluster(lc.scheduler_address) as client:
            assert _compute_sum(client) == float(np.arange(1000).sum())
        assert client.status == "closed"
        assert lc.status.name == "running"  # connecting does not own the cluster


# --------------------------------------------------------------------------- gateway


@pytest.mark.requires_gateway
def test_gateway_cluster_computes(gateway_server):
    _, options = gateway_server
    with xgpp.cluster("gateway", n_workers=1, **options) as client:
        client.wait_for_workers(1, timeout=60)
        assert _compute_sum(client) == float(np.arange(1000).sum())
    # the context manager shut the gateway cluster down: none is left on the server
    from dask_gateway import Gateway
    from dask_gateway.auth import BasicAuth

    with Gateway(
        options["address"],
        proxy_address=options["proxy_address"],
        auth=BasicAuth(options["username"], options["password"]),
    ) as gw:
        assert gw.list_clusters() == []


@pytest.mark.requires_gateway
def test_gateway_wrong_password_is_a_clear_error(gateway_server):
    address, options = gateway_server
    bad = {**options, "password": "not-the-password"}
    with pytest.raises(PermissionError, match=rf"{address} refused authentication.*BasicAuth"):
        with xgpp.cluster("gateway", **bad):
            pass


def test_gateway_missing_package_names_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "dask_gateway" or name.startswith("dask_gateway."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r"xgpp\[cloud\]"):
        GatewayBackend(address="http://127.0.0.1:1").start()


# --------------------------------------------------------------------------- cuda


def test_cuda_missing_package_names_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "dask_cuda":
            raise ImportError("No module named 'dask_cuda'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r"xgpp\[gpu\]"):
        CUDABackend().start()


@pytest.mark.parametrize(
    ("cores", "gpus", "options", "expected"),
    [
        (16, "0", {}, (4, 4)),  # the H200 node: 4 processes of 4 threads feed one GPU
        (16, "0,1", {}, (2, 4)),
        (4, "0", {}, (1, 4)),  # too few cores to split: dask-cuda, one worker
        (16, "0", {"processes_per_gpu": 1}, (1, 16)),
        (16, "0", {"processes_per_gpu": 2, "threads_per_worker": 3}, (2, 3)),
        (16, "0", {"rmm_pool_size": "1GB"}, (1, 16)),  # dask-cuda options: dask-cuda
    ],
)
def test_cuda_sizing_feeds_each_gpu_from_several_processes(monkeypatch, cores, gpus, options,
                                                          expected):
    monkeypatch.setattr(cluster_mod, "available_cores", lambda: cores)
    backend = CUDABackend(CUDA_VISIBLE_DEVICES=gpus, **options)
    assert backend.gpus() == gpus.split(",")
    assert backend.sizing() == expected


def test_cuda_options_that_need_dask_cuda_are_refused_with_several_processes():
    with pytest.raises(ValueError, match=r"\['rmm_pool_size'\].*processes_per_gpu=1"):
        CUDABackend(processes_per_gpu=4, rmm_pool_size="1GB").sizing()
    with pytest.raises(ValueError, match="processes_per_gpu must be >= 1"):
        CUDABackend(processes_per_gpu=0)


def test_gpu_process_cluster_gives_each_worker_its_gpu():
    """Real worker processes (no GPU needed to check the wiring): one GPU id per worker."""
    from distributed import Client

    with cluster_mod.gpu_process_cluster(["0", "1"], 1, 1) as spec, Client(spec) as client:
        seen = client.run(lambda: os.environ["CUDA_VISIBLE_DEVICES"])
        names = {w["name"]: w["id"] for w in client.scheduler_info()["workers"].values()}
        assert sorted(seen.values()) == ["0", "1"]
        assert sorted(names) == ["gpu0-0", "gpu1-0"]
        # loopback only, like LocalCluster; allocator settings present when the worker started
        assert spec.scheduler_address.startswith("tcp://127.0.0.1:")
        assert all(a.startswith("tcp://127.0.0.1:") for a in seen)
        trim = client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_"))
        assert set(trim.values()) == {str(cluster_mod.MALLOC_TRIM_THRESHOLD)}
        assert _compute_sum(client) == float(np.arange(1000).sum())


@pytest.mark.requires_gpu
def test_cuda_cluster_computes():
    if not cluster_mod.gpu_available():
        pytest.skip("no CUDA GPU visible through NVML/torch")
    pytest.importorskip("dask_cuda")
    with xgpp.cluster("cuda") as client:
        assert _compute_sum(client) == float(np.arange(1000).sum())
    with xgpp.cluster("cuda", processes_per_gpu=1) as client:  # dask-cuda
        assert _compute_sum(client) == float(np.arange(1000).sum())
