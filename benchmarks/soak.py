"""Soak benchmark: sustained streamed prediction over a cube many times the workers' memory.

A global, decades-long run takes hours; a leak of a few MB per chunk, a scheduler that piles up
task state, or a writer that slows as its store grows would kill it where a short benchmark
sees nothing.  This benchmark runs ``xgpp.write_prediction`` (what ``ds.gpp.to_zarr`` and
``xgpp predict`` call) with the model ``xgpp train --method ec-only`` builds by default, on a
``LocalCluster`` whose workers are capped at ``--worker-memory`` GiB, over a driver cube at
least ``--ratio`` times that cap uncompressed, and samples every ``--every`` seconds:

* throughput: land samples (valid rows fed to the model) and pixels written per second,
  from the output chunks on disk (land samples per chunk taken as the cube's mean);
* memory: the resident set of each worker process (``psutil``, the same figure the nanny
  compares with the limit) and of this process.

The verdict compares the first and last tenth of the run (after the first chunk, which pays
for the workers' imports): memory flat (the workers' heap *in use*, from glibc's
``malloc_info`` over every arena, grows by less than ``--mem-tolerance`` of the first tenth's
RSS; RSS itself also holds freed heap glibc keeps, reported beside it) and throughput within
noise (ratio of the tenths' rates within ``--tput-tolerance``, or twice the middle tenths'
spread on a shared machine).

The cube is the twin world's drivers at 2 degree, trained on, then repeated on a finer grid
(every cell split into ``k x k``) and in time (the record tiled), streamed to Zarr chunk by
chunk: realistic values, the real layout, any size.  Outputs go to ``benchmarks/results/``:
``soak.json`` (config, samples, verdict) and ``soak.png`` (memory and throughput over time).

    python benchmarks/soak.py                    # 1 GiB workers, cube >= 20 GiB uncompressed
    python benchmarks/soak.py --quick            # 1 GiB workers, ~2 GiB cube: a smoke check
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import threading
import time
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import psutil
import xarray as xr
import zarr

import xgpp
from xgpp.predict import write_prediction
from xgpp.synthetic import write_world
from xgpp.train import train_from_catalog

RESULTS = Path(__file__).parent / "results"
GiB = 2**30


def world_and_model(work: Path, years: int):
    """A 2-degree twin world and the default EC-only model trained on it (short epochs)."""
    world = work / "world"
    if not (world / "catalog.yaml").exists():
        write_world(str(world), resolution=2.0, start="2019-01-01", end=f"{2018 + years}-12-31",
                    progress=False)
    model_dir = work / "model"
    if model_dir.exists():
        try:
            return world, xgpp.load_model(str(model_dir))
        except xgpp.errors.XgppError:  # a partial or stale bundle is retrained
            shutil.rmtree(model_dir)
    model = train_from_catalog(str(world / "catalog.yaml"), method="ec-only",
                               split="site-kfold:k=5,fold=0", out=str(model_dir),
                               config={"ec": {"max_epochs": 3}}, progress=False)
    return world, model


def big_cube(small: xr.Dataset, names: list[str], path: Path, *, k: int, target_bytes: float,
             chunk_time: int) -> xr.Dataset:
    """Write ``small``'s variables refined k x k in space and tiled in time to ``path``.

    Streamed by dask, one chunk at a time; returns the opened store.  The time-varying
    variables set the size: steps are added until they hold ``target_bytes`` as float32."""
    n_lat, n_lon = small.sizes["lat"] * k, small.sizes["lon"] * k
    dynamic = [v for v in names if "time" in small[v].dims]
    per_step = len(dynamic) * n_lat * n_lon * 4
    n_time = int(np.ceil(target_bytes / per_step / chunk_time)) * chunk_time
    if (path / "zarr.json").exists():
        got = xgpp.open_cube(str(path))
        if got.sizes.get("time") == n_time and got.sizes["lat"] == n_lat:
            return got
        shutil.rmtree(path)
    reps = int(np.ceil(n_time / small.sizes["time"]))
    res = float(abs(small["lat"][1] - small["lat"][0])) / k
    lat = np.linspace(90 - res / 2, -90 + res / 2, n_lat) if float(small["lat"][0]) > 0 else \
        np.linspace(-90 + res / 2, 90 - res / 2, n_lat)
    lon = np.linspace(-180 + res / 2, 180 - res / 2, n_lon)
    t0 = np.datetime64(str(small["time"].values[0])[:10])
    time_ = t0 + np.arange(n_time) * np.timedelta64(8, "D")
    space = max(1, min(n_lat, 360))
    out = {}
    for v in names:
        a = small[v]
        arr = da.from_array(a.values, chunks=a.shape)
        lat_ax, lon_ax = a.dims.index("lat"), a.dims.index("lon")
        arr = da.repeat(da.repeat(arr, k, axis=lat_ax), k, axis=lon_ax)
        if "time" in a.dims:
            arr = da.concatenate([arr] * reps, axis=a.dims.index("time"))[:n_time]
            arr = arr.rechunk((chunk_time, space, space))
        else:
            arr = arr.rechunk(tuple(space for _ in arr.shape))
        out[v] = xr.Variable(a.dims, arr, a.attrs)
    coords = {"lat": ("lat", lat, small["lat"].attrs), "lon": ("lon", lon, small["lon"].attrs),
              "time": ("time", time_)}
    ds = xr.Dataset(out, coords=coords, attrs=small.attrs)
    for v in ds.data_vars:
        ds[v].encoding = {}
    print(f"writing the soak cube {path} ({n_time} steps x {n_lat} x {n_lon}, "
          f"{per_step * n_time / GiB:.1f} GiB uncompressed) ...", flush=True)
    t = time.perf_counter()
    with dask.config.set(scheduler="threads"):
        ds.to_zarr(path, mode="w", zarr_format=3, consolidated=False)
    print(f"  written in {time.perf_counter() - t:.0f} s", flush=True)
    return xgpp.open_cube(str(path))


class Sampler:
    """Every ``every`` s: chunks written to the output store, RSS of each worker and of this process."""

    def __init__(self, store: Path, client, every: float, log: Path, stall: float) -> None:
        self.store, self.every, self.rows, self.log, self.stall = store, every, [], log, stall
        self.stalled = False
        log.write_text("")
        self.client = client
        self.pids = list(client.run(os.getpid).values())
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _done(self) -> int:
        """Output chunks on disk (finer than done slabs: a slab is a row of chunks)."""
        return sum(len(files) for _, _, files in os.walk(self.store / "gpp" / "c"))

    def _rss(self) -> list[float]:
        out = []
        for pid in self.pids:
            try:
                out.append(psutil.Process(pid).memory_info().rss / GiB)
            except psutil.Error:
                out.append(float("nan"))
        return out

    def sample(self) -> None:
        heap = list(self.client.run(_heap).values())
        row = {"t": time.perf_counter() - self.t0, "chunks": self._done(),
               "worker_gib": self._rss(), "heap_in_use_gib": [h[0] for h in heap],
               "heap_free_gib": [h[1] for h in heap],
               "client_gib": psutil.Process().memory_info().rss / GiB}
        self.rows.append(row)
        with self.log.open("a") as f:  # as it goes: a stalled or killed run can be read
            f.write(json.dumps(row) + "\n")

    def _run(self) -> None:
        last_change = time.perf_counter()
        while not self._stop.wait(self.every):
            before = self.rows[-1]["chunks"]
            self.sample()
            if self.rows[-1]["chunks"] != before:
                last_change = time.perf_counter()
            elif time.perf_counter() - last_change > self.stall and not self.stalled:
                self.stalled = True
                print(f"\nSTALLED: no output chunk written for {self.stall:.0f} s; worker RSS "
                      f"{[round(g, 2) for g in self.rows[-1]['worker_gib']]} GiB (see "
                      f"{self.log})", flush=True)

    def __enter__(self) -> Sampler:
        self.t0 = time.perf_counter()
        self.sample()
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self.sample()


def verdict(rows: list[dict], *, chunk_land: float, chunk_pixels: float, n_chunks: int,
            mem_tol: float, tput_tol: float) -> dict:
    """First and last tenth of the run, after the first written chunk."""
    t = np.array([r["t"] for r in rows])
    done = np.array([r["chunks"] for r in rows], dtype=float)
    mem = np.array([np.nanmax(r["worker_gib"]) for r in rows])
    live = np.array([max(r["heap_in_use_gib"]) for r in rows])
    start = t[np.argmax(done >= 1)] if (done >= 1).any() else t[0]
    end = t[-1]
    span = end - start
    first = (t >= start) & (t <= start + span / 10)
    last = t >= end - span / 10

    def rate(sel):
        ts, ds = t[sel], done[sel]
        if len(ts) < 2 or ts[-1] <= ts[0]:
            return float("nan")
        return float((ds[-1] - ds[0]) / (ts[-1] - ts[0]) * chunk_land)

    # throughput over the tenths: chunks finish in bursts, so rates come from the done-count
    # line over each tenth of the run (least squares) rather than from two samples
    def fit(sel):
        ts, ds = t[sel], done[sel]
        if len(ts) < 3 or np.ptp(ts) == 0:
            return rate(sel)
        return float(np.polyfit(ts, ds, 1)[0] * chunk_land)

    tenths = []
    for i in range(10):
        sel = (t >= start + i * span / 10) & (t <= start + (i + 1) * span / 10)
        tenths.append({"tenth": i + 1, "land_msps": fit(sel) / 1e6,
                       "worker_gib_median": float(np.median(mem[sel])) if sel.any() else None,
                       "worker_gib_max": float(np.max(mem[sel])) if sel.any() else None,
                       "heap_in_use_gib_median": float(np.median(live[sel])) if sel.any()
                       else None})
    m_first, m_last = float(np.median(mem[first])), float(np.median(mem[last]))
    h_first, h_last = float(np.median(live[first])), float(np.median(live[last]))
    r_first, r_last = tenths[0]["land_msps"], tenths[-1]["land_msps"]
    mid = np.array([x["land_msps"] for x in tenths[1:-1]], dtype=float)
    mid = mid[np.isfinite(mid)]
    noise = float(np.std(mid) / np.mean(mid)) if len(mid) > 1 else float("nan")
    overall = n_chunks * chunk_land / (t[-1] - t[0]) / 1e6
    return {
        "duration_s": float(t[-1] - t[0]), "overall_land_msps": overall,
        "overall_pixel_msps": n_chunks * chunk_pixels / (t[-1] - t[0]) / 1e6,
        "worker_gib_first_tenth": m_first, "worker_gib_last_tenth": m_last,
        "worker_gib_peak": float(np.nanmax(mem)),
        "memory_growth": m_last / m_first - 1,
        "heap_in_use_gib_first_tenth": h_first, "heap_in_use_gib_last_tenth": h_last,
        "heap_in_use_growth_gib": h_last - h_first,
        "land_msps_first_tenth": r_first, "land_msps_last_tenth": r_last,
        "throughput_ratio_last_first": r_last / r_first,
        "throughput_cv_middle_tenths": noise,
        # the leak test: memory in use (RSS also holds freed heap glibc keeps) grows by less
        # than the tolerance's share of the first tenth's RSS
        "memory_flat": abs(h_last - h_first) <= mem_tol * m_first,
        "rss_flat": abs(m_last / m_first - 1) <= mem_tol,
        "throughput_steady": abs(r_last / r_first - 1) <= max(tput_tol, 2 * noise),
        "tenths": tenths,
    }


def _heap() -> tuple[float, float]:
    """glibc's heap in this process [GiB]: (in use, freed but kept), over every arena.

    ``malloc_info`` totals: in use = system bytes - free (fast + rest) + mmapped chunks.  RSS
    also counts freed heap glibc keeps (fragmentation, the trim threshold); a leak shows in
    the in-use figure."""
    import ctypes
    import re
    import tempfile

    libc = ctypes.CDLL("libc.so.6")
    libc.fopen.restype = ctypes.c_void_p
    with tempfile.NamedTemporaryFile(suffix=".xml") as tmp:
        f = libc.fopen(tmp.name.encode(), b"w")
        libc.malloc_info(0, ctypes.c_void_p(f))
        libc.fclose(ctypes.c_void_p(f))
        xml = Path(tmp.name).read_text()
    tail = xml[xml.rfind("</heap>"):]

    def total(kind: str, tag: str = "total") -> int:
        m = re.search(rf'<{tag} type="{kind}"[^>]* size="(\d+)"', tail)
        return int(m.group(1)) if m else 0

    free = total("fast") + total("rest")
    in_use = total("current", "system") - free + total("mmap")
    return in_use / GiB, free / GiB


def _trimmed_rss() -> float:
    import ctypes

    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return psutil.Process().memory_info().rss / GiB


def figure(rows: list[dict], v: dict, limit: float, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.array([r["t"] for r in rows]) / 60
    mem = np.array([r["worker_gib"] for r in rows])
    live = np.array([r["heap_in_use_gib"] for r in rows])
    fig, (a, b) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for i in range(mem.shape[1]):
        line, = a.plot(t, mem[:, i], label=f"worker {i} RSS")
        a.plot(t, live[:, i], color=line.get_color(), ls=":", label=f"worker {i} heap in use")
    a.axhline(limit, color="k", ls="--", lw=1, label="memory limit")
    a.set_ylabel("worker memory [GiB]")
    a.set_ylim(0, limit * 1.1)
    a.legend(loc="lower right", fontsize=8)
    a.set_title(title)
    span = (t[-1] - t[0])
    mids = [t[0] + (x["tenth"] - 0.5) * span / 10 for x in v["tenths"]]
    b.plot(mids, [x["land_msps"] for x in v["tenths"]], "o-")
    b.set_ylabel("throughput [M land samples / s]")
    b.set_xlabel("time since start [min]")
    b.set_ylim(0, None)
    b.set_title("throughput per tenth of the run")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker-memory", type=float, default=1.0, help="GiB per worker")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--ratio", type=float, default=20.0,
                   help="cube size (uncompressed, time-varying inputs) over the worker cap")
    p.add_argument("--refine", type=int, default=8, help="split each 2-degree cell k x k")
    p.add_argument("--chunk-time", type=int, default=8)
    p.add_argument("--every", type=float, default=3.0, help="sampling interval [s]")
    p.add_argument("--stall", type=float, default=180.0,
                   help="report a stall when no chunk is written for this long [s]")
    p.add_argument("--mem-tolerance", type=float, default=0.10)
    p.add_argument("--tput-tolerance", type=float, default=0.15)
    p.add_argument("--work", default=str(RESULTS / "soak-data"))
    p.add_argument("--worker-env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra worker environment (e.g. MALLOC_TRIM_THRESHOLD_=4194304)")
    p.add_argument("--quick", action="store_true", help="a ~2 GiB cube: a smoke check")
    a = p.parse_args(argv)
    if a.quick:
        a.ratio, a.every = 2.0, 1.0
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(exist_ok=True)
    world, model = world_and_model(work, years=2)
    drivers = xgpp.open_cube(str(world / "drivers.zarr"))
    names = [v for v in model.inputs if v in drivers]
    for v in ("land_mask",):
        if v in drivers and v not in names:
            names.append(v)
    cube = big_cube(drivers[names].load(), names, work / "soak_drivers.zarr", k=a.refine,
                    target_bytes=a.ratio * a.worker_memory * GiB, chunk_time=a.chunk_time)
    dyn = [v for v in names if "time" in cube[v].dims]
    size = sum(cube[v].size * 4 for v in dyn)
    land = int(np.isfinite(drivers[dyn[0]].isel(time=0)).sum()) * a.refine**2
    n_space = int(np.prod([len(c) for c in cube[dyn[0]].chunksizes.values()][1:]))
    n_chunks = cube.sizes["time"] // a.chunk_time * n_space
    chunk_land = land * a.chunk_time / n_space  # mean over the space chunks
    chunk_pixels = cube.sizes["lat"] * cube.sizes["lon"] * a.chunk_time / n_space
    out = work / "soak_gpp.zarr"
    shutil.rmtree(out, ignore_errors=True)
    print(f"cube: {size / GiB:.1f} GiB uncompressed ({len(dyn)} time-varying inputs x "
          f"{cube.sizes['time']} steps x {cube.sizes['lat']} x {cube.sizes['lon']}), "
          f"{land * cube.sizes['time'] / 1e6:.0f} M land samples; workers {a.workers} x "
          f"{a.worker_memory:g} GiB; model {model.id}", flush=True)
    env = dict(kv.split("=", 1) for kv in a.worker_env)
    with xgpp.cluster("local", n_workers=a.workers, threads_per_worker=1,
                      memory_limit=f"{a.worker_memory}GiB", env=env) as client:
        with Sampler(out, client, a.every, RESULTS / "soak-samples.jsonl", a.stall) as s:
            write_prediction(cube, model, str(out), progress=True)
        # what the workers hold once glibc returns their freed heap: live memory, not cache
        trimmed = sorted(client.run(_trimmed_rss).values())
    v = verdict(s.rows, chunk_land=chunk_land, chunk_pixels=chunk_pixels, n_chunks=n_chunks,
                mem_tol=a.mem_tolerance, tput_tol=a.tput_tolerance)
    complete = bool(zarr.open_group(str(out), mode="r").attrs.get("xgpp_complete"))
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "cube_gib_uncompressed": size / GiB, "ratio_to_worker_cap": size / GiB /
              a.worker_memory, "workers": a.workers, "worker_memory_gib": a.worker_memory,
              "land_samples": land * cube.sizes["time"], "store_complete": complete,
              "model": model.id, "stalled": s.stalled, "worker_env": env,
              "worker_gib_after_malloc_trim": trimmed, "verdict": v, "samples": s.rows}
    tag = "soak-quick" if a.quick else "soak"
    (RESULTS / f"{tag}.json").write_text(json.dumps(result, indent=1))
    figure(s.rows, v, a.worker_memory,
           f"soak: {size / GiB:.0f} GiB cube through {a.workers} workers x "
           f"{a.worker_memory:g} GiB", RESULTS / f"{tag}.png")
    print(f"\n| quantity | first tenth | last tenth |\n|---|---|---|\n"
          f"| worker RSS median [GiB] | {v['worker_gib_first_tenth']:.3f} | "
          f"{v['worker_gib_last_tenth']:.3f} |\n"
          f"| worker heap in use median [GiB] | {v['heap_in_use_gib_first_tenth']:.3f} | "
          f"{v['heap_in_use_gib_last_tenth']:.3f} |\n"
          f"| throughput [M land samples/s] | {v['land_msps_first_tenth']:.3f} | "
          f"{v['land_msps_last_tenth']:.3f} |\n")
    print(f"cube {size / GiB:.1f} GiB ({size / GiB / a.worker_memory:.0f}x the worker cap), "
          f"{v['duration_s'] / 60:.1f} min, overall {v['overall_land_msps']:.2f} M land "
          f"samples/s ({v['overall_pixel_msps']:.2f} M pixels/s), worker peak "
          f"{v['worker_gib_peak']:.2f} GiB, memory growth {v['memory_growth']:+.1%}, "
          f"throughput last/first {v['throughput_ratio_last_first']:.2f} (middle-tenth "
          f"CV {v['throughput_cv_middle_tenths']:.1%}); worker RSS after malloc_trim "
          f"{[round(x, 3) for x in trimmed]} GiB; store complete: {complete}")
    ok = v["memory_flat"] and v["throughput_steady"] and complete and not s.stalled
    print("verdict:", "no leak, steady" if ok else "LEAK OR SLOWDOWN (see soak.json)")
    print(f"wrote {RESULTS / (tag + '.json')} and {RESULTS / (tag + '.png')}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
