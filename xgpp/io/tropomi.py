"""TROPOMI SIF: TROPOSIF L2B daily soundings (binned) and gridded L3 files (harmonised).

TROPOSIF L2B daily files (``TROPOSIF_L2B_2019-07-01.nc``, ESA TROPOSIF product user manual,
NOV-FE-0956-MU-019) hold one row per sounding in group ``PRODUCT``: ``latitude``, ``longitude``,
``SIF_743``, ``SIF_Corr_743`` (daily-corrected), ``SIF_ERROR_743``, ``NIRv``, ``delta_time``
(milliseconds after the reference ``time``) and ``SUPPORT_DATA/INPUT_DATA/cloud_fraction_L2``.
SIF is in mW m-2 sr-1 nm-1.
"""

from __future__ import annotations

import functools
import logging

import numpy as np
import pandas as pd
import xarray as xr

from xgpp.errors import InputError, NotFoundError, UnitError
from xgpp.io._binning import (
    Points,
    binned_cube,
    check_lengths,
    date_from_name,
    decode_cf_time,
    group_by_step,
    one_file_per_day,
)
from xgpp.io._grid import GridLike, check_axis, make_grid
from xgpp.io._nc import has_var, list_vars, open_dataset, open_nc, read_var
from xgpp.io._paths import PathsLike, basename, expand_paths
from xgpp.io._ranges import screen, screened
from xgpp.io._time import check_freq
from xgpp.io._units import normalise, to_canonical
from xgpp.io.harmonize import _canonical_dims, check_file_axes, harmonize

__all__ = ["read_tropomi"]

log = logging.getLogger("xgpp.io")

_PRODUCT = "PRODUCT"
_CLOUD = "PRODUCT/SUPPORT_DATA/INPUT_DATA/cloud_fraction_L2"
_DATE_PATTERNS = (r"(\d{4})-(\d{2})-(\d{2})", r"(?<!\d)(\d{4})(\d{2})(\d{2})(?!\d)")


def _units_of(attrs: dict, var: str, url: str) -> str:
    if "units" not in attrs:
        raise UnitError(
            f"{basename(url)}: variable {var!r} has no 'units' attribute; xgpp converts units "
            "from the attribute and never guesses. TROPOSIF SIF should read 'mW m-2 sr-1 nm-1'; "
            "fix the file's attribute (e.g. with nco: ncatted -a units,...)."
        )
    return str(attrs["units"])


def _read_l2b(url: str, *, variable: str, max_cloud_fraction: float | None) -> Points:
    with open_nc(url) as nc:
        lat, _ = read_var(nc, "PRODUCT/latitude", url=url)
        lon, _ = read_var(nc, "PRODUCT/longitude", url=url)
        sif, attrs = read_var(nc, f"PRODUCT/{variable}", url=url)
        units = _units_of(attrs, variable, url)
        where = f"{basename(url)} PRODUCT/{variable}"
        sif = to_canonical(sif, units, "sif", where=where)
        check_lengths(url, sif=sif, latitude=lat, longitude=lon)
        # impossible values (beyond the variable's limits, infinities) are rejected soundings
        keep = np.isfinite(sif) & ~screen(sif, "sif", where=where, units=units)
        if max_cloud_fraction is not None:
            cloud, _ = read_var(nc, _CLOUD, url=url)
            check_lengths(url, sif=sif, cloud_fraction_L2=cloud)
            keep &= np.isfinite(cloud) & (cloud <= max_cloud_fraction)
        values = {"sif": np.where(keep, sif, np.nan)}
        if has_var(nc, "PRODUCT/NIRv"):
            nirv, nattrs = read_var(nc, "PRODUCT/NIRv", url=url)
            # NIRv is a reflectance product: dimensionless by definition
            nwhere = f"{basename(url)} PRODUCT/NIRv"
            nirv = to_canonical(nirv, nattrs.get("units", "1"), "nirv", where=nwhere)
            check_lengths(url, sif=sif, NIRv=nirv)
            nirv[screen(nirv, "nirv", where=nwhere, units=nattrs.get("units"))] = np.nan
            values["nirv"] = np.where(keep, nirv, np.nan)
    return Points(lat=lat, lon=lon, values=values, n_read=int(sif.size),
                  n_rejected=int((~keep).sum()))


