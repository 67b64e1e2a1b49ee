"""Shared fixtures: real servers on loopback (moto S3, dask-gateway-server).

Both servers are session-scoped and start only when a test asks for them.  Each fixture skips
cleanly (``pytest.importorskip``) when the package it needs is not installed.
"""

from __future__ import annotations

import gc
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

#: Credentials moto accepts (any non-empty value works; "testing" is the moto convention).
S3_KEY = "testing"
S3_SECRET = "testing"
#: Password of the loopback gateway's SimpleAuthenticator.
GATEWAY_PASSWORD = "xgpp-test-password"
GATEWAY_USER = "xgpp"


def free_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- markers


def _gpu_visible() -> bool:
    from xgpp.cluster import gpu_available

    if gpu_available():
        return True
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001
        return False


def pytest_collection_modifyitems(config, items):
    """Skip ``requires_gpu`` tests when no CUDA GPU is visible (NVML or torch)."""
    gpu_items = [item for item in items if item.get_closest_marker("requires_gpu")]
    if gpu_items and not _gpu_visible():
        skip = pytest.mark.skip(reason="requires_gpu: no CUDA GPU visible (NVML/torch.cuda)")
        for item in gpu_items:
            item.add_marker(skip)


# --------------------------------------------------------------------------- environment


@pytest.fixture(autouse=True)
def _hermetic_environ() -> Iterator[None]:
    """Give every test the environment it started with back.

    distributed's nanny copies ``distributed.nanny.pre-spawn-environ`` into this process's
    ``os.environ`` and prefers it over the config for every later nanny, so one test that
    starts a bare ``LocalCluster`` would hand its ``MALLOC_*`` settings to the clusters of all
    tests after it.  A test that checks xgpp's own restoring does so inside the test.
    """
    saved = dict(os.environ)
    yield
    if dict(os.environ) != saved:
        os.environ.clear()
        os.environ.update(saved)


# --------------------------------------------------------------------------- S3 (moto)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[tuple[str, dict]]:
    """A real moto S3 server on 127.0.0.1 (random port).

    Yields
    ------
    endpoint_url : str
        ``http://127.0.0.1:<port>``.
    storage_options : dict
        fsspec/s3fs options for that endpoint (``endpoint_url``, ``key``, ``secret``).
        No ``region_name``: moto then rejects bucket creation.
    """
    pytest.importorskip("s3fs", reason="s3fs is needed for the S3 tests (pip install s3fs)")
    server_mod = pytest.importorskip(
        "moto.server", reason="moto[server] is needed for the S3 tests (pip install 'moto[server]')"
    )
    # botocore looks for credentials/config before using the explicit ones; keep it hermetic
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ["AWS_ACCESS_KEY_ID"] = S3_KEY
    os.environ["AWS_SECRET_ACCESS_KEY"] = S3_SECRET
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    options = {"endpoint_url": endpoint, "key": S3_KEY, "secret": S3_SECRET}
    try:
        yield endpoint, options
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_server) -> Iterator[tuple[str, dict]]:
    """A fresh, uniquely named bucket on the loopback S3 server.

    Yields ``("s3://<bucket>", storage_options)``; the bucket is emptied and removed afterwards.
    """
    import uuid

    import s3fs

    _, options = s3_server
    fs = s3fs.S3FileSystem(**options, skip_instance_cache=True)
    bucket = f"xgpp-{uuid.uuid4().hex[:12]}"
    fs.mkdir(bucket)
    try:
        yield f"s3://{bucket}", options
    finally:
        try:
            fs.rm(bucket, recursive=True)
        except FileNotFoundError:
            pass


# --------------------------------------------------------------------------- Dask Gateway

