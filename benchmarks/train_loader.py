"""Benchmark: does the streamed grid loader keep SIF pre-training fed?

Writes a twin world's ``drivers`` and ``sif_tropomi`` to local Zarr v3 stores (store chunks as
the twin world's, ``time 46 x lat 90 x lon 90``), then measures in one process:

1. **loader**      samples/s delivered by :class:`xgpp.samples.GridSamples` (xbatcher batches
                   aligned with the store chunks, flattened, NaN-filtered, shuffle buffer,
                   background prefetch) with nothing consuming them;
2. **model**       samples/s consumed by training steps of the default network
                   (``TrainConfig().net``, batch ``TrainConfig().pretrain.batch_size``) on
                   in-memory tensors;
3. **end to end**  the loader feeding those training steps (the rate a real epoch runs at);
4. **xbatcher per pixel**  ``BatchGenerator(input_dims={"time": 1, "lat": 1, "lon": 1})`` on a
                   small lazy slice of the same stores, extrapolated to samples/s;
5. **memory**      peak RSS growth while streaming half the cube and the whole cube.

With ``--moe`` it measures the multi-task MoE's mixed batches instead, on ``drivers``,
``sif_oco2`` (OCO-2-like tracks) and ``sites``: the loader alone
(:class:`xgpp.tracks.MixedSamples`: track, site and unlabelled rows by the default
proportions), one training step of the default MoE (``TrainConfig().moe``, batch
``TrainConfig().multitask.phase.batch_size``, masked SIF + GPP losses and the physics term),
the loader feeding those steps, and peak memory streaming half the record and the whole
record (the record doubled).

Usage::

    python benchmarks/train_loader.py            # 0.5 degree, 2018-05..2019-12
    python benchmarks/train_loader.py --quick    # 4 degree, one year: a smoke run
    python benchmarks/train_loader.py --moe      # the MoE's mixed batches, 0.5 degree
    python benchmarks/train_loader.py --moe --quick

Every rate counts land samples: valid rows handed to the model (every input finite; a SIF
value, a site GPP value or an unlabelled land pixel), never ocean pixels.  The networks are
the defaults the training methods build (``TrainConfig().net`` MLP and ``TrainConfig().moe``
MMoE, each behind the GPP floor).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import threading
import time
import warnings

import numpy as np


class PeakRSS:
    """Track the peak resident set size [bytes] above a baseline in a background thread."""

    def __init__(self, interval: float = 0.02) -> None:
        import psutil

        self.proc = psutil.Process()
        self.interval = interval
        self.base = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.base) / 2**20


def write_stores(root: str, resolution: float, start: str, end: str,
                 names: tuple[str, ...] = ("drivers", "sif_tropomi")) -> None:
    import dask

    from xgpp.synthetic import make_world

    w = make_world(resolution=resolution, start=start, end=end, seed=0)
    jobs = []
    if "sites" in names:
        w.sites.compute().to_zarr(f"{root}/sites.zarr", mode="w", zarr_format=3,
                                  consolidated=False)
    for name, ds in ((n, getattr(w, n)) for n in names if n != "sites"):
        enc = {v: {"chunks": tuple(c[0] for c in ds[v].chunks)} for v in ds.data_vars}
        jobs.append(ds.to_zarr(f"{root}/{name}.zarr", mode="w", zarr_format=3,
                               consolidated=False, encoding=enc, compute=False))
    dask.compute(*jobs)


def open_store(root: str, name: str):
    import xarray as xr

    return xr.open_zarr(f"{root}/{name}.zarr", consolidated=False)


def loader_rate(stream, max_samples: int | None = None, epoch: int = 0) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = 0
    for x, _ in stream.iterate(epoch, max_samples=max_samples):
        n += len(x)
    return n / (time.perf_counter() - t0), n


def default_net(n_features: int):
    """The network SIFTML pre-trains and EC-only trains by default, and its optimiser.

    Built as the training methods build it (``xgpp.train.methods._mlp.new_mlp``: the
    ``TrainConfig().net`` MLP, seeded by a local generator) behind the GPP floor
    (``nonnegative_gpp``), so a step costs what a real step costs.
    """
    import torch

    from xgpp.models.mlp import MLP, build_seeded
    from xgpp.models.outputs import NonNegative
    from xgpp.train import TrainConfig

    cfg = TrainConfig()
    net = build_seeded(lambda: MLP(n_features, 1, cfg.net), 0)
    floored = NonNegative(net, [3.0], [2.0], [0])
    return floored, torch.optim.AdamW(net.parameters(), lr=cfg.pretrain.lr)


def model_rate(n_features: int, batch: int, steps: int = 30) -> float:
    import torch

    net, opt = default_net(n_features)
    x = torch.randn(batch, n_features)
    y = torch.randn(batch, 1)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(net(x), y).backward()
        opt.step()

    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - t0)


def end_to_end_rate(stream, n_features: int, max_samples: int) -> tuple[float, float]:
    """Loader feeding training steps; returns (samples/s, fraction of time waiting on data)."""
    import torch

    net, opt = default_net(n_features)
    waited = 0.0
    n = 0
    t0 = time.perf_counter()
    it = stream.iterate(1, max_samples=max_samples)
    while True:
        tw = time.perf_counter()
        try:
            xb, yb = next(it)
        except StopIteration:
            break
        waited += time.perf_counter() - tw
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(net(torch.from_numpy(xb)), torch.from_numpy(yb)).backward()
        opt.step()
        n += len(xb)
    total = time.perf_counter() - t0
    return n / total, waited / total


def per_pixel_xbatcher_rate(drivers, sif, names: list[str], n_pixels: int) -> float:
    """xbatcher's per-pixel pattern on a lazy slice: one (time, lat, lon) pixel per batch."""
    import xbatcher

    ds = drivers[names].isel(time=slice(0, 1))
    ds["sif"] = sif["sif"].reindex(time=ds.time)
    side = int(np.sqrt(n_pixels))
    # a land-rich slice (mid-latitudes, Eurasia)
    iy = int(np.abs(ds.lat.values - 45).argmin())
    ix = int(np.abs(ds.lon.values - 60).argmin())
    ds = ds.isel(lat=slice(iy, iy + side), lon=slice(ix, ix + side))
    gen = xbatcher.BatchGenerator(ds, input_dims={"time": 1, "lat": 1, "lon": 1})
    t0 = time.perf_counter()
    n = 0
    for batch in gen:
        np.asarray(batch["tair"].values)
        n += 1
    return n / (time.perf_counter() - t0)