def _l2b_date(url: str) -> pd.Timestamp:
    day = date_from_name(url, _DATE_PATTERNS)
    if day is not None:
        return day
    with open_nc(url) as nc:
        delta, dattrs = read_var(nc, "PRODUCT/delta_time", url=url)
        units = str(dattrs.get("units", "milliseconds"))
        if "since" in units:
            times = decode_cf_time(delta, units, where=basename(url))
        else:
            ref_path = "time" if has_var(nc, "time") else "PRODUCT/time"
            ref, rattrs = read_var(nc, ref_path, url=url)
            ref_time = decode_cf_time(np.ravel(ref)[:1], str(rattrs.get("units", "")),
                                      where=f"{basename(url)} {ref_path}")[0]
            times = ref_time + pd.to_timedelta(delta[np.isfinite(delta)], unit="ms")
    if len(times) == 0:
        raise InputError(f"{basename(url)}: no valid delta_time, cannot date the file; "
                         "name it TROPOSIF_L2B_YYYY-MM-DD.nc.")
    return pd.Timestamp(np.sort(times.values)[len(times) // 2]).floor("D")


def _open_l3(url: str, variable: str) -> xr.Dataset:
    ds = open_dataset(url)
    if variable not in ds:
        raise NotFoundError(
            f"{basename(url)}: gridded TROPOMI file has no variable {variable!r}; it has "
            f"{sorted(map(str, ds.data_vars))}. Pass variable=<name of the SIF field>."
        )
    count = next((n for n in ("n", "N", "count", "n_obs") if n in ds), None)
    keep = {variable: "sif", **({count: "sif_count"} if count else {})}
    out = _canonical_dims(ds[list(keep)].rename(keep))
    units = _units_of(out["sif"].attrs, variable, url)  # raises when the file gives no units
    where = f"{basename(url)} variable {variable!r}"
    out["sif"] = screened(normalise(out["sif"], "sif", where=where), "sif", where=where,
                          units=units)
    for dim in ("lat", "lon"):
        check_axis(out[dim].values, dim, basename(url))
    if count:
        out["sif_count"].attrs["units"] = "1"
    for name in ("time", "Time"):
        if name in out.dims or name in out.coords:
            out = out.rename({name: "time"}) if name != "time" else out
            break
    else:
        day = date_from_name(url, _DATE_PATTERNS)
        if day is None:
            raise InputError(f"{basename(url)}: gridded file has no time dimension and no date "
                             "YYYY-MM-DD in its name; cannot place it in time.")
        out = out.expand_dims(time=[day])
    return check_file_axes(out, basename(url))


def _no_shared_times(urls: list[str], parts: list[xr.Dataset]) -> None:
    seen: dict[np.datetime64, str] = {}
    for url, part in zip(urls, parts, strict=True):
        for t in part["time"].values:
            if t in seen:
                raise InputError(f"gridded TROPOMI files {seen[t]} and {basename(url)} both hold "
                                 f"time {pd.Timestamp(t)}; each time must appear in one file "
                                 "only (two versions of one product?). Remove one.")
            seen[t] = basename(url)


def read_tropomi(paths: PathsLike, *, grid: GridLike = 0.5, freq: str = "8D",
                 max_cloud_fraction: float | None = 0.5,
                 variable: str = "SIF_Corr_743") -> xr.Dataset:
    """Read TROPOMI SIF files into a ``(time, lat, lon)`` cube of ``sif`` and ``sif_count``.

    Parameters
    ----------
    paths : str, os.PathLike or list
        TROPOSIF L2B daily files or gridded L3 netCDF files: a file, folder, glob or fsspec URL.
    grid : float or xarray.Dataset
        Target resolution [degree] of a global grid, or a dataset whose lat/lon cell centres to
        bin onto.
    freq : {"8D", "D", "MS"}
        Time step; ``"8D"`` follows the MODIS convention (46 steps a year from each 1 January).
    max_cloud_fraction : float or None
        L2B only: keep soundings with ``cloud_fraction_L2`` <= this [1]; None keeps all.
    variable : str
        SIF field: ``"SIF_Corr_743"`` (daily-corrected, default) or ``"SIF_743"``.

    Returns
    -------
    xarray.Dataset
        ``sif`` [mW m-2 nm-1 sr-1] (mean of the soundings in each cell and step), ``nirv`` [1]
        where the files have it, ``sif_count`` [1] and, for L2B, per-step lazy coordinates
        ``n_soundings_read``/``n_soundings_rejected``/``n_soundings_outside``.  L2B files are
        binned lazily: one dask task per time step reads that step's files one at a time.
    """
    check_freq(freq)
    urls = expand_paths(paths, suffixes=(".nc", ".nc4", ".h5"), what="TROPOMI netCDF")
    target = make_grid(grid, where="read_tropomi grid")
    with open_nc(urls[0]) as nc:
        is_l2b = _PRODUCT in nc.groups
        found = list_vars(nc)
    if is_l2b:
        if f"PRODUCT/{variable}" not in found:
            raise NotFoundError(
                f"{basename(urls[0])}: TROPOSIF L2B file has no PRODUCT/{variable}; it has "
                f"{found}. Pass variable='SIF_743' or 'SIF_Corr_743'."
            )
        dates = {u: _l2b_date(u) for u in urls}
        one_file_per_day({u: d for u, d in dates.items()
                          if date_from_name(u, _DATE_PATTERNS) is not None}, "TROPOSIF L2B")
        reader = functools.partial(_read_l2b, variable=variable,
                                   max_cloud_fraction=max_cloud_fraction)
        names = ("sif", "nirv") if "PRODUCT/NIRv" in found else ("sif",)
        ds = binned_cube(group_by_step(dates, freq), reader, target, names, freq)
        ds.attrs.update({
            "source": "TROPOSIF L2B", "source_variable": variable,
            "max_cloud_fraction": "none" if max_cloud_fraction is None else max_cloud_fraction,
            "n_files": len(urls),
            "binning": "mean of soundings per cell; files assigned to steps by their date",
        })
        return ds
    parts = [_open_l3(u, variable) for u in urls]
    _no_shared_times(urls, parts)
    try:
        cube = xr.concat(parts, dim="time", data_vars="all", coords="minimal", join="exact",
                         compat="override")
    except ValueError as err:
        raise InputError(f"gridded TROPOMI files {[basename(u) for u in urls][:5]} do not share "
                         f"one lat/lon grid, so they cannot be stacked in time: {err}") from err
    cube = cube.sortby("time")
    out = harmonize(cube, grid=target, freq=freq)
    out.attrs.update({"source": "TROPOMI gridded SIF", "source_variable": variable,
                      "n_files": len(urls)})
    return out
