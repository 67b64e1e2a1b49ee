"""Sparse SIF soundings (OCO-2-like ground tracks): an index, held-out-track splits, mixed batches.

A multi-task model learns SIF reconstruction where tracks put soundings, GPP at eddy-covariance
sites and a physics term on unlabelled pixels.  This module is its data side.

Index
    :class:`TrackIndex` is built once by streaming ``sif[var].notnull()`` store chunk by store
    chunk (the cube is never loaded whole).  Each sounding (a finite ``sif`` value at a
    ``(time, lat, lon)`` cell) is kept as three ``int32`` global indices into the *driver* cube
    (``t`` on the drivers' time axis, ``y``, ``x``) plus the ``int32`` id of the driver store
    chunk it falls in: 16 bytes per sounding (``segment_ids`` adds 8 more), sorted in
    ``(t, y, x)`` order.  Building peaks at about twice that (a lexicographic sort).
Held-out tracks
    :func:`segment_ids` cuts each step's sounding mask into connected track pieces of at most
    ``segment`` degrees of latitude; :class:`TrackSplit` deals whole pieces to ``k`` folds so
    no held-out piece is partly trained on.  :func:`validation_segments` picks whole pieces for
    early stopping inside the training part.
Mixed batches
    :class:`MixedSamples` streams one epoch as one pass over the soundings it uses.  Only the
    driver chunks holding at least one used sounding are visited (in a seeded random order);
    chunks without one are never read or decoded.  Each visited chunk's drivers and SIF are
    loaded once (in prefetching threads, or on a Dask cluster) and give three kinds of rows:
    *track* rows (the used soundings with valid inputs, SIF-supervised), *unlabelled* rows
    (random valid land pixels of the same chunk, for the physics term) and *site* rows (the
    next rows of a per-epoch permutation of the eddy-covariance samples, GPP-supervised), in
    the requested proportions.  A bounded :class:`~xgpp.samples.ShuffleBuffer` mixes rows of
    many chunks before they are cut into batches.  Memory is bounded by ``prefetch`` chunks
    plus ``shuffle_buffer`` rows plus the index, whatever the cube size.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import queue
import sys
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from xgpp.errors import InputError, NotFoundError
from xgpp.models.features import FeatureSpec, columns_from_dataset
from xgpp.samples import _STOP, ShuffleBuffer, background_items, put_until_stopped, store_chunks

__all__ = [
    "BATCH_KEYS",
    "MixedSamples",
    "TrackFold",
    "TrackIndex",
    "TrackSplit",
    "parse_track_split",
    "segment_ids",
    "validation_segments",
]

#: Keys of every batch :meth:`MixedSamples.iterate` yields.
BATCH_KEYS: tuple[str, ...] = ("x", "sif", "sif_mask", "sif_weight", "gpp", "gpp_mask", "igbp")

# per-row columns carried next to the feature matrix through the shuffle buffer
_SIF, _W, _SIF_MASK, _GPP, _GPP_MASK, _IGBP = range(6)
_N_META = 6


def _day(v: Any) -> str:
    return str(np.datetime_as_string(np.datetime64(v, "ns"), unit="D"))


def _window_text(time: slice | None) -> str:
    if time is None:
        return "the whole record (time=None)"
    return f"time=slice({time.start!r}, {time.stop!r})"


def _check_grid(a_ds: xr.Dataset, b_ds: xr.Dataset, a_name: str, b_name: str) -> None:
    for c in ("lat", "lon"):
        if c not in a_ds.coords or c not in b_ds.coords:
            raise NotFoundError(f"both cubes need a {c!r} coordinate; the {a_name} has "
                           f"{sorted(map(str, a_ds.coords))}, the {b_name} has "
                           f"{sorted(map(str, b_ds.coords))}.")
        a, b = np.asarray(a_ds[c].values, float), np.asarray(b_ds[c].values, float)
        if a.shape != b.shape or not np.allclose(a, b, atol=1e-6):
            raise InputError(
                f"the {a_name}'s {c!r} axis ({a.size} cells, {a.min():.3f}..{a.max():.3f}) "
                f"differs from the {b_name}'s ({b.size} cells, {b.min():.3f}..{b.max():.3f}); "
                "regrid one onto the other first."
            )


# --------------------------------------------------------------------------------------------
# index
# --------------------------------------------------------------------------------------------
class TrackIndex:
    """Every SIF sounding of a sparse cube as global indices into the driver cube.

    Build it with :meth:`build`.  Soundings are sorted in ``(t, y, x)`` order.

    Attributes
    ----------
    t, y, x : numpy.ndarray of int32
        Per sounding: time index on the drivers' time axis, latitude and longitude index.
    chunk_id : numpy.ndarray of int32
        Per sounding: the driver store chunk it falls in,
        ``(t // ct) * ny_c * nx_c + (y // cy) * nx_c + x // cx`` with ``ct, cy, cx`` the
        driver store's chunk sizes (:attr:`chunk_sizes`) and ``ny_c, nx_c`` the chunk counts
        along lat and lon (:attr:`chunk_grid`).
    chunk_keys : numpy.ndarray of int32
        Sorted ids of the driver chunks holding at least one sounding.
    chunks : list of (slice, slice, slice)
        ``(time, lat, lon)`` integer slices of those chunks, aligned with :attr:`chunk_keys`.
    chunk_sizes : dict
        Driver store chunk sizes along ``time``, ``lat``, ``lon``.
    shape : tuple of int
        ``(time, lat, lon)`` sizes of the driver cube.
    time : numpy.ndarray of datetime64
        The driver cube's time axis (to check a loader gets the same cube).
    steps : numpy.ndarray of int32
        Driver time indices of the SIF steps inside the window (with or without soundings).
    coverage : float
        Soundings per land pixel-step (``coverage_basis == "land pixel-steps"``, when the
        drivers hold a static ``land_mask``) or per pixel-step (``"pixel-steps"``), over the
        SIF steps in the window.
    product, var : str
        The SIF cube's ``attrs["product"]`` (else ``var``) and the variable indexed.
    window : slice or None
        The ``time`` window asked for.
    """

    def __init__(self, t: np.ndarray, y: np.ndarray, x: np.ndarray, *,
                 chunk_sizes: dict[str, int], shape: tuple[int, int, int], time: np.ndarray,
                 steps: np.ndarray, product: str, var: str, window: slice | None,
                 n_land: int | None = None) -> None:
        self.t = np.ascontiguousarray(t, np.int32)
        self.y = np.ascontiguousarray(y, np.int32)
        self.x = np.ascontiguousarray(x, np.int32)
        if not (len(self.t) == len(self.y) == len(self.x)):
            raise InputError(f"t, y, x must have equal lengths; got {len(self.t)}, "
                             f"{len(self.y)}, {len(self.x)}.")
        self.shape = tuple(int(s) for s in shape)
        self.chunk_sizes = {d: int(chunk_sizes[d]) for d in ("time", "lat", "lon")}
        self.chunk_grid = tuple(-(-n // c) for n, c in zip(
            self.shape, self.chunk_sizes.values(), strict=True))
        ct, cy, cx = self.chunk_sizes.values()
        _, ny_c, nx_c = self.chunk_grid
        self.chunk_id = ((self.t // ct) * (ny_c * nx_c) + (self.y // cy) * nx_c
                         + self.x // cx).astype(np.int32)
        self.chunk_keys = np.unique(self.chunk_id).astype(np.int32)
        self.time = np.asarray(time, "datetime64[ns]")
        self.steps = np.asarray(steps, np.int32)
        self.product = str(product)
        self.var = str(var)
        self.window = window
        self.n_land = None if n_land is None else int(n_land)

    # ---- construction
    @classmethod
    def build(cls, sif: xr.Dataset, drivers: xr.Dataset, *, var: str = "sif",
              time: slice | None = None, progress: bool = False) -> TrackIndex:
        """Index every sounding of ``sif[var]`` by streaming its store chunks.

        Parameters
        ----------
        sif : xarray.Dataset
            Sparse SIF cube on ``(time, lat, lon)`` (e.g. the twin world's ``sif_oco2``), on
            the drivers' grid and on (a subset of) their time steps.  Dask-backed cubes are
            read block by block; in-memory ones are cut into their store chunks.
        drivers : xarray.Dataset
            Driver cube the indices point into; its store chunks define :attr:`chunk_id`.
        var : str
            Variable whose finite values are the soundings.
        time : slice, optional
            Window of time labels, e.g. ``slice("2016-01-01", "2016-12-31")``; default the
            whole SIF record.
        progress : bool
            Report blocks read on stderr.

        Returns
        -------
        TrackIndex

        Raises
        ------
        KeyError
            When ``var`` is missing.
        ValueError
            When the grids differ, SIF steps are off the drivers' time axis, or the window
            holds no sounding.
        """
        import dask
        import dask.array as da

        from xgpp._chunks import naming_unreadable

        if var not in sif:
            raise NotFoundError(f"the SIF cube has no variable {var!r}; it has "
                           f"{sorted(map(str, sif.data_vars))}. Pass var=... .")
        product = str(sif.attrs.get("product") or var)
        for d in ("time", "lat", "lon"):
            if d not in sif[var].dims:
                raise InputError(f"{product} variable {var!r} has dims {tuple(sif[var].dims)}; "
                                 f"expected ('time', 'lat', 'lon'). Rename or add {d!r}.")
        _check_grid(sif, drivers, f"{product} cube", "driver cube")
        t_all = pd.DatetimeIndex(sif["time"].values)
        win = sif.sel(time=time) if time is not None else sif
        tsif = pd.DatetimeIndex(win["time"].values)
        tdrv = pd.DatetimeIndex(drivers["time"].values)
        pos = tdrv.get_indexer(tsif)
        if (pos < 0).any():
            off = tsif[pos < 0]
            raise InputError(
                f"{len(off)} of {len(tsif)} {product} time steps in {_window_text(time)} are "
                f"not on the driver cube's time axis ({tdrv.min():%Y-%m-%d}..{tdrv.max():%Y-%m-%d}"
                f", {len(tdrv)} steps), e.g. {', '.join(f'{v:%Y-%m-%d}' for v in off[:3])}. "
                "Resample the SIF cube onto the drivers' steps, or pass a time window inside "
                "the drivers' period."
            )
        dvars = [str(n) for n in drivers.data_vars if "time" in drivers[n].dims]
        chunk_sizes = store_chunks(drivers, dvars)
        shape = (drivers.sizes["time"], drivers.sizes["lat"], drivers.sizes["lon"])

        def no_soundings() -> ValueError:
            span = (f"{t_all.min():%Y-%m-%d}..{t_all.max():%Y-%m-%d}, {len(t_all)} steps"
                    if len(t_all) else "no time steps")
            return ValueError(
                f"the {product} cube ({var!r}, {span}) holds no sounding in "
                f"{_window_text(time)} ({len(tsif)} of its steps fall in it). Widen the window, "
                "or check the product starts before it (and that the cube is not all-NaN)."
            )

        if not len(tsif):
            raise no_soundings()
        arr = win[var].transpose("time", "lat", "lon").data
        if not isinstance(arr, da.Array):
            c = store_chunks(win, [var])
            arr = da.from_array(np.asarray(arr), chunks=(c["time"], c["lat"], c["lon"]))
        mask = da.notnull(arr)
        edges = [np.concatenate([[0], np.cumsum(c)]).astype(int) for c in mask.chunks]
        blocks = list(itertools.product(*(range(len(c)) for c in mask.chunks)))
        ts, ys, xs = [], [], []
        group = 8  # blocks computed together: memory is a few boolean blocks
        for g0 in range(0, len(blocks), group):
            part = blocks[g0:g0 + group]
            ti = [i for i, _, _ in part]
            region = {"time": slice(int(edges[0][min(ti)]), int(edges[0][max(ti) + 1]))}
            with naming_unreadable(win, [var], region, origin={var: sif}):
                got = dask.compute(*(mask.blocks[b] for b in part))
            for (i, j, k), m in zip(part, got, strict=True):
                bt, by, bx = np.nonzero(m)
                if not len(bt):
                    continue
                ts.append(pos[bt + edges[0][i]].astype(np.int32))
                ys.append((by + edges[1][j]).astype(np.int32))
                xs.append((bx + edges[2][k]).astype(np.int32))
            if progress:
                print(f"\rTrackIndex: {min(g0 + group, len(blocks))}/{len(blocks)} blocks of "
                      f"{product} read", end="", file=sys.stderr, flush=True)
        if progress:
            print(file=sys.stderr)
        if not ts:
            raise no_soundings()
        t, y, x = np.concatenate(ts), np.concatenate(ys), np.concatenate(xs)
        del ts, ys, xs
        order = np.lexsort((x, y, t))
        t, y, x = t[order], y[order], x[order]
        n_land = None
        if "land_mask" in drivers and set(drivers["land_mask"].dims) == {"lat", "lon"}:
            n_land = int((np.asarray(drivers["land_mask"].values) > 0).sum())
        return cls(t, y, x, chunk_sizes=chunk_sizes, shape=shape, time=tdrv.values,
                   steps=pos, product=product, var=var, window=time, n_land=n_land)

    # ---- description
    @property
    def n_soundings(self) -> int:
        """Number of soundings."""
        return len(self.t)

    def __len__(self) -> int:
        return self.n_soundings

    @property
    def n_chunks(self) -> int:
        """Number of driver chunks holding at least one sounding."""
        return len(self.chunk_keys)

    @property
    def n_chunks_total(self) -> int:
        """Number of driver chunks of the whole driver cube."""
        return int(np.prod(self.chunk_grid))

    @property
    def chunks(self) -> list[tuple[slice, slice, slice]]:
        """``(time, lat, lon)`` slices of the driver chunks holding soundings."""
        return [self.chunk_slices(int(k)) for k in self.chunk_keys]

    def chunk_slices(self, key: int) -> tuple[slice, slice, slice]:
        """``(time, lat, lon)`` integer slices of driver chunk ``key``."""
        _, ny_c, nx_c = self.chunk_grid
        it, rest = divmod(int(key), ny_c * nx_c)
        iy, ix = divmod(rest, nx_c)
        out = []
        for i, c, n in zip((it, iy, ix), self.chunk_sizes.values(), self.shape, strict=True):
            out.append(slice(i * c, min(n, (i + 1) * c)))
        return out[0], out[1], out[2]

    @property
    def coverage_basis(self) -> str:
        """What :attr:`coverage` divides by: ``"land pixel-steps"`` or ``"pixel-steps"``."""
        return "land pixel-steps" if self.n_land else "pixel-steps"

    @property
    def coverage(self) -> float:
        """Soundings per (land) pixel-step over the SIF steps in the window."""
        cells = self.n_land if self.n_land else self.shape[1] * self.shape[2]
        return self.n_soundings / max(1, cells * len(self.steps))

    def summary(self) -> dict[str, Any]:
        """JSON-ready provenance of the index."""
        w = None if self.window is None else [None if self.window.start is None
                                              else str(self.window.start),
                                              None if self.window.stop is None
                                              else str(self.window.stop)]
        steps: Any = self.time[self.steps] if len(self.steps) else []
        return {
            "product": self.product, "var": self.var, "window": w,
            "time_range": [_day(steps[0]), _day(steps[-1])] if len(steps) else None,
            "n_steps": len(self.steps), "n_soundings": self.n_soundings,
            "n_chunks": self.n_chunks, "n_chunks_total": self.n_chunks_total,
            "chunk_sizes": dict(self.chunk_sizes), "shape": list(self.shape),
            "coverage": self.coverage, "coverage_basis": self.coverage_basis,
        }

    def __repr__(self) -> str:
        return (f"<TrackIndex {self.product!r} {self.var!r}: {self.n_soundings} soundings in "
                f"{self.n_chunks}/{self.n_chunks_total} driver chunks, coverage "
                f"{self.coverage:.2%} of {self.coverage_basis}>")


# --------------------------------------------------------------------------------------------
# held-out tracks
# --------------------------------------------------------------------------------------------
def segment_ids(index: TrackIndex, lat: np.ndarray, lon: np.ndarray, *,
                segment: float = 10.0) -> np.ndarray:
    """Track-segment id of every sounding: connected pieces of one step, cut by latitude.

    For each time step the step's sounding mask is rebuilt on a ``(lat, lon)`` plane from the
    index (memory: one plane), split into connected components (8-connectivity,
    :func:`scipy.ndimage.label`) and each component is cut into latitude bins of ``segment``
    degrees.  Ids are unique across steps, so a segment never spans two steps.  A track
    crossing the antimeridian gives two components.  At coarse grids, where tracks of one step
    touch, a component can hold many tracks; the latitude cut still bounds its size.

    Parameters
    ----------
    index : TrackIndex
    lat, lon : numpy.ndarray
        The driver cube's 1-D cell-centre coordinates [degree].
    segment : float
        Latitude extent of a segment [degree].

    Returns
    -------
    numpy.ndarray of int64
        One id per sounding, numbered ``0..n_segments - 1`` step by step.
    """
    from scipy import ndimage

    lat, lon = np.asarray(lat, float), np.asarray(lon, float)
    if lat.ndim != 1 or lon.ndim != 1 or (len(lat), len(lon)) != index.shape[1:]:
        raise InputError(f"lat/lon have shapes {lat.shape}/{lon.shape}; the index was built on "
                         f"a grid of {index.shape[1]} x {index.shape[2]} cells. Pass the driver "
                         "cube's lat and lon.")
    if not segment > 0:
        raise InputError(f"segment={segment!r} must be a positive latitude extent [degree].")
    bins = np.floor((lat + 90.0) / float(segment)).astype(np.int64)
    nbins = int(bins.max()) + 1
    out = np.empty(index.n_soundings, np.int64)
    structure = np.ones((3, 3), bool)
    plane = np.zeros(index.shape[1:], bool)
    bounds = np.flatnonzero(np.diff(index.t)) + 1  # index is sorted by t
    offset = 0
    for s0, s1 in zip(np.r_[0, bounds], np.r_[bounds, index.n_soundings], strict=True):
        if s1 <= s0:
            continue
        y, x = index.y[s0:s1], index.x[s0:s1]
        plane[y, x] = True
        lab, _ = ndimage.label(plane, structure=structure)
        key = (lab[y, x].astype(np.int64) - 1) * nbins + bins[y]
        _, inv = np.unique(key, return_inverse=True)
        out[s0:s1] = offset + inv
        offset += int(inv.max()) + 1
        plane[y, x] = False
    return out


@dataclass(frozen=True, eq=False)
class TrackFold:
    """One held-out-track partition of the soundings.

    Attributes
    ----------
    name : str
        ``"tracks:k=5,fold=0,segment=10,seed=0"`` (a spec :func:`parse_track_split` reads).
    test : numpy.ndarray of bool
        Per sounding: held out (whole segments).
    k, fold : int
        Number of folds and this fold's number.
    segment : float
        Latitude extent of the segments [degree].
    seed : int
        Seed of the deal.
    """

    name: str
    test: np.ndarray
    k: int
    fold: int
    segment: float = 10.0
    seed: int = 0

    @property
    def train(self) -> np.ndarray:
        """Per sounding: used for training (the complement of :attr:`test`)."""
        return ~self.test

    @property
    def n_test(self) -> int:
        """Held-out soundings."""
        return int(self.test.sum())

    @property
    def n_train(self) -> int:
        """Training soundings."""
        return int(self.test.size - self.test.sum())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (not the mask)."""
        return {"name": self.name, "k": self.k, "fold": self.fold, "segment": self.segment,
                "seed": self.seed, "n_test": self.n_test, "n_train": self.n_train}


@dataclass(frozen=True)
class TrackSplit:
    """k-fold split of soundings by whole track segments (held-out tracks).

    Segments (:func:`segment_ids`) are dealt to ``k`` folds by a seeded permutation, in turn,
    so folds hold about equal numbers of segments and a held-out segment is never partly in
    training.  A held-out segment's *cells* are seen at other dates (OCO-2 repeats its tracks
    every 16 days, and neighbouring steps have tracks nearby), so the test judges SIF
    reconstruction where the model saw no SIF at that date, not at cells never observed.

    Attributes
    ----------
    k : int
        Number of folds (>= 2).
    segment : float
        Latitude extent of a segment [degree].
    seed : int
        Seed of the deal.
    """

    k: int = 5
    segment: float = 10.0
    seed: int = 0

    def __post_init__(self) -> None:
        if int(self.k) != self.k or self.k < 2:
            raise InputError(f"TrackSplit.k={self.k!r} must be an integer >= 2.")
        if not (np.isfinite(self.segment) and self.segment > 0):
            raise InputError(f"TrackSplit.segment={self.segment!r} must be a positive latitude "
                             "extent [degree].")

    def name(self, fold: int) -> str:
        """Spec string of ``fold``."""
        return f"tracks:k={self.k},fold={fold},segment={self.segment:g},seed={self.seed}"

    def assign(self, ids: np.ndarray) -> np.ndarray:
        """Fold number of every sounding, given its segment id."""
        uniq, inv = np.unique(np.asarray(ids), return_inverse=True)
        perm = np.random.default_rng([int(self.seed), 4093]).permutation(len(uniq))
        fold_of = np.empty(len(uniq), np.int64)
        fold_of[perm] = np.arange(len(uniq)) % self.k
        return fold_of[inv]

    def folds(self, index: TrackIndex, lat: np.ndarray, lon: np.ndarray) -> list[TrackFold]:
        """The ``k`` folds of ``index``'s soundings.

        Raises
        ------
        ValueError
            When there are fewer segments than folds.
        """
        ids = segment_ids(index, lat, lon, segment=self.segment)
        n_seg = len(np.unique(ids))
        if n_seg < self.k:
            raise InputError(f"{n_seg} track segments cannot fill k={self.k} folds; use fewer "
                             "folds or a smaller segment.")
        of = self.assign(ids)
        return [TrackFold(self.name(f), of == f, self.k, f, self.segment, self.seed)
                for f in range(self.k)]

    def fold(self, index: TrackIndex, lat: np.ndarray, lon: np.ndarray, fold: int) -> TrackFold:
        """Fold ``fold`` only (``ValueError`` when out of range)."""
        if not 0 <= int(fold) < self.k:
            raise InputError(f"fold={fold} is out of range for k={self.k} folds; use 0..{self.k - 1}.")
        return self.folds(index, lat, lon)[int(fold)]

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {"kind": "tracks", "k": self.k, "segment": self.segment, "seed": self.seed}


def parse_track_split(spec: str) -> tuple[TrackSplit, int]:
    """Parse ``"tracks:k=5,fold=0,segment=10,seed=0"`` (omitted keys take their defaults).

    Parameters
    ----------
    spec : str
        ``tracks[:key=value,...]`` with keys ``k``, ``fold``, ``segment`` [degree], ``seed``.

    Returns
    -------
    (TrackSplit, fold)

    Raises
    ------
    ValueError
        For another kind, an unknown key, a value that does not parse or is out of range
        (including ``fold`` outside ``0..k-1``).
    """
    kind, _, rest = str(spec).partition(":")
    if kind.strip().lower() != "tracks":
        raise InputError(f"{spec!r} is not a track split; write e.g. "
                         "'tracks:k=5,fold=0,segment=10,seed=0'.")
    kwargs: dict[str, Any] = {}
    fold = 0
    types = {"k": int, "segment": float, "seed": int, "fold": int}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = (s.strip() for s in item.partition("="))
        if not sep:
            raise InputError(f"track split option {item!r} in {spec!r} is not key=value.")
        if key not in types:
            raise InputError(f"unknown option {key!r} in track split {spec!r}; known: "
                             f"{sorted(types)}.")
        try:
            v = types[key](value)
        except ValueError:
            raise InputError(f"track split option {key}={value!r} in {spec!r} is not "
                             f"{'an integer' if types[key] is int else 'a number'}.") from None
        if key == "fold":
            fold = v
        else:
            kwargs[key] = v
    split = TrackSplit(**kwargs)
    if not 0 <= fold < split.k:
        raise InputError(f"fold={fold} in {spec!r} is out of range for k={split.k} folds; use "
                         f"0..{split.k - 1}.")
    return split, fold


def validation_segments(ids: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Per sounding: in a seeded ``fraction`` of whole segments (for early stopping).

    Use it on the training part of a :class:`TrackFold` (``ids[fold.train]``).  As for the
    folds, a chosen segment's cells are seen at other dates (the 16-day repeat), so validation
    judges reconstruction where the model saw no SIF at that date.

    Parameters
    ----------
    ids : numpy.ndarray
        Segment id per sounding (:func:`segment_ids`).
    fraction : float
        Share of segments picked, in ``[0, 1)``; at least one when positive.
    seed : int

    Returns
    -------
    numpy.ndarray of bool
    """
    if not 0.0 <= fraction < 1.0:
        raise InputError(f"fraction={fraction!r} must be in [0, 1).")
    uniq, inv = np.unique(np.asarray(ids), return_inverse=True)
    n_pick = 0 if fraction == 0 else min(len(uniq) - 1, max(1, round(fraction * len(uniq))))
    pick = np.zeros(len(uniq), bool)
    pick[np.random.default_rng([int(seed), 6007]).permutation(len(uniq))[:n_pick]] = True
    return pick[inv]


# --------------------------------------------------------------------------------------------
# mixed batches
# --------------------------------------------------------------------------------------------


def _stochastic_round(v: float, rng: np.random.Generator) -> int:
    return int(math.floor(v + rng.random()))


class MixedSamples:
    """Streamed mixed batches: SIF track rows, EC-site rows and unlabelled pixel rows.

    Parameters
    ----------
    drivers : xarray.Dataset
        Driver cube (lazy, Zarr-backed) with the spec's inputs and a static ``igbp``.
        Unlabelled rows are pixels with valid inputs, a land class (``igbp > 0``) and, when
        the cube has a static ``land_mask``, ``land_mask > 0``.
    sif : xarray.Dataset
        The SIF cube the index was built from (same grid; ``var`` and optionally
        ``count_var``).
    spec : FeatureSpec
        Inputs and normalisation, applied in the loading threads.
    index : TrackIndex
        Soundings of ``sif`` on ``drivers``.
    use : numpy.ndarray of bool
        Per sounding of the index: which soundings feed this loader (e.g. ``fold.train``).
    sites : (x, gpp, igbp), optional
        Site samples: ``x`` ``(n, n_features)`` float32 already normalised, ``gpp`` ``(n,)``
        normalised, ``igbp`` ``(n,)`` class numbers.  Required when the site share is > 0.
    var, count_var : str
        SIF variable [mW m-2 nm-1 sr-1] and its sounding count.
    sif_scale : (float, float)
        ``(mean, std)``: batches carry ``(sif - mean) / std``.
    weight : {"count", "none"}
        ``"count"``: track rows weigh ``count / mean(count over the used soundings)`` when
        ``count_var`` is in ``sif`` (a non-finite or non-positive count weighs 1); else, and
        for ``"none"``, uniform 1.  The mean is computed once, on the first epoch, by a pass
        that reads only ``count_var`` of the chunks holding used soundings.
    proportions : (float, float, float)
        Track, site and unlabelled shares of each batch (normalised; the track share must be
        > 0: an epoch is one pass over the soundings).
    batch_size : int
        Rows per batch (the last one of an epoch may be short).
    shuffle_buffer : int
        Rows of the shuffle buffer mixing chunks; 0 only permutes within a chunk.
    prefetch : int
        Chunks loading ahead of the consumer.
    workers : int
        Loading threads.
    client : distributed.Client, optional
        Load chunks as Dask futures on this client instead of in local threads.
    seed : int
        Epoch ``e`` is deterministic by ``(seed, e)``.
    cache_mib : float
        Memory budget [MiB] for the rows extracted from each chunk (track rows and the
        chunk's unlabelled pool), kept across epochs so that later epochs do not decode the
        chunk again: soundings are a few per cent of a chunk's pixels, so decoding is nearly
        all of an epoch's cost.  Chunks beyond the budget are decoded every epoch (memory
        stays bounded); 0 disables the cache.  Batches are identical with or without it.
    unlabelled_pool : float
        Each chunk's unlabelled candidates are a fixed seeded pool of
        ``unlabelled_pool`` x the rows an epoch draws from it; every epoch draws a fresh
        random subset of that pool.

    Attributes
    ----------
    n_used : int
        Soundings this loader uses.
    n_chunks : int
        Driver chunks holding at least one used sounding (the chunks an epoch reads).
    """

    def __init__(self, drivers: xr.Dataset, sif: xr.Dataset, spec: FeatureSpec,
                 index: TrackIndex, *, use: np.ndarray,
                 sites: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                 var: str = "sif", count_var: str = "sif_count",
                 sif_scale: tuple[float, float] = (0.0, 1.0), weight: str = "count",
                 proportions: tuple[float, float, float] = (0.5, 0.25, 0.25),
                 batch_size: int = 1024, shuffle_buffer: int = 65_536, prefetch: int = 4,
                 workers: int = 2, client: Any = None, seed: int = 0,
                 cache_mib: float = 1024.0, unlabelled_pool: float = 4.0) -> None:
        spec.check(drivers, where="driver cube")
        if "igbp" not in drivers:
            raise NotFoundError("the driver cube has no static 'igbp' (class number on (lat, lon)), "
                           f"which batches carry; it has {sorted(map(str, drivers.data_vars))}.")
        if var not in sif:
            raise NotFoundError(f"the SIF cube has no {var!r}; it has "
                           f"{sorted(map(str, sif.data_vars))}. Pass var=... .")
        _check_grid(sif, drivers, "SIF cube", "driver cube")
        shape = (drivers.sizes["time"], drivers.sizes["lat"], drivers.sizes["lon"])
        tdrv = np.asarray(drivers["time"].values, "datetime64[ns]")
        if shape != index.shape or not np.array_equal(tdrv, index.time):
            raise InputError(f"the index was built on a driver cube of shape {index.shape} "
                             f"(time, lat, lon), this one has {shape} (or another time axis); "
                             "build the TrackIndex on these drivers.")
        if weight not in ("count", "none"):
            raise InputError(f"weight={weight!r}; use 'count' or 'none'.")
        use = np.asarray(use)
        if use.dtype != bool or use.shape != (index.n_soundings,):
            raise InputError(f"use must be a boolean array with one value per sounding "
                             f"({index.n_soundings}); got dtype {use.dtype}, shape {use.shape}.")
        p = np.asarray(proportions, float)
        if p.shape != (3,) or not np.isfinite(p).all() or (p < 0).any() or p.sum() <= 0:
            raise InputError(f"proportions={tuple(proportions)!r} must be three non-negative "
                             "shares (track, site, unlabelled) with a positive sum.")
        p = p / p.sum()
        if p[0] <= 0:
            raise InputError(f"proportions={tuple(proportions)!r} give track rows no share; an "
                             "epoch is one pass over the soundings, so the track share must be "
                             "> 0.")
        if p[1] > 0 and sites is None:
            raise InputError(f"proportions={tuple(proportions)!r} ask for site rows (share "
                             f"{p[1]:.3g}) but sites=None; pass sites=(x, gpp, igbp) or set the "
                             "site share to 0.")
        self._site: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        if sites is not None and p[1] > 0:
            sx, sg, si = (np.asarray(a) for a in sites)
            n = len(sg)
            if sx.shape != (n, spec.n_features) or sg.shape != (n,) or si.shape != (n,):
                raise InputError(f"sites must be (x (n, {spec.n_features}), gpp (n,), igbp (n,)); "
                                 f"got shapes {sx.shape}, {sg.shape}, {si.shape}.")
            if n == 0:
                raise InputError("sites hold no sample; pass site samples or set the site "
                                 "share to 0.")
            if not (np.isfinite(sx).all() and np.isfinite(sg).all()):
                raise InputError("site x or gpp hold non-finite values; drop those samples "
                                 "first (xgpp.samples.site_samples does).")
            self._site = (sx.astype(np.float32), sg.astype(np.float32),
                          si.astype(np.float32))
        # which sif step each driver step is (-1: none)
        tsif = pd.DatetimeIndex(sif["time"].values)
        self._sif_pos = tsif.get_indexer(pd.DatetimeIndex(tdrv)).astype(np.int64)
        used = np.flatnonzero(use)
        if not len(used):
            raise InputError(f"use selects none of the {index.n_soundings} soundings; a loader "
                             "needs at least one.")
        if (self._sif_pos[index.t[used]] < 0).any():
            raise InputError("some used soundings fall on driver steps the SIF cube lacks; pass "
                             "the SIF cube the index was built from.")
        # used soundings grouped by chunk (stable: (t, y, x) order inside a chunk)
        by_chunk = np.argsort(index.chunk_id[used], kind="stable")
        self._members = used[by_chunk]
        keys, starts = np.unique(index.chunk_id[self._members], return_index=True)
        self._keys = keys.astype(np.int64)
        self._starts = np.r_[starts, len(self._members)].astype(np.int64)
        self.drivers, self.sif, self.spec, self.index = drivers, sif, spec, index
        self.var, self.count_var = var, count_var
        self.has_count = count_var in sif
        self.weight = weight
        self.sif_scale = (float(sif_scale[0]), float(sif_scale[1]))
        if not self.sif_scale[1] > 0:
            raise InputError(f"sif_scale={sif_scale!r}: the std must be > 0.")
        self.proportions = (float(p[0]), float(p[1]), float(p[2]))
        self.batch_size = max(1, int(batch_size))
        self.shuffle_buffer = max(0, int(shuffle_buffer))
        self.prefetch = max(1, int(prefetch))
        self.workers = max(1, int(workers))
        self.client = client
        self.seed = int(seed)
        if cache_mib < 0 or unlabelled_pool < 1:
            raise InputError(f"cache_mib={cache_mib} must be >= 0 and unlabelled_pool="
                             f"{unlabelled_pool} >= 1.")
        self.cache_bytes = int(cache_mib * 2**20)
        self.unlabelled_pool = float(unlabelled_pool)
        self._cache: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
        self._cached_bytes = 0
        self._cache_lock = threading.Lock()
        self._names = list(dict.fromkeys([*spec.inputs, "igbp"]))
        self._land = "land_mask" in drivers and set(drivers["land_mask"].dims) == {"lat", "lon"}
        if self._land:
            self._names.append("land_mask")
        self._sif_names = [var] + ([count_var] if self.has_count else [])
        self._count_mean: float | None = None

    # ---- description
    @property
    def n_used(self) -> int:
        """Soundings this loader uses."""
        return len(self._members)

    @property
    def n_chunks(self) -> int:
        """Driver chunks holding used soundings."""
        return len(self._keys)

    @property
    def chunk_keys(self) -> np.ndarray:
        """Ids of the driver chunks an epoch reads."""
        return self._keys.copy()

    # ---- loading
    def _compute(self, lazy: xr.Dataset) -> xr.Dataset:
        if self.client is not None:
            return self.client.compute(lazy).result()
        return lazy.load()

    def _read_sif(self, key: int, names: list[str]) -> tuple[xr.Dataset, int]:
        """SIF variables over driver chunk ``key``'s region; returns them and the first step."""
        from xgpp._chunks import naming_unreadable

        tsl, ysl, xsl = self.index.chunk_slices(key)
        pos = self._sif_pos[tsl]
        pos = pos[pos >= 0]
        s0, s1 = int(pos.min()), int(pos.max()) + 1
        lazy = self.sif[names].isel(time=slice(s0, s1), lat=ysl, lon=xsl)
        with naming_unreadable(lazy, names, origin={n: self.sif for n in names}):
            return self._compute(lazy), s0

    def load_chunk(self, key: int) -> tuple[xr.Dataset, xr.Dataset, int]:
        """Load driver chunk ``key`` (inputs, ``igbp``) and the SIF over it, once.

        Returns
        -------
        (drivers, sif, first_sif_step)
            In-memory datasets; ``first_sif_step`` is the SIF cube's time index of ``sif``'s
            first step.
        """
        from xgpp._chunks import naming_unreadable

        tsl, ysl, xsl = self.index.chunk_slices(key)
        lazy = self.drivers[self._names].isel(time=tsl, lat=ysl, lon=xsl)
        with naming_unreadable(lazy, self._names, origin={n: self.drivers for n in self._names}):
            drv = self._compute(lazy)
        sf, s0 = self._read_sif(key, self._sif_names)
        return drv, sf, s0

    def _local(self, key: int, members: np.ndarray, s0: int) -> tuple[np.ndarray, np.ndarray]:
        """Flat chunk positions and SIF-block positions of soundings ``members``."""
        tsl, ysl, xsl = self.index.chunk_slices(key)
        ny, nx = ysl.stop - ysl.start, xsl.stop - xsl.start
        t = self.index.t[members].astype(np.int64)
        y = self.index.y[members].astype(np.int64) - ysl.start
        x = self.index.x[members].astype(np.int64) - xsl.start
        flat = ((t - tsl.start) * ny + y) * nx + x
        ts = self._sif_pos[t] - s0
        return flat, ts * ny * nx + y * nx + x

    def _sounding_rows(self, key: int, members: np.ndarray) -> dict[str, Any]:
        """Load a chunk; the valid sounding rows among ``members`` and the chunk's columns."""
        drv, sf, s0 = self.load_chunk(key)
        cols = columns_from_dataset(drv, self._names)
        valid = self.spec.valid_mask(cols)
        flat, sflat = self._local(key, members, s0)
        sif = np.asarray(sf[self.var].transpose("time", "lat", "lon").values,
                         np.float32).reshape(-1)[sflat]
        if self.has_count:
            count = np.asarray(sf[self.count_var].transpose("time", "lat", "lon").values,
                               np.float32).reshape(-1)[sflat]
        else:
            count = np.full(len(flat), np.nan, np.float32)
        ok = valid[flat] & np.isfinite(sif)
        return {"cols": cols, "valid": valid, "flat": flat[ok], "sif": sif[ok],
                "count": count[ok], "members": members[ok], "ok": ok}

    def _chunk_extract(self, key: int, members: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Decode a chunk once: its track rows ``(x, meta)`` and unlabelled pool ``(x, igbp)``.

        The pool is a seeded (by chunk, not epoch) random set of valid land pixels, so the
        cached and the decoded paths give the same rows.
        """
        r = self._sounding_rows(key, members)
        cols, valid, flat = r["cols"], r["valid"], r["flat"]
        n_tr = len(flat)
        p_tr, _, p_unl = self.proportions
        cand = valid & (cols["igbp"] > 0)
        if self._land:
            cand &= cols["land_mask"] > 0
        cand = np.flatnonzero(cand)
        n_pool = min(len(cand), int(np.ceil(self.unlabelled_pool * n_tr * p_unl / p_tr))
                     ) if n_tr and p_unl > 0 else 0
        prng = np.random.default_rng([self.seed, int(key), 23])
        pool = np.sort(cand[prng.choice(len(cand), n_pool, replace=False)]) if n_pool else cand[:0]
        x_tr = self.spec.transform({k: v[flat] for k, v in cols.items()})
        meta = np.zeros((n_tr, _N_META), np.float32)
        mean, std = self.sif_scale
        meta[:, _SIF] = (r["sif"] - np.float32(mean)) / np.float32(std)
        meta[:, _W] = self._weights(r["count"])
        meta[:, _SIF_MASK] = 1.0
        meta[:, _IGBP] = np.asarray(cols["igbp"][flat], np.float32)
        x_pool = self.spec.transform({k: v[pool] for k, v in cols.items()})
        igbp_pool = np.asarray(cols["igbp"][pool], np.float32)
        return x_tr, meta, x_pool, igbp_pool

    def _chunk_rows(self, key: int, members: np.ndarray, epoch: int
                    ) -> tuple[np.ndarray, np.ndarray, int]:
        """Track and unlabelled rows of one chunk: ``(x, meta, n_track)``."""
        entry = self._cache.get(int(key))
        if entry is None:
            entry = self._chunk_extract(key, members)
            size = sum(a.nbytes for a in entry)
            with self._cache_lock:
                if self._cached_bytes + size <= self.cache_bytes:
                    self._cache[int(key)] = entry
                    self._cached_bytes += size
        x_tr, meta_tr, x_pool, igbp_pool = entry
        n_tr = len(x_tr)
        p_tr, _, p_unl = self.proportions
        rng = np.random.default_rng([self.seed, int(epoch), int(key), 17])
        n_unl = min(len(x_pool), _stochastic_round(n_tr * p_unl / p_tr, rng)) if n_tr else 0
        pick = np.sort(rng.choice(len(x_pool), n_unl, replace=False)) if n_unl else np.zeros(
            0, np.int64)
        meta_unl = np.zeros((n_unl, _N_META), np.float32)
        meta_unl[:, _IGBP] = igbp_pool[pick]
        return (np.concatenate([x_tr, x_pool[pick]]), np.concatenate([meta_tr, meta_unl]),
                n_tr)

    @property
    def cached_mib(self) -> float:
        """Memory held by the row cache [MiB]."""
        return self._cached_bytes / 2**20

    def _weights(self, count: np.ndarray) -> np.ndarray:
        if self.weight != "count" or not self.has_count:
            return np.ones(len(count), np.float32)
        cm = self.count_mean
        ok = np.isfinite(count) & (count > 0)
        return np.where(ok, count / np.float32(cm), 1.0).astype(np.float32)

    @property
    def count_mean(self) -> float:
        """Mean ``count_var`` over the used soundings (finite, positive counts); computed once."""
        if self._count_mean is None:
            if not self.has_count:
                self._count_mean = 1.0
                return 1.0

            def part(i: int) -> tuple[float, int]:
                key, members = int(self._keys[i]), self._members[self._starts[i]:
                                                                 self._starts[i + 1]]
                sf, s0 = self._read_sif(key, [self.count_var])
                _, sflat = self._local(key, members, s0)
                c = np.asarray(sf[self.count_var].transpose("time", "lat", "lon").values,
                               np.float64).reshape(-1)[sflat]
                c = c[np.isfinite(c) & (c > 0)]
                return float(c.sum()), len(c)

            with ThreadPoolExecutor(self.workers, thread_name_prefix="xgpp-count") as pool:
                parts = list(pool.map(part, range(self.n_chunks)))
            total, n = sum(s for s, _ in parts), sum(c for _, c in parts)
            self._count_mean = total / n if n else 1.0
        return self._count_mean

    # ---- iteration
    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self.iterate(0)

    def iterate(self, epoch: int = 0, *, max_batches: int | None = None
                ) -> Iterator[dict[str, np.ndarray]]:
        """Yield the batches of one epoch (deterministic by ``(seed, epoch)``).

        One epoch visits every driver chunk holding used soundings once, in a seeded random
        order, and delivers every used sounding with valid inputs exactly once as a track row.

        Parameters
        ----------
        epoch : int
            Selects the chunk order, the unlabelled pixels, the site order and the shuffle.
        max_batches : int, optional
            Stop after this many batches.

        Yields
        ------
        dict
            ``x`` ``(n, n_features)`` float32; ``sif`` ``(n,)`` float32 normalised (0 where
            not a track row); ``sif_mask`` bool; ``sif_weight`` float32 (0 where no SIF);
            ``gpp`` float32 normalised (0 where not a site row); ``gpp_mask`` bool; ``igbp``
            int64 class numbers.  ``n == batch_size`` except maybe for the last batch.
        """
        if self.weight == "count":
            _ = self.count_mean  # once, before the threads start
        rng = np.random.default_rng([self.seed, int(epoch)])
        if max_batches is not None and max_batches < 1:
            return
        with contextlib.closing(background_items(
                lambda q, stop: self._produce(int(epoch), rng, q, stop),
                name="xgpp-mixed-samples", maxsize=max(2, 2 * self.prefetch))) as items:
            for n, item in enumerate(items, start=1):
                yield item
                if max_batches is not None and n >= max_batches:
                    break

    @staticmethod
    def _batch(x: np.ndarray, meta: np.ndarray) -> dict[str, np.ndarray]:
        sif_mask = meta[:, _SIF_MASK] > 0.5
        gpp_mask = meta[:, _GPP_MASK] > 0.5
        return {
            "x": np.ascontiguousarray(x, np.float32),
            "sif": np.where(sif_mask, meta[:, _SIF], 0.0).astype(np.float32),
            "sif_mask": sif_mask,
            "sif_weight": np.where(sif_mask, meta[:, _W], 0.0).astype(np.float32),
            "gpp": np.where(gpp_mask, meta[:, _GPP], 0.0).astype(np.float32),
            "gpp_mask": gpp_mask,
            "igbp": np.rint(meta[:, _IGBP]).astype(np.int64),
        }

    def _produce(self, epoch: int, rng: np.random.Generator, q: queue.Queue,
                 stop: threading.Event) -> None:
        try:
            order = rng.permutation(self.n_chunks)
            buf = ShuffleBuffer(self.shuffle_buffer, rng) if self.shuffle_buffer else None
            site_rng = np.random.default_rng([self.seed, epoch, 29])
            site_perm = np.empty(0, np.int64)
            site_pos = 0
            pending: list[tuple[np.ndarray, np.ndarray]] = []
            n_pending = 0
            p_tr, p_site, _ = self.proportions

            def sites(n: int) -> tuple[np.ndarray, np.ndarray]:
                nonlocal site_perm, site_pos
                assert self._site is not None
                sx, sg, si = self._site
                idx = []
                while n > 0:
                    if site_pos >= len(site_perm):
                        site_perm, site_pos = site_rng.permutation(len(sg)), 0
                    take = site_perm[site_pos:site_pos + n]
                    site_pos += len(take)
                    n -= len(take)
                    idx.append(take)
                sel = np.concatenate(idx)
                meta = np.zeros((len(sel), _N_META), np.float32)
                meta[:, _GPP], meta[:, _GPP_MASK], meta[:, _IGBP] = sg[sel], 1.0, si[sel]
                return sx[sel], meta

            def emit(x: np.ndarray, meta: np.ndarray, final: bool = False) -> bool:
                nonlocal n_pending
                if len(x):
                    pending.append((x, meta))
                    n_pending += len(x)
                if n_pending < self.batch_size and not (final and n_pending):
                    return True
                xs = np.concatenate([a for a, _ in pending])
                ms = np.concatenate([b for _, b in pending])
                pending.clear()
                n_full = (len(xs) // self.batch_size) * self.batch_size
                for i in range(0, n_full, self.batch_size):
                    if not put_until_stopped(q, self._batch(xs[i:i + self.batch_size],
                                                    ms[i:i + self.batch_size]), stop):
                        return False
                n_pending = len(xs) - n_full
                if n_pending and final:
                    n_pending = 0
                    return put_until_stopped(q, self._batch(xs[n_full:], ms[n_full:]), stop)
                if n_pending:
                    pending.append((xs[n_full:], ms[n_full:]))
                return True

            def job(i: int) -> tuple[np.ndarray, np.ndarray, int]:
                key = int(self._keys[i])
                return self._chunk_rows(key, self._members[self._starts[i]:self._starts[i + 1]],
                                        epoch)

            with ThreadPoolExecutor(self.workers, thread_name_prefix="xgpp-track-chunk") as pool:
                inflight: deque = deque()
                it = iter(order)
                for i in itertools.islice(it, self.prefetch):
                    inflight.append(pool.submit(job, int(i)))
                while inflight and not stop.is_set():
                    x, meta, n_tr = inflight.popleft().result()  # submission order: deterministic
                    nxt = next(it, None)
                    if nxt is not None:
                        inflight.append(pool.submit(job, int(nxt)))
                    if self._site is not None and n_tr:
                        n_site = _stochastic_round(n_tr * p_site / p_tr, rng)
                        if n_site:
                            sx, sm = sites(n_site)
                            x, meta = np.concatenate([x, sx]), np.concatenate([meta, sm])
                    if not len(x):
                        continue
                    if buf is None:
                        perm = rng.permutation(len(x))
                        parts = [(x[perm], meta[perm])]
                    else:
                        parts = list(buf.add(x, meta))
                    for px, pm in parts:
                        if not emit(px, pm):
                            return
                for f in inflight:
                    f.cancel()
            if stop.is_set():
                return
            rest = buf.flush() if buf is not None else None
            if rest is not None:
                if not emit(*rest, final=True):
                    return
            elif not emit(np.empty((0, self.spec.n_features), np.float32),
                          np.empty((0, _N_META), np.float32), final=True):
                return
            put_until_stopped(q, _STOP, stop)
        except BaseException as err:  # noqa: BLE001 - forwarded to the consumer
            put_until_stopped(q, err, stop)

    # ---- in-memory arrays for validation and scoring
    def track_arrays(self, use: np.ndarray, *, max_samples: int | None = None
                     ) -> dict[str, np.ndarray]:
        """In-memory arrays of the selected soundings with valid inputs, streamed by chunk.

        Parameters
        ----------
        use : numpy.ndarray of bool
            Per sounding of the index (e.g. ``fold.test`` or a validation mask); independent
            of the loader's own ``use``.
        max_samples : int, optional
            Keep at most this many rows: a seeded (``seed``) random subset of the valid ones.
            Candidates are read in random order until enough valid rows are found, so only
            their chunks are loaded and memory stays about ``max_samples`` rows.

        Returns
        -------
        dict
            ``x`` ``(n, n_features)`` float32 (normalised features); ``sif`` [physical units,
            not normalised] and ``count`` float32 (NaN without ``count_var``); ``igbp`` int64;
            ``t``, ``y``, ``x_idx`` int32 driver-cube indices.  Rows in ``(t, y, x)`` order.
        """
        use = np.asarray(use)
        if use.dtype != bool or use.shape != (self.index.n_soundings,):
            raise InputError(f"use must be a boolean array with one value per sounding "
                             f"({self.index.n_soundings}); got dtype {use.dtype}, shape "
                             f"{use.shape}.")
        if max_samples is not None and max_samples < 1:
            raise InputError(f"max_samples={max_samples} must be >= 1 (or None for all).")
        cand = np.flatnonzero(use)
        if (self._sif_pos[self.index.t[cand]] < 0).any():
            raise InputError("some selected soundings fall on driver steps the SIF cube lacks; "
                             "pass the SIF cube the index was built from.")
        if max_samples is not None:
            keys = np.random.default_rng([self.seed, 31]).random(len(cand))
            cand = cand[np.argsort(keys, kind="stable")]  # key order
        got: list[dict[str, np.ndarray]] = []
        n_got, lo = 0, 0
        step = len(cand) if max_samples is None else min(len(cand), int(max_samples * 1.25) + 256)
        while lo < len(cand) and (max_samples is None or n_got < max_samples):
            part = cand[lo:lo + step]
            rank = np.arange(lo, lo + len(part))
            lo += len(part)
            got_part = self._gather(part, rank)
            got.extend(got_part)
            n_got += sum(len(g["t"]) for g in got_part)
            step = max(step, 2 * (int(max_samples or 0) - n_got) + 256)
        names = ("x", "sif", "count", "igbp", "t", "y", "x_idx", "rank")
        if got:
            out = {k: np.concatenate([g[k] for g in got]) for k in names}
        else:
            out = {"x": np.empty((0, self.spec.n_features), np.float32),
                   **{k: np.empty(0, np.float32) for k in ("sif", "count")},
                   "igbp": np.empty(0, np.int64),
                   **{k: np.empty(0, np.int32) for k in ("t", "y", "x_idx")},
                   "rank": np.empty(0, np.int64)}
        if max_samples is not None and len(out["rank"]) > max_samples:
            keep = np.argsort(out["rank"], kind="stable")[:max_samples]
            out = {k: v[keep] for k, v in out.items()}
        order = np.lexsort((out["x_idx"], out["y"], out["t"]))
        out = {k: v[order] for k, v in out.items()}
        out.pop("rank")
        return out

    def _gather(self, members: np.ndarray, rank: np.ndarray) -> list[dict[str, np.ndarray]]:
        """Valid rows of soundings ``members`` (``rank``: their candidate order), by chunk."""
        cid = self.index.chunk_id[members]
        order = np.argsort(cid, kind="stable")
        members, rank, cid = members[order], rank[order], cid[order]
        keys, starts = np.unique(cid, return_index=True)
        starts = np.r_[starts, len(members)]

        def one(i: int) -> dict[str, np.ndarray]:
            m, rk = members[starts[i]:starts[i + 1]], rank[starts[i]:starts[i + 1]]
            r = self._sounding_rows(int(keys[i]), m)
            sel = {k: v[r["flat"]] for k, v in r["cols"].items()}
            ok = r["ok"]
            return {"x": self.spec.transform(sel), "sif": r["sif"], "count": r["count"],
                    "igbp": np.asarray(sel["igbp"]).astype(np.int64),
                    "t": self.index.t[r["members"]], "y": self.index.y[r["members"]],
                    "x_idx": self.index.x[r["members"]], "rank": rk[ok]}

        with ThreadPoolExecutor(self.workers, thread_name_prefix="xgpp-track-arrays") as pool:
            return list(pool.map(one, range(len(keys))))
