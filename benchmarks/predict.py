"""Benchmark of streaming inference against its limits and the ways users write it today.

Every row runs in one process on the same twin-world driver cube (0.5 degree, 92 steps by
default, store chunks 46 x 90 x 90) with the models the training registry builds by default
(:mod:`benchmarks._common`): ``xgpp train --method ec-only`` (31 features, 128-128-64 SiLU
MLP behind the GPP floor; the reference model of every row), SIFTML (the same MLP,
pre-trained on SIF) and the multi-task MoE.  Rates are given in **land samples** per second
(valid rows fed to the model: every input finite, a known IGBP class) and in **pixels** per
second (time x lat x lon, ocean included); both divide the same wall time.

The three limits:

(a) bare model     the model on the cube's feature rows already in memory, chunk by chunk;
(f) I/O floor      read the model's time-varying inputs and write one float32 output with the
                   prediction's codec, no model, on the same cluster;
(g) raw codec      decode the same stored chunks and encode the output chunks with the stores'
                   own codecs, in memory, a thread pool over chunks on all cores.

(f') and (g') are the same through xgpp's own write path (``ds.gpp.to_zarr``, ``xgpp
predict``: the direct chunk writer, Blosc LZ4 output), and its codec limit.  The rounds also
run the pipeline and (f) on the cube opened with dask chunks of ``COARSE`` (``--coarse``) times
the stored ones (``xgpp.open_cube(..., chunks=...)``; by default the whole record along time
over the stored lat/lon chunks), against their own (g) and ceiling.

(a*) is the kernel each task runs between its read and its write (``xgpp.predict``'s
featurisation batch by batch, the forward and the NaN fill) on the same chunks already loaded,
so (a*) / (a) is what featurisation costs and the pipeline against (a*)+(f) what the cluster
and the fused read-predict-write add; it is a diagnostic, the goal stays against (a)+(f).

(a) and (f) in series is the model-plus-I/O ceiling of a pipeline on the same cores.  The
pipeline ``ds.gpp.predict(model).to_zarr`` on the default ``xgpp.cluster("local")`` is read
as a ratio of that ceiling, and the I/O floor as a ratio of (g), each as the median of rounds
that alternate the bare model (no cluster alive) and the raw codec limit with a fresh cluster
(first run warms the workers; the second is timed, then the I/O floor).  Besides, the peers:
(b) naive load-stack-predict-write, (c) xbatcher patches and per-pixel samples, (d) dask-ml
``ParallelPostFit``; (e) the resumable writer, one worker of two threads, the threaded
scheduler, the MoE, and a fresh process's peak memory; (b) and (e) with the record doubled
(full mode only).

    python benchmarks/predict.py [--quick] [--rounds 3] [--device cpu] [--skip-peers]
                                 [--limits-only] [--coarse time=all]
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import xarray as xr

sys.path.insert(0, str(Path(__file__).parent))
from _common import DATA, PeakMemory, default_model, describe, world  # noqa: E402

import xgpp  # noqa: E402
from xgpp.io._chunkread import numcodec  # noqa: E402

OUT = DATA / "out"


# ----------------------------------------------------------------------------- the cube
def open_drivers(wpath: Path) -> xr.Dataset:
    return xgpp.open_cube("drivers", catalog=str(wpath / "catalog.yaml"))


#: dask chunks of the "coarser chunks" rows (``--coarse``), as multiples of the stored chunks;
#: ``"all"`` is the whole dimension: blocks of the whole record over the stored lat/lon chunks,
#: each stored chunk one contiguous run of its block, decoded in place
COARSE: dict[str, int | str] = {"time": "all"}


def parse_coarse(text: str) -> dict[str, int | str]:
    """``time=2,lat=2`` -> ``{"time": 2, "lat": 2}`` (multiples of the stored chunks, or
    ``all``)."""
    out: dict[str, int | str] = {}
    try:
        for part in text.split(","):
            d, k = part.split("=")
            out[d.strip()] = "all" if k.strip() == "all" else int(k)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--coarse {text!r}: expected DIM=K[,DIM=K] with K a multiple of the stored chunk "
            "or 'all', e.g. time=all or time=2,lat=2") from None
    bad = [d for d, k in out.items() if d not in ("time", "lat", "lon") or (k != "all" and int(k) < 1)]
    if bad:
        raise argparse.ArgumentTypeError(
            f"--coarse {text!r}: {bad} must be time, lat or lon with a multiple >= 1 or 'all'")
    return out


def open_coarse(wpath: Path, ds: xr.Dataset, coarse: dict[str, int | str]) -> xr.Dataset:
    """The same cube opened with dask chunks of ``coarse`` times the stored ones (fewer, larger
    tasks, each read from the whole stored chunks it spans): ``open_cube(..., chunks=)``."""
    stored = ds["tair"].encoding["preferred_chunks"]
    return xgpp.open_cube("drivers", catalog=str(wpath / "catalog.yaml"),
                          chunks={d: ds.sizes[d] if k == "all" else min(int(k) * int(stored[d]),
                                                                          ds.sizes[d])
                                  for d, k in coarse.items()})


def chunk_slices(ds: xr.Dataset):
    """Integer slices of every dask chunk of ``ds`` (time, lat, lon)."""
    c = ds.chunks
    edges = {d: np.concatenate([[0], np.cumsum(c[d])]).astype(int) for d in ("time", "lat", "lon")}
    for idx in itertools.product(*(range(len(c[d])) for d in ("time", "lat", "lon"))):
        yield {d: slice(int(edges[d][n]), int(edges[d][n + 1]))
               for d, n in zip(("time", "lat", "lon"), idx, strict=True)}


def chunk_features(ds: xr.Dataset, model, inputs: list | None = None) -> list[np.ndarray]:
    """The model's feature rows of every chunk (valid rows only), as the kernel builds them;
    with ``inputs`` (a list), each chunk's loaded inputs are appended to it as well."""
    out = []
    for sl in chunk_slices(ds):
        sub = ds[list(model.inputs)].isel(sl).compute()
        x, _ = model.features(sub, return_mask=True)
        out.append(x)
        if inputs is not None:
            inputs.append(sub)
    return out


