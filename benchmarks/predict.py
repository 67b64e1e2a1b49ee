"""Benchmark of streaming inference against the ways users write it today (issue: ds.gpp.predict).

All variants run in one process on the same twin-world driver cube (0.5 degree, 92 steps by
default, chunks 46 x 90 x 90) and the same model (6-64-64-1 MLP).  Reports samples per second,
the ratio to the bare limit (a), and peak memory of the process and its workers; (b) and (e)
are repeated with the time axis doubled.  Besides the variants (a)-(e) of the issue it reports
(a') the bare limit at the former 262 144-row batch, (f) the I/O floor (read the same inputs
and write one output, no model) and the limit of model and I/O sharing the same cores, and a
fresh process's peak memory (a user script: imports, scheduler, workers).

    python benchmarks/predict.py [--resolution 0.5] [--years 2] [--quick] [--device cpu]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch
import xarray as xr

import xgpp
from xgpp.models import MLP, OUTPUTS, FeatureConfig, FeatureSpec, MLPConfig, TorchModel
from xgpp.synthetic import make_world

DRIVERS6 = ("tair", "vpd", "ppfd", "fapar", "swc", "co2")
DATA = Path(__file__).parent / "results" / "data"


class PeakMemory:
    """Peak RSS [bytes] of this process (unless ``children_only``) plus its children, sampled
    every 50 ms."""

    def __init__(self, children_only: bool = False) -> None:
        self.peak, self._stop = 0, threading.Event()
        self.children_only = children_only

    def _rss(self) -> int:
        me = psutil.Process()
        total = 0 if self.children_only else me.memory_info().rss
        for child in me.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        return total

    def __enter__(self) -> PeakMemory:
        self.base = self._rss()
        self.peak = self.base
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


def cube(resolution: float, years: int) -> xr.Dataset:
    path = DATA / f"drivers_{resolution}_{years}y.zarr"
    if not (path / "zarr.json").exists():
        w = make_world(resolution=resolution, start="2019-01-01", end=f"{2019 + years - 1}-12-31")
        print(f"writing {path} ...", flush=True)
        w.drivers[[*DRIVERS6, "igbp", "land_mask"]].to_zarr(path, mode="w", zarr_format=3,
                                                           consolidated=False)
    return xgpp.open_cube(str(path))


def make_model(ds: xr.Dataset) -> TorchModel:
    torch.manual_seed(0)
    spec = FeatureSpec.fit(FeatureConfig(drivers=DRIVERS6, igbp=None, latlon=False,
                                         elevation=False), ds)
    net = MLPConfig(hidden=(64, 64), activation="relu")
    return TorchModel(MLP(spec.n_features, 1, net), spec, outputs={"gpp": OUTPUTS["gpp"]},
                      output_scale=[1.0], output_offset=[0.0], net=net)


def chunk_slices(ds: xr.Dataset):
    c = ds.chunks
    edges = {d: np.concatenate([[0], np.cumsum(c[d])]) for d in ("time", "lat", "lon")}
    for i in range(len(c["time"])):
        for j in range(len(c["lat"])):
            for k in range(len(c["lon"])):
                yield {d: slice(int(edges[d][n]), int(edges[d][n + 1]))
                       for d, n in zip(("time", "lat", "lon"), (i, j, k), strict=True)}


def bench(name: str, fn, n: int, table: list, base: float | None = None, *,
          children_only: bool = False) -> float:
    with PeakMemory(children_only) as mem:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
    rate = n / dt
    table.append((name, rate, (rate / base) if base else 1.0, mem.peak / 2**30))
    print(f"{name:<55s} {rate / 1e6:8.3f} M samples/s  {table[-1][2]:5.2f} x (a)  "
          f"peak {mem.peak / 2**30:5.2f} GiB", flush=True)
    return rate


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    ds = cube(args.resolution, args.years)
    model = make_model(ds)
    out = DATA / "out"
    n_total = int(np.prod([ds.sizes[d] for d in ("time", "lat", "lon")]))
    print(f"cube: {dict(ds.sizes)}, chunks {ds['tair'].data.chunksize}, "
          f"{n_total / 1e6:.1f} M pixels; model {model}")
    table: list = []

    # (a) bare limit: the model on the same samples already in memory, chunk-sized arrays
    feats = []
    for sl in chunk_slices(ds):
        x, _ = model.features(ds.isel(sl).load(), return_mask=True)
        feats.append(x)
    torch.set_num_threads(2)
    model.predict_numpy(feats[0], device=args.device)  # warm-up: device copy, CUDA context
    def bare():
        for x in feats:
            model.predict_numpy(x, device=args.device)
    base = bench("(a) bare limit: model on in-memory chunk arrays", bare, n_total, table)
    if args.device.startswith("cuda"):
        # the GPU goal's reference: the model's own throughput on device-resident batches
        module = model._module_on(args.device)
        on_dev = [torch.from_numpy(x).to(args.device) for x in feats]
        bs = xgpp.models.base.default_batch_size(args.device)

        def resident():
            with torch.inference_mode():
                for x in on_dev:
                    for i in range(0, x.shape[0], bs):
                        module(x[i:i + bs])
            torch.cuda.synchronize()
        resident()  # warm-up (kernel selection)
        dev_rate = bench("(a-gpu) model on device-resident batches (no host transfers)",
                         resident, n_total, table, base)
        print(f"    (a) / (a-gpu) = {base / dev_rate:.3f}", flush=True)
        on_dev.clear()
    else:
        def bare_big():
            for x in feats:
                model.predict_numpy(x, device=args.device, batch_size=262_144)
        bench("(a') bare limit, 262 144-row batches (xgpp < 0.2 default)", bare_big, n_total,
              table, base)
    feats.clear()

    # (b) naive: load, stack to 2-D, predict, reshape, write
    def naive(d=ds, path=out / "naive.zarr"):
        mem = d.compute()  # not .load(): that would turn the shared cube into numpy in place
        x, valid = model.features(mem, return_mask=True)
        y = np.full(valid.shape, np.nan, np.float32)
        y[valid] = model.predict_numpy(x, device=args.device)[:, 0]
        res = xr.Dataset({"gpp": (("time", "lat", "lon"), y.reshape(mem["tair"].shape))},
                         coords={c: mem[c] for c in ("time", "lat", "lon")})
        res.to_zarr(path, mode="w", zarr_format=3, consolidated=False)
    if not args.skip_peers:
        bench("(b) naive: load, stack, predict, reshape, write", naive, n_total, table, base)

    # (c) xbatcher, chunk-sized patches and per-pixel samples (per-pixel on a slice, extrapolated)
    import xbatcher

    def xb_patches():
        gen = xbatcher.BatchGenerator(ds, input_dims={"time": 46, "lat": 90, "lon": 90})
        for batch in gen:
            x, _ = model.features(batch, return_mask=True)
            model.predict_numpy(x, device=args.device)
    if not args.skip_peers:
        bench("(c) xbatcher chunk-sized patches", xb_patches, n_total, table, base)
    small = ds.isel(time=slice(0, 2), lat=slice(200, 210), lon=slice(300, 310)).load()
    def xb_pixels():
        gen = xbatcher.BatchGenerator(small, input_dims={"time": 1, "lat": 1, "lon": 1})
        for batch in gen:
            x, _ = model.features(batch, return_mask=True)
            if x.shape[0]:
                model.predict_numpy(x, device=args.device)
    if not args.skip_peers:
        bench("(c) xbatcher per-pixel samples (200-pixel slice)", xb_pixels, small["tair"].size,
              table, base)

    # (d) dask-ml ParallelPostFit around the same model, threaded and on a LocalCluster
    try:
        from dask_ml.wrappers import ParallelPostFit
    except ImportError:
        ParallelPostFit = None
    if ParallelPostFit is None or args.skip_peers:
        print("(d) skipped: --skip-peers, or dask-ml not installed (pip install dask-ml)")
    else:
        class Est:
            def fit(self, X, y=None):
                return self
            def predict(self, X):
                X = np.asarray(X, np.float32)
                out = np.full(len(X), np.nan, np.float32)
                ok = np.isfinite(X).all(axis=1)
                if ok.any():
                    out[ok] = model.predict_numpy(X[ok], device=args.device)[:, 0]
                return out
        import dask.array as da
        spec = model.spec
        cols = [(ds[v].data.reshape(-1) - spec.mean[v]) / spec.std[v] for v in DRIVERS6]
        X = da.stack(cols, axis=1).astype(np.float32)
        ppf = ParallelPostFit(Est())
        def dml():
            y = ppf.predict(X).reshape(ds["tair"].shape)
            da.to_zarr(y, str(out / "dml.zarr"), overwrite=True)
        bench("(d) dask-ml ParallelPostFit, threaded", dml, n_total, table, base)
        with xgpp.cluster("local"):
            bench("(d) dask-ml ParallelPostFit, LocalCluster", dml, n_total, table, base)

    # (e) ds.gpp.predict(...).to_zarr on a LocalCluster (default) and on the threaded scheduler
    def xg(d=ds, path=out / "xgpp.zarr"):
        shutil.rmtree(path, ignore_errors=True)
        d.gpp.predict(model, device=args.device).to_zarr(path, mode="w", zarr_format=3,
                                                         consolidated=False)

    def xg_resumable(path=out / "xgpp_resumable.zarr"):
        shutil.rmtree(path, ignore_errors=True)
        ds.gpp.to_zarr(model, str(path), device=args.device, progress=False)

    # (f) the I/O floor: read the same inputs and write one output of the same shape, no model
    def io_only(path=out / "io.zarr"):
        shutil.rmtree(path, ignore_errors=True)
        total = sum(ds[v] for v in model.inputs).astype("float32").rename("gpp")
        total.to_dataset().to_zarr(path, mode="w", zarr_format=3, consolidated=False)

    kind = "cuda" if args.device.startswith("cuda") else "local"
    # a fresh cluster's first run pays one-off costs (workers import torch and xgpp, unpickle
    # the model); the second run on the same cluster is what a long job sees
    with xgpp.cluster(kind) as client:
        info = client.scheduler_info()["workers"].values()
        sizing = f"{len(info)} workers x {next(iter(info))['nthreads']} threads"
        bench(f"(e) ds.gpp.predict().to_zarr, {kind} cluster ({sizing}), first run", xg,
              n_total, table, base)
        bench(f"(e) ds.gpp.predict().to_zarr, {kind} cluster ({sizing}), second run", xg,
              n_total, table, base)
        bench(f"(e) ds.gpp.to_zarr (resumable writer), {kind} cluster ({sizing})", xg_resumable,
              n_total, table, base)
        io_only()
        io_rate = bench(f"(f) I/O floor: read inputs + write one output, no model, {kind} "
                        "cluster", io_only, n_total, table, base)
    if kind == "cuda":
        # one dask-cuda worker per GPU, against the default: several processes per GPU
        with xgpp.cluster("cuda", processes_per_gpu=1):
            xg()
            bench("(e) ds.gpp.predict().to_zarr, dask-cuda (1 worker per GPU), second run",
                  xg, n_total, table, base)
            io_only()
            bench("(f) I/O floor, dask-cuda (1 worker per GPU)", io_only, n_total, table, base)
    if kind == "local":
        with xgpp.cluster("local", n_workers=1, threads_per_worker=2):
            xg()
            bench("(e) ds.gpp.predict().to_zarr, LocalCluster (1 worker x 2 threads), second "
                  "run", xg, n_total, table, base)
    bench("(e) ds.gpp.predict().to_zarr, threaded", xg, n_total, table, base)
    serial = 1.0 / (1.0 / base + 1.0 / io_rate)
    print(f"(a)+(f) in series, the limit with I/O on the same cores: {serial / 1e6:.3f} M "
          f"samples/s = {serial / base:.2f} x (a)", flush=True)
    table.append(("(a)+(f) in series: model and I/O on the same cores (derived)", serial,
                  serial / base, float("nan")))

    # fresh process: what a user's script costs in memory (its own imports, the scheduler,
    # the workers), measured from outside on the child's process tree only
    cmd = [sys.executable, __file__, "--child", "--resolution", str(args.resolution),
           "--years", str(args.years), "--device", args.device]
    bench(f"(e) fresh process: imports, cube, model, new {kind} cluster, predict().to_zarr "
          "(rate includes start-up; memory of that process and its workers only)",
          lambda: subprocess.run(cmd, check=True), n_total, table, base, children_only=True)

    if not args.quick:
        ds2 = cube(args.resolution, 2 * args.years)
        n2 = 2 * n_total
        bench("(b) naive, time axis doubled", lambda: naive(ds2, out / "naive2.zarr"), n2, table, base)
        with xgpp.cluster(kind):
            xg()
            bench(f"(e) {kind} cluster, time axis doubled, second run",
                  lambda: xg(ds2, out / "xgpp2.zarr"), n2, table, base)

    print("\n| variant | M samples/s | ratio to (a) | peak memory [GiB] |\n|---|---|---|---|")
    for name, rate, ratio, peak in table:
        mem = "" if np.isnan(peak) else f"{peak:.2f}"
        print(f"| {name} | {rate / 1e6:.4g} | {ratio:.3g} | {mem} |")


def child(args: argparse.Namespace) -> None:
    """One prediction as a user script runs it (``--child``; measured by the parent)."""
    ds = cube(args.resolution, args.years)
    model = make_model(ds)
    path = DATA / "out" / "child.zarr"
    shutil.rmtree(path, ignore_errors=True)
    with xgpp.cluster("cuda" if args.device.startswith("cuda") else "local"):
        ds.gpp.predict(model, device=args.device).to_zarr(path, mode="w", zarr_format=3,
                                                          consolidated=False)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--resolution", type=float, default=0.5)
    p.add_argument("--years", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="skip the doubled-record runs")
    p.add_argument("--skip-peers", action="store_true",
                   help="skip the peers (b), (c), (d): only xgpp's rows against (a)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    child(a) if a.child else run(a)
