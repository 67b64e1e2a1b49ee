"""One call for a Dask cluster: ``with xgpp.cluster("local") as client: ...``.

``kind`` picks a back end; each back end is one class that satisfies :class:`ClusterBackend` and
is registered in :data:`BACKENDS`, so adding one is adding a class:

==============================  ==========================================================
kind                            back end
==============================  ==========================================================
``"local"``                     :class:`LocalBackend` (``distributed.LocalCluster``)
``"cuda"``                      :class:`CUDABackend` (worker processes per GPU, or
                                ``dask_cuda.LocalCUDACluster``)
``"gateway"``                   :class:`GatewayBackend` (Dask Gateway)
``"tcp://host:8786"``           :class:`AddressBackend` (an existing scheduler)
``"auto"`` or ``None``          ``"cuda"`` when a GPU is visible (and dask-cuda imports,
                                where one process per GPU is all the cores allow),
                                else ``"local"``
==============================  ==========================================================

The module itself is callable, so ``xgpp.cluster(...)`` and ``xgpp.cluster.cluster(...)`` are
the same call (``xgpp.cluster`` is both the module and the entry point).

Optional back ends (dask-cuda, dask-gateway) are imported only when used.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import types
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from xgpp.errors import (
    DeviceError,
    InputError,
    MissingDependencyError,
    ServiceAuthError,
    ServiceError,
)

if TYPE_CHECKING:  # pragma: no cover
    from distributed import Client

__all__ = [
    "BACKENDS",
    "AddressBackend",
    "CUDABackend",
    "ClusterBackend",
    "GatewayBackend",
    "LocalBackend",
    "cluster",
    "gpu_available",
    "register_backend",
    "resolve_kind",
    "restored_environ",
    "worker_config",
    "worker_environment",
]

#: glibc's ceiling for ``M_MMAP_THRESHOLD`` on 64-bit (larger values are silently ignored):
#: allocations up to this size come from the heap and are reused instead of being mmap'ed and
#: page-faulted afresh each time.
MALLOC_MMAP_THRESHOLD = 32 * 1024 * 1024
#: Keep up to this much freed heap before trimming it back to the OS (distributed's default of
#: 64 KiB makes every chunk-sized buffer a fresh, page-faulting allocation).
MALLOC_TRIM_THRESHOLD = 256 * 1024 * 1024
#: Grow the heap in steps of this much, so a task's fresh chunk-sized buffers land on pages the
#: process already owns (measured on 2 cores with benchmarks/predict.py: LocalCluster prediction
#: went from about 0.6-0.8 to about 1.0 of the threaded scheduler's throughput).
MALLOC_TOP_PAD = 512 * 1024 * 1024
#: Neither the retained heap nor the heap's growth step exceeds this share of a worker's memory
#: limit.  A worker with torch loaded holds about 0.45 GiB before its first chunk; with a 1 GiB
#: limit the full 256 + 512 MiB above held its RSS at about 0.82 GiB, past distributed's pause
#: threshold (80 %), and the paused worker stalled a long prediction (benchmarks/soak.py).
MALLOC_SHARE_OF_LIMIT = 1 / 16


def worker_config(*, profile: bool = False) -> dict[str, Any]:
    """Dask config the workers start with (a nanny hands its config to the worker it spawns).

    Parameters
    ----------
    profile : bool
        Keep distributed's statistical profiler on in the workers (the dashboard's *Profile*
        tab).  Off by default: it samples every thread's stack every 10 ms and keeps the last
        1000 one-second call trees per worker, which with xgpp's kernel grew a worker by about
        0.2 MiB/s for the first 17 minutes of a run (about 200 MiB at its plateau; measured
        with ``benchmarks/soak.py``), a fifth of a 1 GiB worker.

    Returns
    -------
    dict
        Dask config keys and values.
    """
    return {"distributed.worker.profile.enabled": bool(profile)}


def worker_environment(
    threads_per_worker: int, *, torch_threads: int | None = None,
    memory_limit: int | None = None,
) -> dict[str, str]:
    """Environment set in each worker process before it starts.

    Parameters
    ----------
    threads_per_worker : int
        Dask threads per worker process.
    torch_threads : int, optional
        OpenMP/MKL threads (used by torch and numpy's BLAS) per worker; default
        ``threads_per_worker``, so ``n_workers * torch_threads`` matches the cores Dask uses.
    memory_limit : int, optional
        The worker's memory limit [bytes]: the retained heap (``MALLOC_TRIM_THRESHOLD_``) and
        its growth step (``MALLOC_TOP_PAD_``) are capped at :data:`MALLOC_SHARE_OF_LIMIT` of
        it, so a small worker is not pushed past distributed's pause threshold by memory it
        has freed.  ``None``: no cap.

    Returns
    -------
    dict of str to str
        For the config key ``distributed.nanny.pre-spawn-environ``.
    """
    n = str(torch_threads or threads_per_worker)
    cap = int(memory_limit * MALLOC_SHARE_OF_LIMIT) if memory_limit else None
    trim, pad = ((MALLOC_TRIM_THRESHOLD, MALLOC_TOP_PAD) if cap is None else
                 (min(MALLOC_TRIM_THRESHOLD, cap), min(MALLOC_TOP_PAD, cap)))
    return {
        "MALLOC_MMAP_THRESHOLD_": str(MALLOC_MMAP_THRESHOLD),
        "MALLOC_TRIM_THRESHOLD_": str(trim),
        "MALLOC_TOP_PAD_": str(pad),
        "OMP_NUM_THREADS": n,
        "MKL_NUM_THREADS": n,
        "OPENBLAS_NUM_THREADS": n,
    }


def available_cores() -> int:
    """Cores this process may run on (CPU affinity where the OS reports it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS/Windows
        return os.cpu_count() or 1


def gpu_available() -> bool:
    """Whether a CUDA GPU is visible (NVML first, then ``torch.cuda``); never raises."""
    try:
        from distributed.diagnostics import nvml

        if nvml.device_get_count() > 0:
            return True
    except Exception:  # noqa: BLE001 - no NVML, no driver, no pynvml: all mean "no GPU"
        pass
    if "torch" in sys.modules or os.environ.get("CUDA_VISIBLE_DEVICES", "") not in ("", "-1"):
        try:
            import torch

            return bool(torch.cuda.is_available())
        except Exception:  # noqa: BLE001
            return False
    return False


def _dask_cuda_importable() -> bool:
    try:
        import dask_cuda  # noqa: F401
    except Exception:  # noqa: BLE001 - dask_cuda raises more than ImportError without CUDA
        return False
    return True


# --------------------------------------------------------------------------- protocol + registry


@runtime_checkable
class ClusterBackend(Protocol):
    """What every cluster back end provides.

    A back end is built with its options (``Backend(**options)``), starts or connects in
    :meth:`start` (returning a connected client) and releases everything in :meth:`close`.
    ``close`` must be safe to call after a failed or partial ``start``.
    """

    kind: ClassVar[str]

    def start(self) -> Client:
        """Start (or connect to) the cluster and return a connected client."""
        ...

    def close(self) -> None:
        """Close the client and shut down whatever :meth:`start` created."""
        ...


#: kind -> back-end class; see :func:`register_backend`.
BACKENDS: dict[str, type[ClusterBackend]] = {}


def register_backend(cls: type[ClusterBackend]) -> type[ClusterBackend]:
    """Class decorator: register ``cls`` under ``cls.kind`` in :data:`BACKENDS`."""
    BACKENDS[cls.kind] = cls
    return cls


class _ClientBackend:
    """Shared close logic: a client, possibly a cluster object, and a worker environment."""

    kind: ClassVar[str] = ""

    def __init__(self) -> None:
        self.client: Client | None = None
        self.cluster: Any = None
        self._config: contextlib.AbstractContextManager | None = None
        self._environ: contextlib.AbstractContextManager | None = None

    def _set_worker_environment(self, env: dict[str, str],
                                config: dict[str, Any] | None = None) -> None:
        """Set ``distributed.nanny.pre-spawn-environ`` (and ``config``) until :meth:`close`.

        Nannies read them when they are created, including workers added later by
        ``scale()``/``adapt()``, so they stay set while the cluster lives.
        """
        import dask

        # the nanny copies env into this process's os.environ: put it back in close()
        self._environ = restored_environ(env)
        self._environ.__enter__()
        self._config = dask.config.set({"distributed.nanny.pre-spawn-environ": env,
                                        **(config if config is not None else worker_config())})
        self._config.__enter__()

    def close(self) -> None:
        """Close client and cluster, then restore the Dask config."""
        client, cluster = self.client, self.cluster
        self.client = self.cluster = None
        try:
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()
            if cluster is not None:
                shutdown = getattr(cluster, "shutdown", None) or cluster.close
                with contextlib.suppress(Exception):
                    shutdown()
                if shutdown != cluster.close:
                    with contextlib.suppress(Exception):
                        cluster.close()
        finally:
            if self._config is not None:
                self._config.__exit__(None, None, None)
                self._config = None
            if self._environ is not None:
                self._environ.__exit__(None, None, None)
                self._environ = None


@register_backend
class LocalBackend(_ClientBackend):
    """A ``distributed.LocalCluster`` sized to this machine.

    Parameters
    ----------
    n_workers, threads_per_worker : int, optional
        Default: distributed's split of the available cores (e.g. 2 cores -> 2 x 1,
        32 cores -> 8 x 4).  Giving one derives the other from the core count.
    torch_threads : int, optional
        ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` in each worker; default ``threads_per_worker``.
    memory_limit : str or int
        Per-worker memory limit (``"auto"`` splits the machine's memory).
    processes : bool
        Worker processes (default) or threads in this process (the worker environment below
        then does not apply).
    dashboard_address : str or None
        Scheduler dashboard address; ``":0"`` picks a free port, ``None`` turns it off.
    env : mapping, optional
        Extra variables for ``distributed.nanny.pre-spawn-environ`` (set before each worker
        process starts), overriding the defaults of :func:`worker_environment`.
    profile : bool
        Keep distributed's statistical profiler on in the workers (off by default; see
        :func:`worker_config`).
    **cluster_kwargs
        Passed on to ``distributed.LocalCluster``.
    """

    kind = "local"

    def __init__(
        self,
        *,
        n_workers: int | None = None,
        threads_per_worker: int | None = None,
        torch_threads: int | None = None,
        memory_limit: str | int | None = "auto",
        processes: bool = True,
        dashboard_address: str | None = ":8787",
        env: Mapping[str, str] | None = None,
        profile: bool = False,
        **cluster_kwargs: Any,
    ) -> None:
        super().__init__()
        self.n_workers, self.threads_per_worker = self.sizing(n_workers, threads_per_worker)
        self.torch_threads = torch_threads
        self.memory_limit = memory_limit
        self.processes = processes
        self.dashboard_address = dashboard_address
        self.env = {
            **worker_environment(self.threads_per_worker, torch_threads=torch_threads,
                                 memory_limit=self.worker_memory_bytes()),
            **{k: str(v) for k, v in (env or {}).items()},
        }
        self.profile = profile
        self.cluster_kwargs = cluster_kwargs

    def worker_memory_bytes(self) -> int | None:
        """Each worker's memory limit [bytes] as ``LocalCluster`` will set it (None: none)."""
        import logging

        from distributed.worker_memory import parse_memory_limit

        return parse_memory_limit(self.memory_limit, self.threads_per_worker,
                                  self.n_workers * self.threads_per_worker,
                                  logger=logging.getLogger("xgpp.cluster"))

    @staticmethod
    def sizing(n_workers: int | None, threads_per_worker: int | None) -> tuple[int, int]:
        """Worker processes and threads per worker for this machine."""
        from distributed.deploy.utils import nprocesses_nthreads

        cores = available_cores()
        if n_workers is None:
            if threads_per_worker is None:
                return nprocesses_nthreads(cores)
            return max(1, cores // threads_per_worker), threads_per_worker
        if threads_per_worker is None:
            return n_workers, max(1, cores // n_workers)
        return n_workers, threads_per_worker

    def start(self) -> Client:
        """Start the ``LocalCluster`` (worker environment set before each worker spawns)."""
        from distributed import Client, LocalCluster

        self._set_worker_environment(self.env, worker_config(profile=self.profile))
        kwargs: dict[str, Any] = {
            "n_workers": self.n_workers,
            "threads_per_worker": self.threads_per_worker,
            "memory_limit": self.memory_limit,
            "processes": self.processes,
            "dashboard_address": self.dashboard_address,
            **self.cluster_kwargs,
        }
        self.cluster = LocalCluster(**kwargs)
        self.client = Client(self.cluster)
        return self.client


#: Dask threads per worker process that share a GPU: Zarr decoding in one process stops scaling
#: at about 4 threads (measured on a 16-core H200 node), so a GPU is fed by several processes.
THREADS_PER_GPU_PROCESS = 4


@register_backend
class CUDABackend(_ClientBackend):
    """Workers that run the model on the GPUs: several processes per GPU, or dask-cuda.

    A GPU runs the model far faster than one process can read and decode Zarr chunks
    (3.4 G samples/s against about 34 M on an H200 node), so by default each GPU gets
    ``cores per GPU // 4`` worker processes of 4 threads, each process seeing only its GPU
    (``CUDA_VISIBLE_DEVICES``); on a 16-core, one-GPU node that is 4 processes, which predicted
    2.5x faster than one dask-cuda worker.  With ``processes_per_gpu=1`` (or on a node with
    fewer than 8 cores per GPU) it is a ``dask_cuda.LocalCUDACluster``: one worker per GPU,
    with dask-cuda's options.

    Parameters
    ----------
    processes_per_gpu : int, optional
        Worker processes per GPU; default from the cores per GPU (see above).
    threads_per_worker : int, optional
        Dask threads per worker; default the cores per GPU shared among its processes, at
        least 2, so threads read and decode the next chunks while one drives the GPU.
    **cluster_kwargs
        ``CUDA_VISIBLE_DEVICES`` (str or list): the GPUs to use, default every visible GPU.
        Any other keyword is passed on to ``dask_cuda.LocalCUDACluster`` (e.g.
        ``rmm_pool_size``) and needs ``processes_per_gpu=1``.
    """

    kind = "cuda"

    def __init__(self, *, processes_per_gpu: int | None = None,
                 threads_per_worker: int | None = None, **cluster_kwargs: Any) -> None:
        super().__init__()
        if processes_per_gpu is not None and int(processes_per_gpu) < 1:
            raise InputError(f"processes_per_gpu must be >= 1, got {processes_per_gpu}.")
        self.processes_per_gpu = processes_per_gpu
        self.threads_per_worker = threads_per_worker
        self.cluster_kwargs = cluster_kwargs

    def gpus(self) -> list[str]:
        """The GPUs to use, as ``CUDA_VISIBLE_DEVICES`` entries."""
        given = self.cluster_kwargs.get("CUDA_VISIBLE_DEVICES",
                                        os.environ.get("CUDA_VISIBLE_DEVICES"))
        if given not in (None, ""):
            items = given.split(",") if isinstance(given, str) else given
            return [str(g).strip() for g in items]
        try:
            from distributed.diagnostics import nvml

            return [str(i) for i in range(max(1, nvml.device_get_count()))]
        except Exception:  # noqa: BLE001 - no NVML: one GPU
            return ["0"]

    def sizing(self) -> tuple[int, int]:
        """(worker processes per GPU, threads per worker) for this node."""
        per_gpu = max(2, available_cores() // len(self.gpus()))
        extra = [k for k in self.cluster_kwargs if k != "CUDA_VISIBLE_DEVICES"]
        if self.processes_per_gpu is not None:
            procs = int(self.processes_per_gpu)
        elif extra:  # dask-cuda options asked for: dask-cuda's one worker per GPU
            procs = 1
        else:
            procs = max(1, per_gpu // THREADS_PER_GPU_PROCESS)
        if procs > 1 and extra:
            raise InputError(
                f"options {extra} are dask-cuda's and need processes_per_gpu=1 (a "
                f"LocalCUDACluster); processes_per_gpu={procs} starts plain workers."
            )
        threads = self.threads_per_worker or max(2, per_gpu // procs)
        return procs, threads

    def start(self) -> Client:
        """Start the workers (a ``LocalCUDACluster`` when one process per GPU)."""
        from distributed import Client

        procs, threads = self.sizing()
        if procs == 1:
            try:
                from dask_cuda import LocalCUDACluster
            except Exception as err:  # dask_cuda raises RuntimeError etc. without cuda-bindings
                raise MissingDependencyError(
                    "xgpp.cluster('cuda') with one process per GPU needs dask-cuda (with its "
                    f"CUDA bindings), which could not be imported ({type(err).__name__}: "
                    f"{err}). Install the GPU extra: pip install 'xgpp[gpu]' (and dask-cuda's "
                    "'cu12'/'cu13' extra for your CUDA), pass processes_per_gpu=2 or more for "
                    "plain workers, or use kind='local'."
                ) from err
        if not gpu_available():
            raise DeviceError(
                "xgpp.cluster('cuda') needs a visible CUDA GPU, but NVML/torch report none "
                f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}). "
                "Use kind='local' or kind='auto' on machines without a GPU."
            )
        if procs > 1:
            self.cluster = gpu_process_cluster(self.gpus(), procs, threads)
            self.client = Client(self.cluster)
            return self.client
        # the same allocator settings as the CPU workers (fresh memory is costly: reading and
        # decoding chunks is what a GPU worker spends its CPU time on); torch needs no CPU
        # threads of its own there
        self._set_worker_environment(worker_environment(threads, torch_threads=1))
        self.cluster = LocalCUDACluster(threads_per_worker=threads, **self.cluster_kwargs)
        self.client = Client(self.cluster)
        return self.client


def gpu_process_cluster(gpus: list[str], processes_per_gpu: int, threads_per_worker: int,
                        *, dashboard_address: str | None = ":0") -> Any:
    """A local ``SpecCluster`` with ``processes_per_gpu`` workers per GPU, each seeing one GPU.

    Every worker is a nanny-managed process with ``CUDA_VISIBLE_DEVICES`` set to its GPU and
    the CPU workers' allocator settings (:func:`worker_environment`), so ``device="cuda"``
    (or ``"auto"``) in a task means that GPU; the workers' names say which (``gpu0-1``).
    Scheduler and workers listen on the loopback interface only, as ``LocalCluster`` does.
    """
    import dask
    from distributed import Nanny, Scheduler, SpecCluster

    workers = {
        f"gpu{g}-{j}": {"cls": Nanny, "options": {
            "host": "127.0.0.1", "nthreads": threads_per_worker,
            "env": {"CUDA_VISIBLE_DEVICES": g}}}  # set in the worker before CUDA starts
        for g in gpus for j in range(processes_per_gpu)
    }
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1",
                                               "dashboard_address": dashboard_address}}
    # glibc reads MALLOC_* when a process starts: they must be in the environment the nanny
    # spawns the worker with (each nanny reads this when it is created, here)
    env = worker_environment(threads_per_worker, torch_threads=1)
    with dask.config.set({"distributed.nanny.pre-spawn-environ": env, **worker_config()}), \
            restored_environ(env):
        return SpecCluster(workers=workers, scheduler=scheduler, name="xgpp-gpu")


@contextlib.contextmanager
def restored_environ(env: Mapping[str, str]) -> Iterator[None]:
    """Put back this process's values of ``env``'s keys on exit.

    distributed's nanny copies ``pre-spawn-environ`` into the spawning process's
    ``os.environ`` and prefers ``os.environ`` over the config the next time, so without this
    a later cluster (another memory limit, another thread count) would inherit these values.

    Parameters
    ----------
    env : mapping of str to str
        The variables whose current values (or absence) are put back.

    Yields
    ------
    None
        While the block runs; on exit each key has its value from before (or is unset).
    """
    saved = {k: os.environ.get(k) for k in env}
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@register_backend
class GatewayBackend(_ClientBackend):
    """A new cluster from a Dask Gateway server.

    Parameters
    ----------
    address : str, optional
        Gateway address, e.g. ``"https://gateway.example.org"``; default from Dask config
        ``gateway.address`` (env ``DASK_GATEWAY__ADDRESS``).
    proxy_address : str, optional
        Scheduler proxy address when it differs from ``address`` (``gateway://host:port``).
    auth : str or dask_gateway.auth.GatewayAuth, optional
        ``"basic"``, ``"kerberos"``, ``"jupyterhub"`` or an auth object; default from Dask
        config ``gateway.auth``.
    username, password : str, optional
        For ``auth="basic"``.
    n_workers : int
        Workers to scale to once the cluster is up.
    cluster_options : mapping, optional
        Passed to ``Gateway.new_cluster`` (server-defined options such as worker cores).
    """

    kind = "gateway"

    def __init__(
        self,
        *,
        address: str | None = None,
        proxy_address: str | None = None,
        auth: Any = None,
        username: str | None = None,
        password: str | None = None,
        n_workers: int = 2,
        cluster_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.address = address
        self.proxy_address = proxy_address
        self.auth = auth
        self.username = username
        self.password = password
        self.n_workers = n_workers
        self.cluster_options = dict(cluster_options or {})
        self.gateway: Any = None

    def __repr__(self) -> str:
        # the password never appears in reprs, logs or tracebacks' locals display
        return (f"{type(self).__name__}(address={self.address!r}, "
                f"proxy_address={self.proxy_address!r}, auth={_auth_name(self.auth)!r}, "
                f"username={self.username!r}, password={_redacted(self.password)!r}, "
                f"n_workers={self.n_workers!r}, cluster_options={sorted(self.cluster_options)})")

    def _make_auth(self) -> Any:
        from dask_gateway.auth import BasicAuth, get_auth

        if self.auth == "basic" or (self.auth is None and self.password is not None):
            return BasicAuth(self.username, self.password)
        return get_auth(self.auth)

    def start(self) -> Client:
        """Create a gateway cluster, scale it to ``n_workers`` and connect a client."""
        try:
            from dask_gateway import Gateway
        except ImportError as err:
            raise MissingDependencyError(
                "xgpp.cluster('gateway') needs the dask-gateway client. Install the cloud extra: "
                "pip install 'xgpp[cloud]'."
            ) from err
        import aiohttp
        import dask

        if self.address is None and not dask.config.get("gateway.address", None):
            raise InputError(
                "xgpp.cluster('gateway') needs the gateway's address: pass address='https://...' "
                "or set the Dask config gateway.address (env DASK_GATEWAY__ADDRESS)."
            )
        auth = self._make_auth()
        self.gateway = Gateway(address=self.address, proxy_address=self.proxy_address, auth=auth)
        where = self.gateway.address
        try:
            self.cluster = self.gateway.new_cluster(**self.cluster_options)
        except aiohttp.ClientResponseError as err:
            if err.status in (401, 403):
                raise ServiceAuthError(
                    f"Dask Gateway at {where} refused authentication ({err.status} "
                    f"{err.message}) with auth type {type(auth).__name__}"
                    + (f" for user {self.username!r}" if self.username else "")
                    + ". Check the username/password (or token) and the auth type the gateway "
                    "expects (basic, kerberos, jupyterhub)."
                ) from err
            raise ServiceError(
                f"Dask Gateway at {where} answered {err.status} {err.message} when creating a "
                "cluster. Check the address and the server's logs."
            ) from err
        except (aiohttp.ClientConnectionError, OSError, TimeoutError) as err:
            raise ServiceError(
                f"cannot reach the Dask Gateway at {where} ({type(err).__name__}: {err}). Check "
                "the address (and proxy_address), that the server is running, and your network."
            ) from err
        self.cluster.scale(self.n_workers)
        self.client = self.cluster.get_client(set_as_default=True)
        return self.client

    def close(self) -> None:
        """Shut the gateway cluster down, then close the gateway client."""
        try:
            super().close()
        finally:
            if self.gateway is not None:
                with contextlib.suppress(Exception):
                    self.gateway.close()
                self.gateway = None


def _redacted(secret: str | None) -> str | None:
    """``"***"`` for a set secret, None for none: what reprs and messages show of passwords."""
    return None if secret is None else "***"


def _auth_name(auth: Any) -> str | None:
    """An auth setting as shown in reprs: its name, or the auth object's class name."""
    return auth if auth is None or isinstance(auth, str) else type(auth).__name__


@register_backend
class AddressBackend(_ClientBackend):
    """Connect to an already running scheduler.

    Parameters
    ----------
    address : str
        Scheduler address, e.g. ``"tcp://10.0.0.5:8786"``.
    timeout : float
        Seconds to wait for the connection before raising (default 5).
    """

    kind = "address"

    def __init__(self, *, address: str, timeout: float = 5.0) -> None:
        super().__init__()
        self.address = address
        self.timeout = timeout

    def start(self) -> Client:
        """Connect; an unreachable scheduler raises ``ConnectionError`` within ``timeout``."""
        from distributed import Client

        try:
            self.client = Client(self.address, timeout=self.timeout, set_as_default=True)
        except (OSError, TimeoutError) as err:
            raise ServiceError(
                f"no Dask scheduler answered at {self.address!r} within {self.timeout} s "
                f"({type(err).__name__}). Check the address and port, that the scheduler is "
                "running and reachable from here, or raise timeout=."
            ) from err
        return self.client


# --------------------------------------------------------------------------- entry point

_ADDRESS = re.compile(r"^([a-z][a-z0-9+.-]*://)?[^\s/:]+:\d+/?$|^[a-z][a-z0-9+.-]*://\S+$", re.I)


def _gpu_workers_fit(options: dict[str, Any]) -> bool:
    """Whether ``"auto"`` can start GPU workers with ``options``.

    Several processes per GPU need only distributed; one worker per GPU (or any dask-cuda
    option, such as ``n_workers``) needs dask-cuda.
    """
    try:
        procs, _ = CUDABackend(**options).sizing()
    except (TypeError, ValueError):
        return False
    return procs > 1 or _dask_cuda_importable()


def resolve_kind(kind: str | None,
                 options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """Map ``kind`` to a key of :data:`BACKENDS` plus any options implied by it.

    ``None``/``"auto"`` -> ``"cuda"`` or ``"local"``; a scheduler address such as
    ``"tcp://host:8786"`` or ``"host:8786"`` -> ``("address", {"address": kind})``.
    """
    if kind is None or kind == "auto":
        return ("cuda" if gpu_available() and _gpu_workers_fit(options or {}) else "local"), {}
    if kind in BACKENDS:
        return kind, {}
    if _ADDRESS.match(kind):
        return "address", {"address": kind}
    raise InputError(
        f"unknown cluster kind {kind!r}: expected one of {sorted(BACKENDS)}, 'auto', or a "
        "scheduler address such as 'tcp://host:8786'."
    )


@contextlib.contextmanager
def cluster(kind: str | None = "auto", **options: Any) -> Iterator[Client]:
    """Start or connect to a Dask cluster and yield a ``distributed.Client``.

    Client and cluster are closed on exit, also when the body raises.  Scripts that start a
    local cluster with worker processes need an ``if __name__ == "__main__":`` guard.

    Parameters
    ----------
    kind : str or None
        ``"local"``, ``"cuda"``, ``"gateway"``, a scheduler address (``"tcp://host:8786"``),
        or ``"auto"``/``None`` (``"cuda"`` when a GPU is visible, else ``"local"``; on a node
        with fewer than 8 cores per GPU only when dask-cuda imports).
    **options
        Keyword arguments of the back-end class (:class:`LocalBackend`, :class:`CUDABackend`,
        :class:`GatewayBackend`, :class:`AddressBackend`).

    Yields
    ------
    distributed.Client

    Examples
    --------
    >>> with xgpp.cluster("local", n_workers=2) as client:  # doctest: +SKIP
    ...     result = ds.gpp.predict(model).compute()
    """
    key, implied = resolve_kind(kind, options)
    backend = BACKENDS[key](**{**implied, **options})
    try:
        client = backend.start()
    except BaseException:
        backend.close()
        raise
    try:
        yield client
    finally:
        backend.close()


class _CallableModule(types.ModuleType):
    """Lets ``xgpp.cluster(...)`` call :func:`cluster` although ``xgpp.cluster`` is this module."""

    def __call__(self, kind: str | None = "auto", **options: Any):
        return cluster(kind, **options)


sys.modules[__name__].__class__ = _CallableModule
