"""Training samples: driver values at eddy-covariance sites, and streamed grid pixels.

Two sources, one feature kernel (:class:`xgpp.models.features.FeatureSpec`):

* :func:`site_samples` joins site GPP to the drivers at each site's grid cell (nearest cell,
  optionally a window mean) on the cube's time steps.  Everything it drops is counted and
  reported with a :class:`SampleExclusionWarning`; nothing is lost silently.
* :class:`GridSamples` streams every valid ``(time, lat, lon)`` pixel (all inputs and the
  target finite) from Zarr-backed cubes through ``xbatcher.BatchGenerator`` with
  ``input_dims`` equal to the store's chunks, flattens and NaN-filters each chunk in
  background threads (or on a Dask cluster), mixes samples in a bounded shuffle buffer and
  hands ready float32 batches to the training loop through a bounded queue.  Memory is
  bounded by ``prefetch`` chunks plus ``shuffle_buffer`` samples whatever the cube size.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import queue
import threading
import warnings
from collections import deque
from collections.abc import Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from xgpp._strings import as_str
from xgpp.errors import InputError, NotFoundError
from xgpp.landcover import code_to_class
from xgpp.models.features import FeatureConfig, FeatureSpec, columns_from_dataset
from xgpp.variables import VARIABLES

__all__ = [
    "GridSamples",
    "SampleExclusionWarning",
    "ShuffleBuffer",
    "site_samples",
    "store_chunks",
    "validation_cells",
]


class SampleExclusionWarning(UserWarning):
    """Sites or samples were excluded from training; the message gives the counts."""


def _names(ids: list[str] | np.ndarray, limit: int = 8) -> str:
    ids = list(ids)
    return ", ".join(map(str, ids[:limit])) + (f" (+{len(ids) - limit} more)"
                                              if len(ids) > limit else "")


def _grid_index(grid: np.ndarray, x: np.ndarray, *, periodic: bool) -> tuple[np.ndarray,
                                                                             np.ndarray]:
    """Nearest grid index of each value and the distance to that cell centre [degree]."""
    d = x[:, None] - grid[None, :]
    if periodic:
        d = (d + 180.0) % 360.0 - 180.0
    idx = np.abs(d).argmin(axis=1)
    return idx, np.abs(d[np.arange(len(x)), idx])


# --------------------------------------------------------------------------------------------
# site samples
# --------------------------------------------------------------------------------------------
def site_samples(drivers: xr.Dataset, sites: xr.Dataset, *,
                 inputs: tuple[str, ...] | None = None, target: str = "gpp", window: int = 1,
                 igbp_from: str = "site", stacklevel: int = 2) -> xr.Dataset:
    """Drivers at each EC site's grid cell joined to the site's target on the cube time steps.

    Parameters
    ----------
    drivers : xarray.Dataset
        Driver cube on ``(time, lat, lon)`` (lazy is fine; only the sites' cells are read),
        with static ``igbp`` [class number] and ``elevation`` [m] where requested.
    sites : xarray.Dataset
        ``target`` on ``(site, time)`` [gC m-2 d-1 for GPP] with coordinates ``site``,
        ``lat`` [degree_north], ``lon`` [degree_east] and optionally ``igbp`` (code, e.g.
        ``"ENF"``).
    inputs : tuple of str, optional
        Variables to extract; default the inputs of the default :class:`FeatureConfig`.
    target : str
        Site variable to join (``"gpp"``).
    window : int
        Odd edge of the square window of cells averaged around the nearest cell (1: the cell
        itself).  NaN cells inside the window are skipped.
    igbp_from : {"site", "cell"}
        Take the ``igbp`` input from the site's own class (tower metadata) or from the cell.

    Returns
    -------
    xarray.Dataset
        One ``sample`` dimension; one variable per input plus ``target``; coordinates ``site``,
        ``time``, ``lat``/``lon`` (tower location), ``igbp_code``, ``cell_lat``/``cell_lon``.
        ``attrs["exclusions"]`` (JSON) records every counted exclusion.

    Warns
    -----
    SampleExclusionWarning
        When sites lie outside the grid, site records fall outside the cube's time axis, inputs
        are NaN at a site's cell, or a site keeps no valid sample (with counts).

    Raises
    ------
    KeyError
        When a requested input or the target is missing.
    ValueError
        When the cube's time axis does not overlap the site records, or no sample remains.
    """
    inputs = tuple(inputs or FeatureConfig().inputs)
    if window < 1 or window % 2 == 0:
        raise InputError(f"window={window} must be a positive odd number of cells (1, 3, 5...).")
    if igbp_from not in ("site", "cell"):
        raise InputError(f"igbp_from={igbp_from!r}; use 'site' or 'cell'.")
    missing = [v for v in inputs if v not in drivers]
    if missing:
        raise NotFoundError(f"driver cube lacks input(s) {missing}; it has "
                       f"{sorted(map(str, drivers.data_vars))}. Add them or change the inputs.")
    if target not in sites or "site" not in sites.dims:
        raise NotFoundError(f"site dataset must hold {target!r} on ('site', 'time'); it has "
                       f"{sorted(map(str, sites.data_vars))} with dims {dict(sites.sizes)}.")
    exclusions: dict[str, Any] = {}

    # --- locate cells
    ids = as_str(sites["site"].values)
    slat = np.asarray(sites["lat"].values, float)
    slon = ((np.asarray(sites["lon"].values, float) + 180.0) % 360.0) - 180.0
    glat = np.asarray(drivers["lat"].values, float)
    glon = np.asarray(drivers["lon"].values, float)
    dlat = float(np.median(np.diff(glat))) if len(glat) > 1 else 180.0
    dlon = float(np.median(np.diff(glon))) if len(glon) > 1 else 360.0
    periodic = abs(len(glon) * dlon - 360.0) < 1e-6 * 360
    iy, ey = _grid_index(glat, slat, periodic=False)
    ix, ex = _grid_index(glon, slon, periodic=periodic)
    inside = (ey <= abs(dlat) / 2 * (1 + 1e-6)) & (ex <= abs(dlon) / 2 * (1 + 1e-6))
    inside &= np.isfinite(slat) & np.isfinite(slon)
    if not inside.all():
        out = ids[~inside]
        exclusions["outside_grid"] = out.tolist()
        warnings.warn(
            f"{len(out)} of {len(ids)} sites lie outside the driver grid (lat {glat.min():.2f}.."
            f"{glat.max():.2f}, lon {glon.min():.2f}..{glon.max():.2f}, cells of {dlat:g} x "
            f"{dlon:g} degree) and are excluded: {_names(out)}.",
            SampleExclusionWarning, stacklevel=stacklevel,
        )
    if not inside.any():
        raise InputError("no site lies inside the driver grid; check the sites' lat/lon "
                         "[degree] and the cube's extent.")
    sites = sites.isel(site=np.flatnonzero(inside))
    ids, slat, slon, iy, ix = ids[inside], slat[inside], slon[inside], iy[inside], ix[inside]

    # --- time overlap
    tc = pd.DatetimeIndex(drivers["time"].values)
    ts = pd.DatetimeIndex(sites["time"].values)
    common = tc.intersection(ts)
    if len(common) == 0:
        raise InputError(
            f"the driver cube's time axis ({tc.min():%Y-%m-%d}..{tc.max():%Y-%m-%d}, "
            f"{len(tc)} steps) does not overlap the site records ({ts.min():%Y-%m-%d}.."
            f"{ts.max():%Y-%m-%d}, {len(ts)} steps). Use a cube covering the site years, or "
            "aggregate the sites to the cube's time steps."
        )
    site_target = sites[target].transpose("site", "time")
    lost = int(np.isfinite(site_target.drop_sel(time=common).values).sum()) if len(
        common) < len(ts) else 0
    if lost:
        exclusions["off_cube_time"] = lost
        warnings.warn(
            f"{lost} site {target} values fall on times not on the cube's time axis "
            f"({tc.min():%Y-%m-%d}..{tc.max():%Y-%m-%d}) and are excluded.",
            SampleExclusionWarning, stacklevel=stacklevel,
        )
    y = np.asarray(site_target.sel(time=common).values, np.float32)  # (site, time)

    # --- extract inputs at the cells
    half = window // 2
    off = np.arange(-half, half + 1)
    wy = np.clip(iy[:, None, None] + off[None, :, None], 0, len(glat) - 1)
    wx = ix[:, None, None] + off[None, None, :]
    wx = wx % len(glon) if periodic else np.clip(wx, 0, len(glon) - 1)
    wy = np.broadcast_to(wy, (len(ids), window, window)).reshape(len(ids), -1)
    wx = np.broadcast_to(wx, (len(ids), window, window)).reshape(len(ids), -1)
    iy_da = xr.DataArray(wy, dims=("site", "win"))
    ix_da = xr.DataArray(wx, dims=("site", "win"))
    sub = drivers[list(inputs)]
    if "time" in sub.dims:
        sub = sub.sel(time=common)
    picked = sub.isel(lat=iy_da, lon=ix_da).compute()
    values: dict[str, np.ndarray] = {}
    for name in inputs:
        da = picked[name]
        if name == "igbp":
            centre = da.isel(win=(window * window) // 2).values  # class of the nearest cell
            values[name] = np.broadcast_to(np.asarray(centre)[:, None], y.shape)
            continue
        order = [d for d in ("site", "time", "win") if d in da.dims]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows -> NaN, counted
            arr = np.nanmean(np.asarray(da.transpose(*order).values, np.float64), axis=-1)
        if "time" in da.dims:
            values[name] = arr.astype(np.float32)
        else:
            values[name] = np.broadcast_to(arr.astype(np.float32)[:, None], y.shape)
    codes = (as_str(sites["igbp"].values) if "igbp" in sites.coords
             else np.array(["UNK"] * len(ids)))
    if "igbp" in inputs and igbp_from == "site" and "igbp" in sites.coords:
        try:
            cls_ = code_to_class(codes)
        except ValueError as err:
            raise InputError(f"site igbp codes must be IGBP short codes: {err}. Fix the site "
                             "metadata or use igbp_from='cell'.") from err
        values["igbp"] = np.broadcast_to(cls_[:, None], y.shape)

    # --- QC: keep samples with a finite target and every input finite
    has_y = np.isfinite(y)
    ok = has_y.copy()
    nan_counts = {}
    for name in inputs:
        v = values[name]
        bad = has_y & ~np.isfinite(v) if np.issubdtype(v.dtype, np.floating) else has_y & (
            v < 0)
        if name == "igbp":
            bad |= has_y & (v <= 0)  # water or unknown class at a tower cell
        if bad.any():
            nan_counts[name] = int(bad.sum())
        ok &= ~bad
    n_dropped = int(has_y.sum() - ok.sum())
    if n_dropped:
        per_site = (has_y & ~ok).sum(axis=1)
        worst = np.argsort(-per_site)[: min(5, int((per_site > 0).sum()))]
        exclusions["input_missing"] = {"samples": n_dropped, "by_input": nan_counts}
        warnings.warn(
            f"{n_dropped} of {int(has_y.sum())} site-time samples with {target} were excluded "
            f"because an input is missing at the site's grid cell (count by input: "
            f"{nan_counts}); most affected sites: "
            + ", ".join(f"{ids[i]} ({per_site[i]})" for i in worst) + ".",
            SampleExclusionWarning, stacklevel=stacklevel,
        )
    empty = ids[ok.sum(axis=1) == 0]
    if len(empty):
        exclusions["sites_without_samples"] = empty.tolist()
        warnings.warn(
            f"{len(empty)} of {len(ids)} sites have no valid sample after QC (no {target} on "
            f"the cube's time steps, or inputs missing at their cells) and are excluded: "
            f"{_names(empty)}.", SampleExclusionWarning, stacklevel=stacklevel,
        )
    if not ok.any():
        raise InputError(f"no valid site sample remains after QC ({len(ids)} sites inside the "
                         f"grid, {int(has_y.sum())} with {target}); see the warnings above.")

    si, ti = np.nonzero(ok)
    data = {}
    for name in inputs:
        v = values[name][si, ti]
        data[name] = ("sample", v.astype(np.int8) if name == "igbp" else v.astype(np.float32),
                      {**VARIABLES[name].attrs(), **({"units": "1"} if name == "igbp" else {})})
    data[target] = ("sample", y[si, ti], VARIABLES[target].attrs() if target in VARIABLES
                    else {})
    coords = {
        "site": ("sample", ids[si]), "time": ("sample", np.asarray(common)[ti]),
        "lat": ("sample", slat[si].astype(np.float32)),
        "lon": ("sample", slon[si].astype(np.float32)),
        "igbp_code": ("sample", codes[si]),
        "cell_lat": ("sample", glat[iy[si]]), "cell_lon": ("sample", glon[ix[si]]),
    }
    samples = xr.Dataset(data, coords=coords)
    samples.attrs["exclusions"] = json.dumps(exclusions)
    samples.attrs["window"] = window
    return samples


# --------------------------------------------------------------------------------------------
# grid samples
# --------------------------------------------------------------------------------------------
def store_chunks(ds: xr.Dataset, names: list[str] | tuple[str, ...]) -> dict[str, int]:
    """Chunk sizes of the store behind ``ds`` along ``time``, ``lat``, ``lon``.

    Taken from the Zarr encoding (``preferred_chunks``/``chunks``) of the first time-varying
    variable, else from its dask chunks, else the full size.
    """
    for n in names:
        da = ds[n]
        if "time" not in da.dims:
            continue
        pref = da.encoding.get("preferred_chunks")
        if pref:
            return {d: int(pref.get(d, ds.sizes[d])) for d in ("time", "lat", "lon")}
        enc = da.encoding.get("chunks")
        if enc and len(enc) == da.ndim:
            by_dim = dict(zip(da.dims, enc, strict=True))
            return {d: int(by_dim.get(d, ds.sizes[d])) for d in ("time", "lat", "lon")}
        if da.chunks:
            by_dim = dict(zip(da.dims, (c[0] for c in da.chunks), strict=True))
            return {d: int(by_dim.get(d, ds.sizes[d])) for d in ("time", "lat", "lon")}
    return {d: int(ds.sizes[d]) for d in ("time", "lat", "lon")}


def validation_cells(lat: np.ndarray, lon: np.ndarray, *, block: float = 10.0,
                     fraction: float = 0.1, seed: int = 0) -> np.ndarray:
    """Boolean ``(lat, lon)`` mask of cells held out for validation, by whole spatial blocks.

    Blocks of ``block`` degrees [degree] are drawn with probability ``fraction`` (seeded), so
    validation pixels are spatially separated from most training pixels.
    """
    by = np.floor((np.asarray(lat) + 90.0) / block).astype(int)
    bx = np.floor((np.asarray(lon) + 180.0) / block).astype(int)
    ny, nx = int(np.ceil(180 / block)) + 1, int(np.ceil(360 / block)) + 1
    pick = np.random.default_rng([seed, 7919]).random((ny, nx)) < fraction
    return pick[np.clip(by, 0, ny - 1)[:, None], np.clip(bx, 0, nx - 1)[None, :]]


class ShuffleBuffer:
    """A bounded, vectorised shuffle buffer (reservoir swap).

    Incoming samples first fill the buffer; once it is full each incoming block displaces the
    same number of samples from random slots, which are emitted.  Memory is ``capacity`` rows.

    Parameters
    ----------
    capacity : int
        Samples held.
    rng : numpy.random.Generator
    """

    def __init__(self, capacity: int, rng: np.random.Generator) -> None:
        if capacity < 1:
            raise InputError(f"shuffle buffer capacity must be >= 1; got {capacity}.")
        self.capacity = int(capacity)
        self.rng = rng
        self._x: np.ndarray | None = None
        self._y: np.ndarray | None = None
        self.n = 0

    def add(self, x: np.ndarray, y: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Insert samples; yield the displaced ones (random order)."""
        if self._x is None:
            self._x = np.empty((self.capacity, x.shape[1]), x.dtype)
            self._y = np.empty((self.capacity, y.shape[1]), y.dtype)
        assert self._y is not None
        take = min(self.capacity - self.n, len(x))
        if take:
            self._x[self.n:self.n + take] = x[:take]
            self._y[self.n:self.n + take] = y[:take]
            self.n += take
        for i in range(take, len(x), self.capacity):
            xs, ys = x[i:i + self.capacity], y[i:i + self.capacity]
            slots = self.rng.permutation(self.capacity)[: len(xs)]
            out_x, out_y = self._x[slots], self._y[slots]
            self._x[slots], self._y[slots] = xs, ys
            yield out_x, out_y

    def flush(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Return what is left, shuffled, and empty the buffer."""
        if not self.n or self._x is None or self._y is None:
            return None
        order = self.rng.permutation(self.n)
        out = self._x[:self.n][order], self._y[:self.n][order]
        self.n = 0
        return out


_STOP = object()


def put_until_stopped(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Put ``item`` on a bounded queue, giving up (False) once ``stop`` is set."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def background_items(produce: Any, *, name: str, maxsize: int) -> Generator[Any, None, None]:
    """Run ``produce(q, stop)`` in a daemon thread and yield what it puts on ``q``.

    The producer ends with :data:`_STOP` or forwards an exception (raised here).  Closing the
    generator (the consumer stopped early) sets ``stop`` and drains the queue until the
    producer has exited, so no thread outlives the loop.
    """
    q: queue.Queue = queue.Queue(maxsize=maxsize)
    stop = threading.Event()
    producer = threading.Thread(target=produce, args=(q, stop), daemon=True, name=name)
    producer.start()
    try:
        while True:
            item = q.get()
            if item is _STOP:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while producer.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                producer.join(timeout=0.05)


class GridSamples:
    """Streamed ``(X, y)`` float32 batches of valid grid pixels for pre-training.

    Parameters
    ----------
    drivers : xarray.Dataset
        Driver cube (lazy, Zarr-backed for large data) on ``(time, lat, lon)``.
    target : xarray.Dataset
        Target cube on the same grid, e.g. ``sif_tropomi`` with ``sif``; its time steps must
        be a subset of the drivers' (other driver steps are skipped chunk-wise).
    spec : FeatureSpec
        Inputs and normalisation applied in the background threads.
    target_var : str
        Variable of ``target`` to learn (``"sif"``).
    target_scale : (float, float)
        ``(mean, std)`` that normalise the target: ``y = (target - mean) / std``.
    cell_mask : numpy.ndarray, optional
        Boolean ``(lat, lon)`` mask of cells to use (e.g. the training or validation cells).
    batch_size : int
        Samples per batch.
    shuffle_buffer : int
        Capacity of the shuffle buffer (samples); 0 disables mixing across chunks.
    prefetch : int
        Chunks loading ahead of the consumer.
    workers : int
        Threads loading chunks (each ``.load()`` uses the current Dask scheduler).
    client : distributed.Client, optional
        Load chunks as Dask futures on this client instead of in local threads.
    seed : int
        Seed of the chunk order and the shuffle; epoch ``e`` uses ``(seed, e)``.
    """

    def __init__(self, drivers: xr.Dataset, target: xr.Dataset, spec: FeatureSpec, *,
                 target_var: str = "sif", target_scale: tuple[float, float] = (0.0, 1.0),
                 cell_mask: np.ndarray | None = None, batch_size: int = 4096,
                 shuffle_buffer: int = 262_144, prefetch: int = 4, workers: int = 2,
                 queue_batches: int = 64, client: Any = None, seed: int = 0) -> None:
        import xbatcher

        if target_var not in target:
            raise NotFoundError(f"target cube has no {target_var!r}; it has "
                           f"{sorted(map(str, target.data_vars))}.")
        spec.check(drivers, where="driver cube")
        for c in ("lat", "lon"):
            a, b = np.asarray(drivers[c].values), np.asarray(target[c].values)
            if a.shape != b.shape or not np.allclose(a, b, atol=1e-6):
                raise InputError(
                    f"the {target_var} cube's {c!r} axis ({b.size} cells, {b.min():.3f}.."
                    f"{b.max():.3f}) differs from the driver cube's ({a.size} cells, "
                    f"{a.min():.3f}..{a.max():.3f}); regrid one onto the other first."
                )
        inputs = list(spec.inputs)
        chunks = store_chunks(drivers, inputs)
        tdrv = pd.DatetimeIndex(drivers["time"].values)
        ttgt = pd.DatetimeIndex(target["time"].values)
        if not ttgt.isin(tdrv).all():
            n_off = int((~ttgt.isin(tdrv)).sum())
            raise InputError(
                f"{n_off} of {len(ttgt)} {target_var} time steps are not on the driver cube's "
                f"time axis ({tdrv.min():%Y-%m-%d}..{tdrv.max():%Y-%m-%d}); resample the "
                "target onto the drivers' time steps."
            )
        # keep only the driver time chunks that overlap the target record (stays chunk-aligned)
        ct = chunks["time"]
        steps = np.flatnonzero(tdrv.isin(ttgt))
        if not len(steps):
            raise InputError(f"the {target_var} cube shares no time step with the drivers.")
        first, last = int(steps[0]), int(steps[-1]) + 1  # whole driver chunks around them
        tsl = slice(first // ct * ct, min(len(tdrv), -(-last // ct) * ct))
        ds = drivers[inputs].isel(time=tsl)
        ds[target_var] = target[target_var].reindex(time=ds["time"]).assign_coords(
            lat=ds["lat"], lon=ds["lon"])
        if cell_mask is not None:
            cell_mask = np.asarray(cell_mask, bool)
            if cell_mask.shape != (ds.sizes["lat"], ds.sizes["lon"]):
                raise InputError(f"cell_mask has shape {cell_mask.shape}, expected (lat, lon) = "
                                 f"{(ds.sizes['lat'], ds.sizes['lon'])}.")
            ds["_cell_mask"] = (("lat", "lon"), cell_mask)
        self.ds = ds
        # where each variable was read from, to name a damaged store chunk (xgpp._chunks)
        self._origin = {n: drivers for n in inputs} | {target_var: target}
        self.spec = spec
        self.target_var = target_var
        self.target_scale = (float(target_scale[0]), float(target_scale[1]))
        self.chunks = chunks
        self.batch_size = int(batch_size)
        self.shuffle_buffer = int(shuffle_buffer)
        self.prefetch = max(1, int(prefetch))
        self.workers = max(1, int(workers))
        self.queue_batches = max(2, int(queue_batches))
        self.client = client
        self.seed = int(seed)
        # one BatchGenerator per region: the full-chunk body plus the remainder strips, so
        # every batch covers exactly one store chunk and no pixel is dropped
        self.generators = []
        segments = []
        for d in ("time", "lat", "lon"):
            size, step = ds.sizes[d], min(chunks[d], ds.sizes[d])
            body = (size // step) * step
            segs = [(slice(0, body), step)] + ([(slice(body, size), size - body)] if body < size
                                               else [])
            segments.append([(d, s, size) for s, size in segs])
        for combo in itertools.product(*segments):
            region = ds.isel({d: s for d, s, _ in combo})
            dims = {d: size for d, _, size in combo}
            self.generators.append(xbatcher.BatchGenerator(region, input_dims=dims,
                                                           preload_batch=False))
        self.index = [(g, i) for g, gen in enumerate(self.generators) for i in range(len(gen))]

    @property
    def n_chunks(self) -> int:
        """Number of store chunks (batches of the underlying BatchGenerators)."""
        return len(self.index)

    def load_chunk(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Load chunk ``k`` and return its valid samples as ``(X, y)`` float32."""
        g, i = self.index[k]
        lazy = self.generators[g][i]
        from xgpp._chunks import naming_unreadable

        with naming_unreadable(lazy, [str(n) for n in lazy.data_vars], origin=self._origin):
            if self.client is not None:
                batch = self.client.compute(lazy).result()
            else:
                batch = lazy.load()
        return self.flatten(batch)

    def flatten(self, batch: xr.Dataset) -> tuple[np.ndarray, np.ndarray]:
        """Flatten one loaded chunk to valid, normalised ``(X, y)``."""
        names = list(self.spec.inputs) + [self.target_var]
        if "_cell_mask" in batch:
            names.append("_cell_mask")
        cols = columns_from_dataset(batch, names)
        tgt = np.asarray(cols.pop(self.target_var), np.float32)
        ok = self.spec.valid_mask(cols) & np.isfinite(tgt)
        if "_cell_mask" in cols:
            ok &= cols.pop("_cell_mask").astype(bool)
        idx = np.flatnonzero(ok)
        x = self.spec.transform({k: v[idx] for k, v in cols.items()})
        y = ((tgt[idx] - np.float32(self.target_scale[0]))
             / np.float32(self.target_scale[1]))[:, None]
        return x, y.astype(np.float32)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return self.iterate(epoch=0)

    def iterate(self, epoch: int = 0, *, max_samples: int | None = None
                ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield shuffled ``(X, y)`` batches for one epoch (deterministic by seed and epoch).

        Parameters
        ----------
        epoch : int
            Selects the chunk order and the shuffle.
        max_samples : int, optional
            Stop after about this many samples (a random subset of chunks).
        """
        rng = np.random.default_rng([self.seed, int(epoch)])
        delivered = 0
        with contextlib.closing(background_items(
                lambda q, stop: self._produce(rng, q, stop), name="xgpp-grid-samples",
                maxsize=self.queue_batches)) as items:
            for item in items:
                yield item
                delivered += len(item[0])
                if max_samples is not None and delivered >= max_samples:
                    break

    def _produce(self, rng: np.random.Generator, q: queue.Queue, stop: threading.Event) -> None:
        try:
            order = rng.permutation(self.n_chunks)
            buf = ShuffleBuffer(self.shuffle_buffer, rng) if self.shuffle_buffer else None
            pending_x: list[np.ndarray] = []
            pending_y: list[np.ndarray] = []
            n_pending = 0

            def emit(x: np.ndarray, y: np.ndarray, final: bool = False) -> bool:
                nonlocal n_pending
                if len(x):
                    pending_x.append(x)
                    pending_y.append(y)
                    n_pending += len(x)
                if n_pending < self.batch_size and not (final and n_pending):
                    return True
                xs, ys = np.concatenate(pending_x), np.concatenate(pending_y)
                pending_x.clear()
                pending_y.clear()
                n_full = (len(xs) // self.batch_size) * self.batch_size
                for i in range(0, n_full, self.batch_size):
                    if not put_until_stopped(q, (xs[i:i + self.batch_size], ys[i:i + self.batch_size]),
                                     stop):
                        return False
                rest = len(xs) - n_full
                n_pending = 0
                if rest and final:
                    return put_until_stopped(q, (xs[n_full:], ys[n_full:]), stop)
                if rest:
                    pending_x.append(xs[n_full:])
                    pending_y.append(ys[n_full:])
                    n_pending = rest
                return True

            with ThreadPoolExecutor(self.workers, thread_name_prefix="xgpp-chunk") as pool:
                inflight: deque = deque()
                it = iter(order)
                for k in itertools.islice(it, self.prefetch):
                    inflight.append(pool.submit(self.load_chunk, int(k)))
                while inflight and not stop.is_set():
                    x, y = inflight.popleft().result()  # in submission order: deterministic
                    nxt = next(it, None)
                    if nxt is not None:
                        inflight.append(pool.submit(self.load_chunk, int(nxt)))
                    if not len(x):
                        continue
                    if buf is None:
                        perm = rng.permutation(len(x))
                        x, y = x[perm], y[perm]
                    parts = [(x, y)] if buf is None else list(buf.add(x, y))
                    for px, py in parts:
                        if not emit(px, py):
                            return
                for f in inflight:
                    f.cancel()
            if stop.is_set():
                return
            rest = buf.flush() if buf is not None else None
            if rest is not None:
                emit(*rest, final=True)
            else:
                emit(np.empty((0, self.spec.n_features), np.float32),
                     np.empty((0, 1), np.float32), final=True)
            put_until_stopped(q, _STOP, stop)
        except BaseException as err:  # noqa: BLE001 - forwarded to the consumer
            put_until_stopped(q, err, stop)