# ----------------------------------------------------------------------------- the table
class Table:
    """Rows of (variant, seconds, land samples, pixels, peak bytes); printed as they come."""

    def __init__(self, n_land: int, n_pix: int) -> None:
        self.n_land, self.n_pix = n_land, n_pix
        self.rows: list[tuple[str, float, float, float, float]] = []
        self.base: float | None = None

    def add(self, name: str, seconds: float, peak: float = float("nan"), *, scale: float = 1.0,
            derived: bool = False) -> float:
        land, pix = scale * self.n_land / seconds, scale * self.n_pix / seconds
        if self.base is None:
            self.base = land
        self.rows.append((name, land, pix, land / self.base, peak, derived))
        mem = "" if np.isnan(peak) else f"  peak {peak / 2**30:5.2f} GiB"
        print(f"{name:<78s} {land / 1e6:8.3f} M land/s {pix / 1e6:8.3f} M px/s "
              f"{land / self.base:6.3f} x (a){mem}", flush=True)
        return land

    def run(self, name: str, fn, *, scale: float = 1.0, children_only: bool = False) -> float:
        with PeakMemory(children_only) as mem:
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
        return self.add(name, dt, mem.peak, scale=scale)

    def markdown(self) -> str:
        lines = ["| variant | M land samples/s | M pixels/s | ratio to (a) | peak memory [GiB] |",
                 "|---|---|---|---|---|"]
        for name, land, pix, ratio, peak, _ in self.rows:
            mem = "" if np.isnan(peak) else f"{peak / 2**30:.2f}"
            lines.append(f"| {name} | {land / 1e6:.4g} | {pix / 1e6:.4g} | {ratio:.3g} | {mem} |")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- the limits
def over_chunks(one, items: list, device: str, threads: int | None = None):
    """A timed call: ``one`` over ``items``, on a CPU ``threads`` (default: every core) threads
    over chunks, one torch thread each (as the pipeline's workers run it); on a GPU in turn."""
    n = 1 if device.startswith("cuda") else (threads or os.cpu_count() or 1)

    def fn() -> None:
        saved = torch.get_num_threads()
        torch.set_num_threads(1 if n > 1 else saved)
        try:
            with ThreadPoolExecutor(n) as pool:
                list(pool.map(one, items))
        finally:
            torch.set_num_threads(saved)
    return fn


def bare(feats: list[np.ndarray], model, device: str, batch_size: int | None = None,
         threads: int | None = None):
    """(a) The model on in-memory chunk rows (:func:`over_chunks`)."""
    def one(x: np.ndarray) -> None:
        model.predict_numpy(x, device=device, batch_size=batch_size)
    return over_chunks(one, feats, device, threads)


def kernel(chunks: list[xr.Dataset], model, varying: list[str], device: str):
    """(a*) What each task of the pipeline runs between its read and its write, on in-memory
    input chunks: ``xgpp.predict``'s kernel (featurisation batch by batch, the forward, the
    NaN fill), over chunks as (a) runs (:func:`over_chunks`)."""
    from xgpp.predict import _predict_block

    static = [n for n in model.inputs if n not in varying]
    blocks = [([c[v].values for v in varying + static], c["lat"].values, c["lon"].values)
              for c in chunks]

    def one(b) -> None:
        arrays, lat, lon = b
        _predict_block(*arrays, model, varying=varying, static=static, columns=[0],
                       device=device, batch_size=None, precision="float32", lat=lat, lon=lon)
    return over_chunks(one, blocks, device)