def moe_rows(args, root: str, res: float, start: str, end: str) -> list[tuple[str, str]]:
    """The MoE's mixed-batch loader against one training step of the default MoE."""
    import torch

    from xgpp.models.features import FeatureConfig, FeatureSpec
    from xgpp.models.moe import MMoE
    from xgpp.models.outputs import NonNegative
    from xgpp.samples import site_samples
    from xgpp.tracks import MixedSamples, TrackIndex
    from xgpp.train import TrainConfig
    from xgpp.train.methods._multitask import Relation, gate_forward, multitask_loss

    if not os.path.exists(f"{root}/sif_oco2.zarr"):
        t0 = time.perf_counter()
        write_stores(root, res, start, end, ("drivers", "sif_oco2", "sites"))
        print(f"wrote twin world {res} deg {start}..{end} to {root} in "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
    drivers, sif = open_store(root, "drivers"), open_store(root, "sif_oco2")
    sites = open_store(root, "sites").compute()
    cfg = TrainConfig()
    mt = cfg.multitask
    spec = FeatureSpec.fit(FeatureConfig(), drivers)
    t0 = time.perf_counter()
    index = TrackIndex.build(sif, drivers)
    t_index = time.perf_counter() - t0
    samples = site_samples(drivers, sites, inputs=spec.inputs)
    from xgpp.models.features import columns_from_dataset

    xs = spec.transform(columns_from_dataset(samples, spec.inputs))
    gpp = samples["gpp"].values.astype(np.float32)
    site_rows = (xs, (gpp - gpp.mean()) / gpp.std(), samples["igbp"].values.astype(int))
    batch = mt.phase.batch_size
    kw = dict(sites=site_rows, proportions=mt.proportions, batch_size=batch,
              shuffle_buffer=mt.shuffle_buffer, prefetch=cfg.loader.prefetch,
              workers=args.workers, sif_scale=(0.5, 0.5), seed=0)

    def loader_only(stream, epoch: int = 0) -> tuple[float, int]:
        t = time.perf_counter()
        n = 0
        for b in stream.iterate(epoch):
            n += len(b["x"])
        return n / (time.perf_counter() - t), n

    # memory with the row cache off (what streaming costs), half and whole record
    half_t = drivers.sizes["time"] // 2
    half_use = index.t < half_t
    all_use = np.ones(index.n_soundings, bool)
    with PeakRSS() as mem_half:
        r_half, n_half = loader_only(MixedSamples(drivers, sif, spec, index, use=half_use,
                                                  cache_mib=0, **kw))
    with PeakRSS() as mem_full:
        cold, n_all = loader_only(MixedSamples(drivers, sif, spec, index, use=all_use,
                                               cache_mib=0, **kw))
    stream = MixedSamples(drivers, sif, spec, index, use=all_use, **kw)
    loader_only(stream)  # fills the row cache
    rate, _ = loader_only(stream, 1)  # later epochs: no chunk decoded

    tasks = ("sif", "gpp")
    torch.manual_seed(0)
    # as xgpp.train.methods.moe.build_moe builds it: the default MMoE behind the GPP floor
    net = NonNegative(MMoE(spec.n_features, tasks, cfg.moe, embed_column=spec.embed_column),
                      [0.5, 3.0], [0.5, 3.0], [1])
    rel = Relation(np.full(17, 12.0), np.zeros(17), learnable=False)
    loss = multitask_loss(tasks, weights={"sif": 1.0, "gpp": 1.0}, sif_scale=(0.5, 0.5),
                          gpp_scale=(3.0, 3.0), relation=rel, physics_weight=mt.physics_weight)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)

    def step(b: dict) -> None:
        bt = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in b.items()}
        opt.zero_grad(set_to_none=True)
        total, _ = loss(gate_forward(net, bt), bt)
        total.backward()
        opt.step()

    fixed = next(iter(stream.iterate(0, max_batches=1)))
    for _ in range(3):
        step(fixed)
    steps = 30
    t0 = time.perf_counter()
    for _ in range(steps):
        step(fixed)
    m_rate = steps * len(fixed["x"]) / (time.perf_counter() - t0)
    waited, n, t0 = 0.0, 0, time.perf_counter()
    it = stream.iterate(2, max_batches=60)
    while True:
        tw = time.perf_counter()
        try:
            b = next(it)
        except StopIteration:
            break
        waited += time.perf_counter() - tw
        step(b)
        n += len(b["x"])
    e2e = n / (time.perf_counter() - t0)
    wait = waited / (time.perf_counter() - t0)
    return [
        ("cube", f"{res} deg, {drivers.sizes['time']} steps ({start}..{end}), OCO-2-like tracks"),
        ("soundings / coverage", f"{index.n_soundings:,} / {100 * index.coverage:.1f}% of "
                                 f"{index.coverage_basis}"),
        ("track index build [s]", f"{t_index:.1f}  (chunks with soundings {index.n_chunks} of "
                                  f"{index.n_chunks_total})"),
        ("land rows per epoch (track+site+unlabelled)", f"{n_all:,}"),
        ("MoE loader, first epoch (decodes chunks) [land rows/s]", f"{cold:,.0f}"),
        ("MoE loader, later epochs (row cache) [land rows/s]", f"{rate:,.0f}"),
        ("MoE training step [land rows/s]", f"{m_rate:,.0f}  (batch {batch}, {cfg.moe.n_experts} "
                                       f"experts {cfg.moe.expert_hidden}, "
                                       f"{torch.get_num_threads()} torch threads)"),
        ("loader / model", f"{rate / m_rate:.1f}x later epochs, {cold / m_rate:.1f}x first "
                           "(goal >= 3x)"),
        ("end to end: loader feeding steps [land rows/s]",
         f"{e2e:,.0f}  (waiting on data {100 * wait:.0f}% of the time)"),
        ("peak RSS growth, first half of the record", f"{mem_half.growth_mb:,.0f} MiB "
                                                      f"({n_half:,} rows, {r_half:,.0f}/s; "
                                                      "no row cache)"),
        ("peak RSS growth, whole record (doubled)", f"{mem_full.growth_mb:,.0f} MiB "
                                                    f"({n_all:,} rows; no row cache)"),
        ("row cache (bounded by cache_mib)", f"{stream.cached_mib:,.0f} MiB of "
                                             f"{stream.cache_bytes / 2**20:,.0f}"),
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="4 degree, one year: a smoke run")
    p.add_argument("--resolution", type=float, default=None, help="grid spacing [degree]")
    p.add_argument("--start", default=None)
    p.add_argument("--end", default=None)
    p.add_argument("--root", default=None, help="folder for the stores (default: temporary)")
    p.add_argument("--keep", action="store_true", help="keep the stores afterwards")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--moe", action="store_true", help="the MoE's mixed batches on OCO-2 tracks")
    args = p.parse_args()
    res = args.resolution or (4.0 if args.quick else 0.5)
    start = args.start or ("2018-05-01" if not args.quick else "2019-01-01")
    end = args.end or "2019-12-31"
    warnings.simplefilter("ignore")  # the world's BoundsWarnings etc. say nothing here

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from xgpp.models.features import FeatureConfig, FeatureSpec
    from xgpp.samples import GridSamples, store_chunks
    from xgpp.train import TrainConfig

    root = args.root or tempfile.mkdtemp(prefix="xgpp-bench-")
    rows: list[tuple[str, str]] = []
    try:
        if args.moe:
            rows = moe_rows(args, root, res, start, end)
            _print(rows)
            return
        if not os.path.exists(f"{root}/drivers.zarr"):
            t0 = time.perf_counter()
            write_stores(root, res, start, end)
            print(f"wrote twin world {res} deg {start}..{end} to {root} in "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
        drivers, sif = open_store(root, "drivers"), open_store(root, "sif_tropomi")
        spec = FeatureSpec.fit(FeatureConfig(), drivers)
        chunks = store_chunks(drivers, spec.inputs)
        cfg = TrainConfig()
        batch = cfg.pretrain.batch_size
        kw = dict(batch_size=batch, shuffle_buffer=cfg.loader.shuffle_buffer,
                  prefetch=cfg.loader.prefetch, workers=args.workers)
        cube_mb = sum(drivers[v].nbytes for v in spec.inputs) / 2**20 + sif["sif"].nbytes / 2**20

        # memory: half the cube, then the whole cube (same chunking)
        half_t = sif.sizes["time"] // 2
        half = GridSamples(drivers, sif.isel(time=slice(0, half_t)), spec, seed=0, **kw)
        with PeakRSS() as mem_half:
            rate_half, n_half = loader_rate(half)
        stream = GridSamples(drivers, sif, spec, seed=0, **kw)
        with PeakRSS() as mem_full:
            rate, n_all = loader_rate(stream)
        m_rate = model_rate(spec.n_features, batch)
        e2e, wait = end_to_end_rate(stream, spec.n_features, max_samples=min(n_all, 40 * batch))
        px = per_pixel_xbatcher_rate(drivers, sif, list(spec.inputs), 400 if not args.quick
                                     else 100)

        rows += [
            ("cube", f"{res} deg, {drivers.sizes['time']} steps ({start}..{end}), "
                     f"{cube_mb:.0f} MiB of inputs+SIF"),
            ("store chunks (= xbatcher input_dims)", str(chunks)),
            ("GridSamples generators / chunks", f"{len(stream.generators)} / {stream.n_chunks}"),
            ("land samples per epoch (valid rows: inputs finite, SIF observed)", f"{n_all:,}"),
            ("loader, nothing consuming [land samples/s]", f"{rate:,.0f}"),
            ("model training step [land samples/s]", f"{m_rate:,.0f}  (batch {batch}, "
                                                 f"{torch.get_num_threads()} torch threads)"),
            ("loader / model", f"{rate / m_rate:.1f}x  (goal >= 3x)"),
            ("end to end: loader feeding training [land samples/s]",
             f"{e2e:,.0f}  (waiting on data {100 * wait:.0f}% of the time)"),
            ("xbatcher per-pixel input_dims=1 [pixels/s, land or not]", f"{px:,.0f}"),
            ("loader / per-pixel xbatcher", f"{rate / px:,.0f}x  (goal >= 50x)"),
            ("peak RSS growth, half cube", f"{mem_half.growth_mb:,.0f} MiB "
                                           f"({n_half:,} samples)"),
            ("peak RSS growth, whole cube", f"{mem_full.growth_mb:,.0f} MiB ({n_all:,} samples)"),
            ("process max RSS (getrusage)",
             f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB"),
            ("rate on half cube [land samples/s]", f"{rate_half:,.0f}"),
        ]
        _print(rows)
    finally:
        if not args.keep and not args.root:
            shutil.rmtree(root, ignore_errors=True)


def _print(rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    print()
    print(f"{'measure':<{width}}  value")
    print(f"{'-' * width}  {'-' * 40}")
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()
