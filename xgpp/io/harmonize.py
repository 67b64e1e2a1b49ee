"""Put any cube onto xgpp's canonical grid, time step and units.

Order of work: canonical dimension names, longitudes to -180..180 (roll + sort), latitudes
ascending, units to canonical (from the ``units`` attribute), temporal aggregation to the step
with a coverage rule, then area-weighted spatial coarsening by an integer factor.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import xarray as xr
from dask.array.core import PerformanceWarning

from xgpp.errors import InputError
from xgpp.io._grid import Grid, GridLike, check_axis, make_grid
from xgpp.io._time import check_freq, infer_freq, step_days, step_range, step_start
from xgpp.io._units import normalise
from xgpp.variables import VARIABLES

__all__ = ["harmonize"]

_DIM_ALIASES = {"latitude": "lat", "longitude": "lon", "valid_time": "time", "Time": "time",
                "Latitude": "lat", "Longitude": "lon", "y": "lat", "x": "lon"}
_CATEGORICAL = ("igbp",)


def _canonical_dims(ds: xr.Dataset) -> xr.Dataset:
    rename = {k: v for k, v in _DIM_ALIASES.items()
              if (k in ds.dims or k in ds.coords) and v not in ds.dims and v not in ds.coords}
    ds = ds.rename(rename)
    for dim in ("lat", "lon"):
        if dim not in ds.dims:
            raise InputError(
                f"harmonize: the dataset has no {dim!r} dimension (dims found: "
                f"{sorted(map(str, ds.dims))}); expected 'lat'/'lon' or 'latitude'/'longitude'. "
                "Rename the spatial dimensions with ds.rename(...)."
            )
        if dim not in ds.coords:
            raise InputError(f"harmonize: dimension {dim!r} has no coordinate values; assign "
                             "the cell centres with ds.assign_coords(...).")
    return ds


def check_file_axes(ds: xr.Dataset, name: str) -> xr.Dataset:
    """Refuse irregular lat/lon and bad times in one file; sort its times (documented)."""
    for dim in ("lat", "lon"):
        check_axis(ds[dim].values, dim, name)
    if "time" not in ds.dims:
        return ds
    t = ds["time"].values if "time" in ds.coords else None
    if t is None or not np.issubdtype(t.dtype, np.datetime64):
        raise InputError(f"{name}: dimension 'time' has no decoded datetime coordinate (found "
                         f"{'none' if t is None else t.dtype}); the file's time variable is "
                         "missing or its units are not CF ('hours since ...').")
    idx = pd.DatetimeIndex(t)
    if idx.hasnans:
        raise InputError(f"{name}: {int(idx.isna().sum())} time value(s) are missing (NaT); "
                         "the file's time variable is damaged. Re-download it.")
    dup = idx[idx.duplicated()]
    if len(dup):
        raise InputError(f"{name}: time {dup[0]} appears {int((idx == dup[0]).sum())} times; each "
                         "time must appear once. Re-download the file.")
    return ds if idx.is_monotonic_increasing else ds.sortby("time")


def _fix_lonlat(ds: xr.Dataset) -> xr.Dataset:
    lon = np.asarray(ds["lon"].values, dtype=float)
    if lon.max() > 180.0:
        ds = ds.assign_coords(lon=((lon + 180.0) % 360.0) - 180.0)
    lat = np.asarray(ds["lat"].values, dtype=float)
    if lat.min() < -90.0 or lat.max() > 90.0:
        raise InputError(f"harmonize: 'lat' spans {lat.min()}..{lat.max()}, outside -90..90 "
                         "degree_north; is it in radians or projected metres?")
    if not (np.all(np.diff(ds["lon"].values) > 0) and np.all(np.diff(lat) > 0)):
        ds = ds.sortby(["lat", "lon"])
    ds["lat"].attrs.update(units="degrees_north", standard_name="latitude", long_name="latitude")
    ds["lon"].attrs.update(units="degrees_east", standard_name="longitude", long_name="longitude")
    return ds


def _normalise_all(ds: xr.Dataset, strict: bool) -> xr.Dataset:
    out = ds.copy()
    for name in list(ds.data_vars):
        if name in VARIABLES:
            out[name] = normalise(ds[name], str(name), where=f"harmonize variable {name!r}")
        elif strict:
            raise InputError(
                f"harmonize: variable {name!r} is not one of xgpp's canonical variables "
                f"{sorted(VARIABLES)}; rename it (ds.rename({{{name!r}: '<canonical>'}})) or drop "
                "it before harmonising (see docs/data_model.md)."
            )
    return out


def _aggregate_time(ds: xr.Dataset, freq: str, min_coverage: float,
                    keep_counts: bool) -> xr.Dataset:
    if "time" not in ds.dims:
        return ds
    t = pd.DatetimeIndex(ds["time"].values)
    dup = t[t.duplicated()]
    if len(dup):
        raise InputError(f"harmonize: duplicated time stamp {dup[0]} ({len(dup)} duplicates); "
                         "each time must appear once. Drop duplicates with "
                         "ds.drop_duplicates('time').")
    if not t.is_monotonic_increasing:
        ds = ds.sortby("time")
        t = pd.DatetimeIndex(ds["time"].values)
    labels = step_start(t, freq)
    steps = step_range(t[0], t[-1], freq)
    step_seconds = step_days(steps, freq) * 86400.0
    if len(t) > 1:
        spacing = float(np.median(np.diff(t.values).astype("timedelta64[s]").astype(float)))
    else:
        spacing = float(step_seconds[0])
    already = labels.equals(t) and (len(t) < 2 or infer_freq(t) == freq)
    if spacing > np.median(step_seconds) * 1.001 and not already:
        raise InputError(
            f"harmonize: the data's time spacing ({spacing / 86400:.3g} days) is coarser than "
            f"the target step freq={freq!r} ({step_seconds.min() / 86400:.3g} days); xgpp "
            "aggregates, it never disaggregates. Choose a coarser freq."
        )
    grouper = xr.DataArray(labels.values, dims="time", name="step")
    timed = [n for n in ds.data_vars if "time" in ds[n].dims]
    static = ds.drop_vars(timed).drop_dims("time", errors="ignore")
    src = ds[timed]
    out = {}
    expected = xr.DataArray(step_seconds / spacing, dims="step", coords={"step": steps.values})
    weighted = "sif" in src and "sif_count" in src
    for name in timed:
        if weighted and name in ("sif", "sif_count"):
            continue
        x = src[name]
        g_sum = x.groupby(grouper).sum(skipna=True)
        g_cnt = x.notnull().groupby(grouper).sum()
        g_sum, g_cnt = (a.reindex(step=steps.values) for a in (g_sum, g_cnt))
        coverage = np.minimum(g_cnt / expected, 1.0)
        mean = (g_sum / g_cnt.where(g_cnt > 0)).where(coverage >= min_coverage)
        out[name] = mean.assign_attrs(x.attrs)
        if keep_counts:
            out[f"{name}_count"] = g_cnt.astype(np.int32).assign_attrs(
                long_name=f"valid source time steps of {name}", units="1")
    if weighted:
        cnt = src["sif_count"].where(src["sif"].notnull(), 0).fillna(0)
        num = (src["sif"].fillna(0) * cnt).groupby(grouper).sum().reindex(step=steps.values)
        den = cnt.groupby(grouper).sum().reindex(step=steps.values)
        out["sif"] = (num / den.where(den > 0)).assign_attrs(src["sif"].attrs)
        out["sif_count"] = den.fillna(0).astype(src["sif_count"].dtype).assign_attrs(
            src["sif_count"].attrs)
    agg = xr.Dataset(out).rename(step="time")
    agg["time"].attrs["long_name"] = "start of the time step"
    merged = xr.merge([agg, static], compat="override", join="outer")
    merged.attrs = {**ds.attrs, "time_step": freq, "min_coverage": min_coverage}
    return merged.transpose("time", ...)


def _check_factor(ratio: float, dim: str, src: float, dst: float) -> int:
    k = round(ratio)
    if k < 1 or abs(ratio - k) > 1e-6:
        raise InputError(
            f"harmonize: grid does not match along {dim!r}: source spacing {src:.6g} degree, "
            f"target {dst:.6g} degree; xgpp coarsens only by an integer factor (target/source = "
            f"{ratio:.6g}). Regrid the source first (e.g. with xESMF) or pick a target whose "
            "spacing is a multiple of the source's."
        )
    return k


def _regrid(ds: xr.Dataset, target: Grid) -> xr.Dataset:
    src = make_grid(ds, where="harmonize source")
    kl = _check_factor(target.dlat / src.dlat, "lat", src.dlat, target.dlat)
    ko = _check_factor(target.dlon / src.dlon, "lon", src.dlon, target.dlon)
    fine = {}
    for dim, k, s, t in (("lat", kl, src.dlat, target.dlat), ("lon", ko, src.dlon, target.dlon)):
        tgt = getattr(target, dim)
        edge0 = tgt[0] - t / 2
        offset = (edge0 - (getattr(src, dim)[0] - s / 2)) / s
        if abs(offset - round(offset)) > 1e-4:
            raise InputError(
                f"harmonize: grid does not match along {dim!r}: target cell edges start at "
                f"{edge0:.6g} degree but source edges lie at {getattr(src, dim)[0] - s / 2:.6g} + "
                f"n*{s:.6g}; the target's cells must be unions of source cells."
            )
        fine[dim] = edge0 + s * (np.arange(tgt.size * k) + 0.5)
    with warnings.catch_warnings():
        # padding a regional source onto a global target splits chunks; that is expected here
        warnings.simplefilter("ignore", PerformanceWarning)
        ds = ds.reindex(lat=fine["lat"], lon=fine["lon"], method="nearest",
                        tolerance=min(src.dlat, src.dlon) * 1e-3)
    if kl == 1 and ko == 1:
        return ds.assign_coords(lat=target.lat, lon=target.lon)
    w = np.cos(np.deg2rad(ds["lat"]))
    out = {}
    spatial = [n for n in ds.data_vars if {"lat", "lon"} <= set(ds[n].dims)]
    weighted = "sif" in spatial and "sif_count" in spatial

    def coarse_sum(x: xr.DataArray) -> xr.DataArray:
        return x.coarsen(lat=kl, lon=ko, boundary="exact").sum()

    for name in spatial:
        x = ds[name]
        if name in _CATEGORICAL:
            raise InputError(
                f"harmonize: variable {name!r} is categorical and cannot be averaged onto a "
                f"{kl}x{ko} coarser grid; compute its majority class at the target resolution."
            )
        if name == "sif_count":
            out[name] = coarse_sum(x.fillna(0)).astype(x.dtype).assign_attrs(x.attrs)
        elif name == "sif" and weighted:
            cnt = ds["sif_count"].where(x.notnull(), 0).fillna(0)
            num, den = coarse_sum(x.fillna(0) * cnt), coarse_sum(cnt)
            out[name] = (num / den.where(den > 0)).assign_attrs(x.attrs)
        else:
            num = coarse_sum((x * w).fillna(0))
            den = coarse_sum(w.where(x.notnull(), 0))
            out[name] = (num / den.where(den > 0)).astype(x.dtype).assign_attrs(x.attrs)
    res = xr.Dataset(out, attrs=ds.attrs)
    res = res.assign_coords(lat=target.lat, lon=target.lon)
    extra = {c: ds[c] for c in ds.coords if c not in ("lat", "lon") and "lat" not in ds[c].dims
             and "lon" not in ds[c].dims}
    return res.assign_coords(extra)


def harmonize(ds: xr.Dataset, like: xr.Dataset | None = None, *,
              grid: GridLike | Grid | None = None, freq: str | None = None,
              min_coverage: float = 0.0, keep_counts: bool = False,
              strict: bool = True) -> xr.Dataset:
    """Put ``ds`` on the grid, time step and units of ``like`` (or of ``grid``/``freq``).

    Parameters
    ----------
    ds : xarray.Dataset
        Any cube with lat/lon (or latitude/longitude) and optionally time/valid_time, whose data
        variables carry canonical names and a ``units`` attribute.
    like : xarray.Dataset, optional
        Target: its lat/lon cell centres set the grid and its time labels the step and the
        time axis (reindexed onto them).
    grid : float or xarray.Dataset, optional
        Target resolution [degree] or dataset with lat/lon, when ``like`` is not given.
    freq : {"8D", "D", "MS"}, optional
        Target time step when ``like`` has no time axis; ``"8D"`` is the MODIS convention.
    min_coverage : float
        Minimum fraction [1] of a step's expected source time steps that must be valid for the
        step mean to be kept (expected = step length / source spacing).
    keep_counts : bool
        Add ``<name>_count`` with the number of valid source time steps per output step.
    strict : bool
        Raise on data variables that are not canonical xgpp variables.

    Returns
    -------
    xarray.Dataset
        Canonical layout (see docs/data_model.md); lazy where the input is lazy.

    Raises
    ------
    ValueError
        Missing/unknown units, grids that are not integer multiples or are misaligned, data
        coarser in time than the target step, duplicated time stamps, missing lat/lon.
    """
    ds = _canonical_dims(ds)
    ds = _fix_lonlat(ds)
    ds = _normalise_all(ds, strict)
    like_time = None
    if like is not None:
        like = _fix_lonlat(_canonical_dims(like))
        grid = grid if grid is not None else Grid(np.asarray(like["lat"].values, float),
                                                  np.asarray(like["lon"].values, float))
        if "time" in like.dims:
            like_time = pd.DatetimeIndex(like["time"].values)
            inferred = infer_freq(like_time)
            if freq is None:
                if inferred is None:
                    raise InputError(
                        "harmonize: cannot tell the time step of `like`: its time labels are not "
                        "consecutive starts of '8D' (MODIS), 'D' or 'MS' steps. Pass freq=..."
                    )
                freq = inferred
    if freq is not None:
        check_freq(freq)
        ds = _aggregate_time(ds, freq, min_coverage, keep_counts)
    if grid is not None:
        target = grid if isinstance(grid, Grid) else make_grid(grid, where="harmonize target")
        ds = _regrid(ds, target)
    if like_time is not None and "time" in ds.dims:
        ds = ds.reindex(time=like_time.values)
    order = [d for d in ("site", "time", "lat", "lon") if d in ds.dims]
    return ds.transpose(*order, ...)