def predict_to_zarr(ds: xr.Dataset, model, path: Path, device: str):
    def fn() -> None:
        shutil.rmtree(path, ignore_errors=True)
        ds.gpp.predict(model, device=device).to_zarr(path, mode="w", zarr_format=3,
                                                     consolidated=False)
    return fn


def io_floor(ds: xr.Dataset, varying: list[str], path: Path, like: Path):
    """Read the time-varying inputs, write one float32 output with the codec of the
    prediction store ``like`` (what ``predict().to_zarr`` wrote)."""
    import zarr

    compressors = zarr.open_array(str(like / "gpp"), mode="r").compressors

    def fn() -> None:
        shutil.rmtree(path, ignore_errors=True)
        _floor_output(ds, varying).to_dataset().to_zarr(
            path, mode="w", zarr_format=3, consolidated=False,
            encoding={"gpp": {"compressors": compressors}})
    return fn


def io_floor_writer(ds: xr.Dataset, varying: list[str], path: Path, direct: bool = True):
    """The same I/O through xgpp's own write path (``ds.gpp.to_zarr``, ``xgpp predict``):
    the store created as :func:`xgpp.predict.write_prediction` creates it (Blosc LZ4), each
    chunk stored and its valid values counted by the same ``_store_and_count``, through the
    direct chunk writer (``xgpp/io/_chunkwrite.py``) where it applies (``direct=False``:
    through zarr's ``Array.__setitem__``, as before the writer)."""
    import dask.array as da
    import zarr

    from xgpp.io._chunkwrite import chunk_writer
    from xgpp.predict import OUTPUT_COMPRESSORS, _store_and_count

    def fn() -> None:
        shutil.rmtree(path, ignore_errors=True)
        out = _floor_output(ds, varying)
        data = out.data
        out.to_dataset().to_zarr(path, mode="w", compute=False, zarr_format=3,
                                 consolidated=False,
                                 encoding={"gpp": {"compressors": OUTPUT_COMPRESSORS}})
        target = zarr.open_group(str(path), mode="r+")["gpp"]
        writer = chunk_writer(target, str(path / "gpp")) if direct else None
        if writer is None and direct:
            raise RuntimeError(f"the direct chunk writer refuses {path}/gpp")
        counts = da.map_blocks(_store_and_count, data, targets=[target], writers=[writer],
                               t0=0, dtype=np.int64, chunks=(1,) * data.ndim,
                               meta=np.empty((0,) * data.ndim, np.int64))
        counts.sum().compute()
    return fn


def _floor_output(ds: xr.Dataset, varying: list[str]) -> xr.DataArray:
    """The floors' lazy output: every input's chunk is read and decoded, the first one is
    written, so the floor is I/O and nothing else (adding the inputs up, as this floor once
    did, costs a tenth of its time)."""
    import dask.array as da

    first = ds[varying[0]]
    data = da.map_blocks(_first_block, *(ds[v].data for v in varying), dtype=np.float32)
    return xr.DataArray(data, dims=first.dims, coords=first.coords, name="gpp")


def _first_block(*blocks: np.ndarray) -> np.ndarray:
    return np.asarray(blocks[0], np.float32)


_REF: dict = {}