_GATEWAY_CONFIG = """\
import sys

c.Gateway.address = "127.0.0.1:{api_port}"
c.Proxy.address = "127.0.0.1:{api_port}"
c.Proxy.tcp_address = "127.0.0.1:{tcp_port}"
c.Gateway.backend_class = "dask_gateway_server.backends.local.UnsafeLocalBackend"
c.Gateway.authenticator_class = "dask_gateway_server.auth.SimpleAuthenticator"
c.SimpleAuthenticator.password = {password!r}
c.LocalBackend.clusters_directory = {clusters_dir!r}
# current distributed no longer installs the dask-scheduler/dask-worker commands
c.ClusterConfig.scheduler_cmd = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
c.ClusterConfig.worker_cmd = [sys.executable, "-m", "distributed.cli.dask_worker"]
c.ClusterConfig.worker_cores = 1
c.ClusterConfig.worker_threads = 1
c.ClusterConfig.worker_memory = "1 G"
c.ClusterConfig.scheduler_memory = "1 G"
c.ClusterConfig.idle_timeout = 120
c.Gateway.log_level = "WARNING"
"""


def _wait_for_health(url: str, proc: subprocess.Popen, timeout: float) -> None:
    """Poll ``GET url`` until it answers 200 (the proxy opens before the API routes exist)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"dask-gateway-server exited early with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, OSError) as err:
            last = err
        time.sleep(0.1)
    raise TimeoutError(f"dask-gateway-server at {url} not healthy after {timeout} s: {last!r}")


@pytest.fixture(scope="session")
def gateway_server(tmp_path_factory) -> Iterator[tuple[str, dict]]:
    """A real dask-gateway-server on loopback, run as a subprocess.

    Uses ``UnsafeLocalBackend`` (schedulers and workers are local processes) and
    ``SimpleAuthenticator`` with the password :data:`GATEWAY_PASSWORD`.

    Yields
    ------
    address : str
        ``http://127.0.0.1:<port>``, the gateway API/HTTP proxy address.
    options : dict
        Keyword arguments for ``xgpp.cluster("gateway", ...)``: ``address``, ``proxy_address``,
        ``auth="basic"``, ``username`` and ``password``.
    """
    pytest.importorskip("dask_gateway", reason="pip install dask-gateway")
    pytest.importorskip("dask_gateway_server", reason="pip install 'dask-gateway-server[local]'")
    workdir = tmp_path_factory.mktemp("gateway")
    api_port, tcp_port = free_port(), free_port()
    while tcp_port == api_port:
        tcp_port = free_port()
    config = workdir / "gateway_config.py"
    config.write_text(
        _GATEWAY_CONFIG.format(
            api_port=api_port,
            tcp_port=tcp_port,
            password=GATEWAY_PASSWORD,
            clusters_dir=str(workdir / "clusters"),
        )
    )
    log = (workdir / "gateway.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dask_gateway_server", "-f", str(config)],
        cwd=workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    address = f"http://127.0.0.1:{api_port}"
    try:
        try:
            _wait_for_health(f"{address}/api/health", proc, timeout=60)
        except (RuntimeError, TimeoutError) as err:
            log.flush()
            tail = Path(log.name).read_text(errors="replace")[-3000:]
            pytest.fail(f"{err}\n--- gateway log ---\n{textwrap.indent(tail, '  ')}")
        yield address, {
            "address": address,
            "proxy_address": f"gateway://127.0.0.1:{tcp_port}",
            "auth": "basic",
            "username": GATEWAY_USER,
            "password": GATEWAY_PASSWORD,
        }
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()
        # Run finalizers of the gateway client's aiohttp/asyncio objects now: on CPython 3.11.7,
        # finalizers that run inside a later ast.parse (pytest's assertion rewriting of a lazily
        # imported plugin) raise "SystemError: AST constructor recursion depth mismatch".
        gc.collect()


@pytest.fixture
def zarr_metadata_saves(monkeypatch) -> list[dict]:
    """The group attributes at each write of a zarr group's ``zarr.json``, in order.

    A spy on zarr's own ``AsyncGroup._save_metadata``: the real store is still written.
    """
    import zarr.core.group as zgroup

    seen: list[dict] = []
    save = zgroup.AsyncGroup._save_metadata

    async def spy(self, *args, **kwargs):
        seen.append(dict(self.metadata.attributes))
        return await save(self, *args, **kwargs)

    monkeypatch.setattr(zgroup.AsyncGroup, "_save_metadata", spy)
    return seen