class CodecLimit:
    """The raw codec limit: stored chunk bytes in memory, decoded with the input stores' codecs,
    and output chunks encoded with the output store's codec, a thread pool over chunks."""

    def __init__(self, drivers_store: Path, varying: list[str], output_store: Path) -> None:
        import zarr

        self.tasks = []
        out = zarr.open_array(str(output_store / "gpp"), mode="r")
        (enc,) = [numcodec(c) for c in out.compressors]
        self.encoder, self.out_codec = enc, out.compressors[0]
        arrays = {v: zarr.open_array(str(drivers_store / v), mode="r") for v in varying}
        decoders = {v: [numcodec(c) for c in a.compressors] for v, a in arrays.items()}
        self.in_codec = arrays[varying[0]].compressors[0]
        if enc is None or any(d is None for ds in decoders.values() for d in ds):
            raise NotImplementedError(f"no numcodecs equivalent of the codecs of {output_store} "
                                      f"or {drivers_store} in this benchmark")
        grid = [range(-(-s // c)) for s, c in zip(out.shape, out.chunks, strict=True)]
        inner = arrays[varying[0]].chunks  # output chunks are multiples of the input chunks
        self.nbytes = 0
        for idx in itertools.product(*grid):
            sel = tuple(slice(i * c, min((i + 1) * c, n))
                        for i, c, n in zip(idx, out.chunks, out.shape, strict=True))
            keys = ["c/" + "/".join(map(str, k)) for k in itertools.product(
                *(range(s.start // c, -(-s.stop // c)) for s, c in zip(sel, inner, strict=True)))]
            # chunks never written (all fill value: whole ocean) cost a reader nothing either
            raws = [(decoders[v], arrays[v].dtype, (drivers_store / v / key).read_bytes())
                    for v in varying for key in keys if (drivers_store / v / key).exists()]
            self.tasks.append((raws, np.ascontiguousarray(out[sel])))
            self.nbytes += sum(len(r) for _, _, r in raws)

    def _one(self, task) -> int:
        raws, y = task
        for decs, dtype, raw in raws:
            buf = raw
            for d in reversed(decs):
                buf = d.decode(buf)
            np.frombuffer(buf, dtype)
        return len(self.encoder.encode(y))

    def __call__(self, threads: int | None = None) -> float:
        with ThreadPoolExecutor(threads or os.cpu_count()) as pool:
            t0 = time.perf_counter()
            list(pool.map(self._one, self.tasks))
            return time.perf_counter() - t0


# ----------------------------------------------------------------------------- peers
def naive(ds: xr.Dataset, model, path: Path, device: str):
    def fn() -> None:
        mem = ds[list(model.inputs)].compute()
        x, valid = model.features(mem, return_mask=True)
        y = np.full(valid.shape, np.nan, np.float32)
        y[valid] = model.predict_numpy(x, device=device)[:, 0]
        res = xr.Dataset({"gpp": (("time", "lat", "lon"), y.reshape(mem["tair"].shape))},
                         coords={c: mem[c] for c in ("time", "lat", "lon")})
        res.to_zarr(path, mode="w", zarr_format=3, consolidated=False)
    return fn


def dask_ml_predict(ds: xr.Dataset, model, path: Path, device: str):
    """dask-ml ``ParallelPostFit`` on a 2-D dask array of the raw inputs (one column each),
    the estimator featurising its rows with the model's own feature spec."""
    import dask.array as da
    from dask_ml.wrappers import ParallelPostFit

    spec = model.spec
    shape = ds["tair"].shape
    names = list(spec.inputs)

    class Est:
        def fit(self, X, y=None):
            return self

        def predict(self, X):
            cols = {n: X[:, i] for i, n in enumerate(names + ["lat", "lon"])}
            out = np.full(len(X), np.nan, np.float32)
            ok = spec.valid_mask(cols)
            if ok.any():
                x = spec.transform({k: v[ok] for k, v in cols.items()})
                out[ok] = model.predict_numpy(x, device=device)[:, 0]
            return out

    def col(a):
        return da.broadcast_to(a, shape).reshape(-1).astype(np.float32)

    lat = da.from_array(ds["lat"].values[None, :, None].astype(np.float32))
    lon = da.from_array(ds["lon"].values[None, None, :].astype(np.float32))
    X = da.stack([col(ds[n].data) for n in names] + [col(lat), col(lon)], axis=1)
    ppf = ParallelPostFit(Est())

    def fn() -> None:
        y = ppf.predict(X).reshape(shape)
        da.to_zarr(y, str(path), overwrite=True)
    return fn


def xbatcher_patches(ds: xr.Dataset, model, device: str):
    import xbatcher

    sizes = ds["tair"].data.chunksize

    def fn() -> None:
        gen = xbatcher.BatchGenerator(ds[list(model.inputs)], input_dims=dict(
            zip(("time", "lat", "lon"), sizes, strict=True)))
        for batch in gen:
            x, _ = model.features(batch, return_mask=True)
            model.predict_numpy(x, device=device)
    return fn


def xbatcher_pixels(small: xr.Dataset, model, device: str):
    import xbatcher

    def fn() -> None:
        gen = xbatcher.BatchGenerator(small, input_dims={"time": 1, "lat": 1, "lon": 1})
        for batch in gen:
            x, _ = model.features(batch, return_mask=True)
            if x.shape[0]:
                model.predict_numpy(x, device=device)
    return fn


# ----------------------------------------------------------------------------- rounds
def rounds(args, table: Table, ds, model, feats, varying, kind: str, coarse=None,
           chunks: list | None = None) -> dict:
    """Alternate the bare model and the codec limit (no cluster alive) with a fresh cluster:
    its first run warms the workers, the second is timed, then the I/O floor; with ``coarse``
    (the cube opened with coarser dask chunks), the pipeline (warm, then timed) and the I/O
    floor on it too, against its own codec limit (its output chunks are the coarser ones).  With
    ``chunks`` (the loaded input chunks), the kernel (a*) too, and the ceiling (a*)+(f)."""
    res: dict[str, list[float]] = {k: [] for k in ("bare", "pipe", "first", "floor", "codec",
                                                    "ceiling", "r_pipe", "r_floor", "wfloor",
                                                    "wcodec", "r_wfloor", "cpipe", "cfloor",
                                                    "ccodec", "cceiling", "r_cpipe", "r_cfloor",
                                                    "kernel", "kceiling", "r_kpipe")}
    path, fpath, wpath = OUT / "xgpp.zarr", OUT / "io.zarr", OUT / "io_writer.zarr"
    cpath, cfpath = OUT / "xgpp_coarse.zarr", OUT / "io_coarse.zarr"
    codec = wcodec = ccodec = None

    def rate(fn) -> float:
        """Land samples per second of one call of ``fn``."""
        t0 = time.perf_counter()
        fn()
        return table.n_land / (time.perf_counter() - t0)

    for r in range(args.rounds):
        b = rate(bare(feats, model, args.device))
        k = rate(kernel(chunks, model, varying, args.device)) if chunks else float("nan")
        with xgpp.cluster(kind) as client:
            info = list(client.scheduler_info()["workers"].values())
            sizing = f"{len(info)} workers x {info[0]['nthreads']} threads"
            first = rate(predict_to_zarr(ds, model, path, args.device))
            p = rate(predict_to_zarr(ds, model, path, args.device))
            f = rate(io_floor(ds, varying, fpath, path))
            io_floor_writer(ds, varying, wpath)()  # warm, as (f) is by the runs before it
            wf = rate(io_floor_writer(ds, varying, wpath))
            cp = cf = float("nan")
            if coarse is not None:
                predict_to_zarr(coarse, model, cpath, args.device)()  # its graph, warm
                cp = rate(predict_to_zarr(coarse, model, cpath, args.device))
                cf = rate(io_floor(coarse, varying, cfpath, path))
        if codec is None:  # the stored input chunks and the pipeline's output, in memory
            src = Path(str(ds.encoding["source"]).removeprefix("file://"))
            codec = CodecLimit(src, varying, path)
            wcodec = CodecLimit(src, varying, wpath)  # the same, with the Blosc output
            if coarse is not None:  # the same inputs, the coarser floor's output chunks
                ccodec = CodecLimit(src, varying, cfpath)
        c = table.n_land / codec()
        wc = table.n_land / wcodec()
        cc = table.n_land / ccodec() if ccodec is not None else float("nan")
        ceil = 1.0 / (1.0 / b + 1.0 / f)
        cceil = 1.0 / (1.0 / b + 1.0 / cf)
        kceil = 1.0 / (1.0 / k + 1.0 / f)
        for key, v in zip(res, (b, p, first, f, c, ceil, p / ceil, f / c, wf, wc, wf / wc,
                                cp, cf, cc, cceil, cp / cceil, cf / cc, k, kceil, p / kceil),
                          strict=True):
            res[key].append(v)
        print(f"  round {r + 1}: bare {b / 1e6:.3f}, kernel {k / 1e6:.3f}, codec {c / 1e6:.3f}, "
              f"cluster first run "
              f"{first / 1e6:.3f}, second {p / 1e6:.3f}, I/O floor {f / 1e6:.3f} M land/s; "
              f"pipeline / ceiling {p / ceil:.3f} (/ (a*)+(f) {p / kceil:.3f}), floor / codec "
              f"{f / c:.3f}; xgpp's writer: "
              f"floor {wf / 1e6:.3f}, codec {wc / 1e6:.3f}, floor / codec {wf / wc:.3f}"
              + ("" if coarse is None else
                 f"; coarser chunks: pipeline {cp / 1e6:.3f}, floor {cf / 1e6:.3f}, codec "
                 f"{cc / 1e6:.3f}, pipeline / ceiling {cp / cceil:.3f}, floor / codec "
                 f"{cf / cc:.3f}"), flush=True)
    res["sizing"] = sizing
    res["codec_limit"] = codec
    res["wcodec_name"] = wcodec.out_codec.__class__.__name__
    return res


def summary(res: dict, table: Table, kind: str) -> list[str]:
    def med(k: str) -> str:
        v = res[k]
        return f"{statistics.median(v):.3f} ({min(v):.3f}-{max(v):.3f})"

    def rate(k: str) -> str:
        v = [x / 1e6 for x in res[k]]
        return f"{statistics.median(v):.3f} ({min(v):.3f}-{max(v):.3f})"

    codec: CodecLimit = res["codec_limit"]
    px = table.n_pix / table.n_land
    lines = [
        f"rounds: {len(res['bare'])}; median (range); M land samples/s (x {px:.2f} for pixels/s)",
        "",
        "| limit or run | M land samples/s | ratio |",
        "|---|---|---|",
        f"| (a) bare model ({describe(_REF['model'])}) | {rate('bare')} | |",
        f"| (f) I/O floor: read {len(_REF['varying'])} time-varying inputs + write one float32 "
        f"output, no model, {kind} cluster ({res['sizing']}) | {rate('floor')} | "
        f"{med('r_floor')} of (g) (goal >= 0.7) |",
        f"| (g) raw codec limit: decode {codec.in_codec.__class__.__name__} inputs + encode the "
        f"{codec.out_codec.__class__.__name__} output, in memory, {os.cpu_count()} threads | "
        f"{rate('codec')} | |",
        f"| (f') I/O floor through xgpp's own writer (`ds.gpp.to_zarr`'s store path, "
        f"direct chunk writer, {res['wcodec_name']}) | {rate('wfloor')} | {med('r_wfloor')} "
        "of (g') |",
        f"| (g') raw codec limit with that output codec | {rate('wcodec')} | |",
        f"| (a)+(f) in series: the model-plus-I/O ceiling | {rate('ceiling')} | |",
        f"| (a*) kernel: featurise + model on in-memory input chunks (a task's work between "
        f"its read and its write) | {rate('kernel')} | |",
        f"| (a*)+(f) in series | {rate('kceiling')} | |",
        f"| (e) `ds.gpp.predict(model).to_zarr`, fresh `xgpp.cluster(\"{kind}\")`, first run | "
        f"{rate('first')} | |",
        f"| (e) `ds.gpp.predict(model).to_zarr`, same cluster, second run | {rate('pipe')} | "
        f"{med('r_pipe')} of the ceiling (goal >= 0.9); {med('r_kpipe')} of (a*)+(f) |",
    ]
    if res.get("coarse"):
        lines += [
            f"| **coarser dask chunks** (`open_cube(..., chunks={res['coarse']})`: "
            f"{res['coarse_tasks']} tasks instead of {res['tasks']}) | | |",
            f"| (f) I/O floor | {rate('cfloor')} | {med('r_cfloor')} of its (g) (goal >= 0.7) |",
            f"| (g) raw codec limit, its output chunks | {rate('ccodec')} | |",
            f"| (a)+(f) in series | {rate('cceiling')} | |",
            f"| (e) `ds.gpp.predict(model).to_zarr`, second run | {rate('cpipe')} | "
            f"{med('r_cpipe')} of its ceiling (goal >= 0.9) |",
        ]
    return lines


# ----------------------------------------------------------------------------- main
def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    wpath = world(args.resolution, args.years)
    ds = open_drivers(wpath)
    models = {m: default_model(wpath, m) for m in ("ec-only", "siftml", "moe")}
    model = models["ec-only"]
    varying = [n for n in model.inputs if "time" in ds[n].dims]
    _REF.update(model=model, varying=varying)
    OUT.mkdir(parents=True, exist_ok=True)
    dev = args.device
    kind = "cuda" if dev.startswith("cuda") else "local"

    loaded: list[xr.Dataset] = []  # the input chunks, for the kernel (a*)
    feats = chunk_features(ds, model, loaded)
    n_land = sum(len(x) for x in feats)
    n_pix = int(np.prod([ds.sizes[d] for d in ("time", "lat", "lon")]))
    print(f"cube: {dict(ds.sizes)}, chunks {ds['tair'].data.chunksize}, {n_pix / 1e6:.1f} M "
          f"pixels, {n_land / 1e6:.2f} M land samples ({100 * n_land / n_pix:.0f} %)")
    for m in models.values():
        print(f"  model: {describe(m)}")
    table = Table(n_land, n_pix)

    # (a) the bare model: in-memory feature rows, chunk by chunk, the default batch
    torch.set_num_threads(os.cpu_count() if kind == "local" else 1)
    model.predict_numpy(feats[0], device=dev)  # warm-up: device copy, CUDA context
    table.run(f"(a) bare model: {describe(model)}, in-memory chunk arrays, one thread per core",
              bare(feats, model, dev))
    for name in () if args.limits_only else ("siftml", "moe"):
        m = models[name]
        same = m.spec.to_dict() == model.spec.to_dict()
        mf = feats if same else chunk_features(ds, m)
        m.predict_numpy(mf[0], device=dev)
        table.run(f"(a) bare model: {describe(m)}", bare(mf, m, dev))
    if dev.startswith("cuda"):
        module = model._module_on(dev)
        on_dev = [torch.from_numpy(x).to(dev) for x in feats]
        bs = xgpp.models.base.default_batch_size(dev)

        def resident() -> None:
            with torch.inference_mode():
                for x in on_dev:
                    for i in range(0, x.shape[0], bs):
                        module(x[i:i + bs])
            torch.cuda.synchronize()
        resident()
        table.run("(a-gpu) model on device-resident batches (no host transfers)", resident)
        on_dev.clear()
    elif not args.limits_only:
        table.run("(a') bare model, 262 144-row batches (xgpp < 0.2 default)",
                  bare(feats, model, dev, batch_size=262_144))
        table.run(f"(a'') bare model, one chunk at a time, {torch.get_num_threads()} torch "
                  "threads", bare(feats, model, dev, threads=1))

    # (b), (c), (d): the peers, with the same default model
    if not (args.skip_peers or args.limits_only):
        table.run("(b) naive: load, stack, predict, reshape, write",
                  naive(ds, model, OUT / "naive.zarr", dev))
        table.run("(c) xbatcher chunk-sized patches", xbatcher_patches(ds, model, dev))
        # the 10 x 10 window with the most land (per-pixel batching costs the same anywhere,
        # but only land pixels reach the model)
        land = ds["land_mask"].values.astype(float)
        win = np.lib.stride_tricks.sliding_window_view(land, (10, 10)).sum(axis=(2, 3))
        iy, ix = np.unravel_index(int(win.argmax()), win.shape)
        small = ds[list(model.inputs)].isel(time=slice(0, 2), lat=slice(iy, iy + 10),
                                            lon=slice(ix, ix + 10)).load()
        n_small = small["tair"].size
        land_small = int(model.features(small, return_mask=True)[1].sum())
        t0 = time.perf_counter()
        xbatcher_pixels(small, model, dev)()
        dt = time.perf_counter() - t0
        # the slice is extrapolated to the cube: same time per pixel
        table.add(f"(c) xbatcher per-pixel samples ({n_small}-pixel slice, {land_small} land, "
                  "extrapolated)", dt * n_pix / n_small)
        try:
            import dask_ml  # noqa: F401
        except ImportError:
            print("(d) skipped: dask-ml not installed (pip install dask-ml)")
        else:
            fn = dask_ml_predict(ds, model, OUT / "dml.zarr", dev)
            table.run("(d) dask-ml ParallelPostFit, threaded", fn)
            with xgpp.cluster("local"):
                table.run("(d) dask-ml ParallelPostFit, LocalCluster", fn)
    feats_keep = feats

    # the three limits and the pipeline, in alternating rounds
    torch.set_num_threads(os.cpu_count() if kind == "local" else 1)
    coarse = open_coarse(wpath, ds, args.coarse)
    res = rounds(args, table, ds, model, feats_keep, varying, kind, coarse=coarse,
                 chunks=loaded)
    res["coarse"] = {d: int(c[0]) for d, c in coarse["tair"].chunksizes.items()
                     if d in args.coarse}
    res["coarse_tasks"] = coarse["tair"].data.npartitions
    res["tasks"] = ds["tair"].data.npartitions
    med = {k: statistics.median(res[k]) for k in ("bare", "pipe", "floor", "codec", "ceiling",
                                                   "first", "wfloor", "wcodec", "cpipe",
                                                   "cfloor", "ccodec", "cceiling", "kernel",
                                                   "kceiling")}
    table.add(f"(e) ds.gpp.predict().to_zarr, {kind} cluster ({res['sizing']}), fresh cluster's "
              "first run (median of rounds)", n_land / med["first"])
    table.add(f"(e) ds.gpp.predict().to_zarr, {kind} cluster ({res['sizing']}), second run "
              "(median of rounds)", n_land / med["pipe"])
    table.add(f"(f) I/O floor: read {len(varying)} inputs + write one output, no model, {kind} "
              "cluster (median)", n_land / med["floor"])
    table.add(f"(g) raw codec limit: decode + encode in memory, {os.cpu_count()} threads "
              "(median)", n_land / med["codec"])
    table.add(f"(f') I/O floor through xgpp's own writer (direct chunk writer, "
              f"{res['wcodec_name']}), {kind} cluster (median)", n_land / med["wfloor"])
    table.add(f"(g') raw codec limit with that output codec, {os.cpu_count()} threads (median)",
              n_land / med["wcodec"])
    table.add("(a)+(f) in series: the model-plus-I/O ceiling (median of rounds)",
              n_land / med["ceiling"], derived=True)
    table.add("(a*) kernel: featurise + model on in-memory input chunks, one thread per core "
              "(median)", n_land / med["kernel"])
    table.add("(a*)+(f) in series (median of rounds)", n_land / med["kceiling"], derived=True)
    grain = f"dask chunks {' x '.join(map(str, coarse['tair'].data.chunksize))}"
    table.add(f"(e) ds.gpp.predict().to_zarr, {kind} cluster, {grain}, second run (median)",
              n_land / med["cpipe"])
    table.add(f"(f) I/O floor, {grain} (median)", n_land / med["cfloor"])
    table.add(f"(g) raw codec limit, output chunks {grain.split(' ', 2)[2]} (median)",
              n_land / med["ccodec"])
    table.add(f"(a)+(f) in series, {grain} (median of rounds)", n_land / med["cceiling"],
              derived=True)
    del feats
    loaded.clear()

    if args.limits_only:
        print("\n" + table.markdown())
        print("\n" + "\n".join(summary(res, table, kind)))
        return

    # (e) the other ways of running the pipeline
    path = OUT / "xgpp.zarr"
    with xgpp.cluster(kind):
        predict_to_zarr(ds, model, path, dev)()

        def resumable(p=OUT / "xgpp_resumable.zarr") -> None:
            shutil.rmtree(p, ignore_errors=True)
            ds.gpp.to_zarr(model, str(p), device=dev, progress=False)
        table.run(f"(e) ds.gpp.to_zarr (resumable writer), {kind} cluster", resumable)
        moe = models["moe"]
        predict_to_zarr(ds, moe, OUT / "moe.zarr", dev)()
        table.run(f"(e) ds.gpp.predict(MoE: gpp and sif).to_zarr, {kind} cluster, second run",
                  predict_to_zarr(ds, moe, OUT / "moe.zarr", dev))
    if kind == "cuda":
        with xgpp.cluster("cuda", processes_per_gpu=1):
            predict_to_zarr(ds, model, path, dev)()
            table.run("(e) ds.gpp.predict().to_zarr, dask-cuda (1 worker per GPU), second run",
                      predict_to_zarr(ds, model, path, dev))
            table.run("(f) I/O floor, dask-cuda (1 worker per GPU)",
                      io_floor(ds, varying, OUT / "io.zarr", path))
    else:
        with xgpp.cluster("local", n_workers=1, threads_per_worker=os.cpu_count()):
            predict_to_zarr(ds, model, path, dev)()
            table.run(f"(e) ds.gpp.predict().to_zarr, LocalCluster (1 worker x {os.cpu_count()} "
                      "threads), second run", predict_to_zarr(ds, model, path, dev))
    table.run("(e) ds.gpp.predict().to_zarr, threaded scheduler",
              predict_to_zarr(ds, model, path, dev))
    cmd = [sys.executable, __file__, "--child", "--resolution", str(args.resolution),
           "--years", str(args.years), "--device", dev]
    table.run(f"(e) fresh process: imports, cube, model, new {kind} cluster, predict().to_zarr "
              "(rate includes start-up; memory of that process tree only)",
              lambda: subprocess.run(cmd, check=True), children_only=True)

    if not args.quick:
        ds2 = open_drivers(world(args.resolution, 2 * args.years))
        table.run("(b) naive, time axis doubled", naive(ds2, model, OUT / "naive2.zarr", dev),
                  scale=2.0)
        with xgpp.cluster(kind):
            predict_to_zarr(ds2, model, OUT / "xgpp2.zarr", dev)()
            table.run(f"(e) {kind} cluster, time axis doubled, second run",
                      predict_to_zarr(ds2, model, OUT / "xgpp2.zarr", dev), scale=2.0)

    print("\n" + table.markdown())
    print("\n" + "\n".join(summary(res, table, kind)))


def child(args: argparse.Namespace) -> None:
    """One prediction as a user script runs it (``--child``; measured by the parent)."""
    wpath = world(args.resolution, args.years)
    ds = open_drivers(wpath)
    model = default_model(wpath, "ec-only")
    with xgpp.cluster("cuda" if args.device.startswith("cuda") else "local"):
        predict_to_zarr(ds, model, OUT / "child.zarr", args.device)()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--resolution", type=float, default=0.5)
    p.add_argument("--years", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--rounds", type=int, default=3,
                   help="alternating rounds of bare model / codec limit / fresh cluster (>= 3)")
    p.add_argument("--quick", action="store_true", help="skip the doubled-record runs")
    p.add_argument("--skip-peers", action="store_true",
                   help="skip the peers (b), (c), (d): only xgpp's rows against its limits")
    p.add_argument("--limits-only", action="store_true",
                   help="only the rounds: bare model, I/O floor, codec limit, the pipeline")
    p.add_argument("--coarse", type=parse_coarse, default=COARSE, metavar="DIM=K[,DIM=K]",
                   help="dask chunks of the coarser-chunks rows, as multiples of the stored "
                        "ones or 'all' (default time=all: the whole record over the stored "
                        "lat/lon chunks)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    child(a) if a.child else run(a)
