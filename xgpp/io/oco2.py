"""OCO-2 SIF Lite files (``oco2_LtSIF_YYMMDD_B11012Ar_*.nc4``) binned onto a sparse cube.

Field names changed between product versions.  B10/B11 files have root ``Latitude``,
``Longitude``, ``Delta_Time`` (seconds since 1990-01-01), ``Daily_SIF_740nm``,
``Daily_SIF_757nm``, ``Quality_Flag`` (0 best, 1 good, 2 bad), ``Science/IGBP_index`` and
``Metadata/MeasurementMode``; B8 files have lower-case ``latitude``/``longitude``/``time`` and
``SIF_757nm``/``SIF_771nm`` without a daily correction.  The reader detects which exist.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
import xarray as xr

from xgpp.errors import NotFoundError, UnitError
from xgpp.io._binning import (
    Points,
    binned_cube,
    check_lengths,
    date_from_name,
    decode_cf_time,
    group_by_step,
    one_file_per_day,
)
from xgpp.io._grid import GridLike, make_grid
from xgpp.io._nc import has_var, list_vars, open_nc, read_var
from xgpp.io._paths import PathsLike, basename, expand_paths
from xgpp.io._ranges import screen
from xgpp.io._time import check_freq
from xgpp.io._units import to_canonical

__all__ = ["read_oco2_lite", "SIF_CANDIDATES"]

log = logging.getLogger("xgpp.io")

#: SIF fields tried in order when ``sif_variable`` is None (740 nm daily-corrected first).
SIF_CANDIDATES: tuple[str, ...] = ("Daily_SIF_740nm", "SIF_740nm", "Daily_SIF_757nm",
                                   "SIF_757nm")
_LAT = ("Latitude", "latitude")
_LON = ("Longitude", "longitude")
_TIME = ("Delta_Time", "time")
_QUALITY = ("Quality_Flag", "quality_flag")
_MODE = ("Metadata/MeasurementMode", "measurement_mode")
_NAME_DATE = (r"LtSIF_(\d{2})(\d{2})(\d{2})_",)
_DEFAULT_TIME_UNITS = {"Delta_Time": "seconds since 1990-01-01 00:00:00"}


def _pick(found: list[str], options: Sequence[str], what: str, url: str) -> str:
    for name in options:
        if name in found:
            return name
    raise NotFoundError(
        f"{basename(url)}: no {what} field in this OCO-2 Lite file; looked for {list(options)}, "
        f"found {found}. Is this an OCO-2 SIF Lite file (oco2_LtSIF_*.nc4)?"
    )


def _layout(url: str, sif_variable: str | None) -> dict[str, str | None]:
    with open_nc(url) as nc:
        found = list_vars(nc)
    return {
        "lat": _pick(found, _LAT, "latitude", url),
        "lon": _pick(found, _LON, "longitude", url),
        "time": _pick(found, _TIME, "time", url),
        "sif": _pick(found, [sif_variable] if sif_variable else SIF_CANDIDATES, "SIF", url),
        "quality": next((n for n in _QUALITY if n in found), None),
        "mode": next((n for n in _MODE if n in found), None),
    }


def _read_lite(url: str, *, layout: dict[str, str | None], max_quality_flag: int,
               modes: tuple[int, ...] | None) -> Points:
    with open_nc(url) as nc:
        lat, _ = read_var(nc, layout["lat"], url=url)
        lon, _ = read_var(nc, layout["lon"], url=url)
        sif, attrs = read_var(nc, layout["sif"], url=url)
        if "units" not in attrs:
            raise UnitError(
                f"{basename(url)}: variable {layout['sif']!r} has no 'units' attribute; OCO-2 "
                "Lite SIF is 'W/m^2/sr/µm'. xgpp converts from the attribute and never guesses."
            )
        where = f"{basename(url)} {layout['sif']}"
        sif = to_canonical(sif, str(attrs["units"]), "sif", where=where)
        check_lengths(url, **{str(layout["sif"]): sif, str(layout["lat"]): lat,
                              str(layout["lon"]): lon})
        # impossible values (beyond the variable's limits, infinities) are rejected soundings
        keep = np.isfinite(sif) & ~screen(sif, "sif", where=where, units=str(attrs["units"]))
        if layout["quality"] and has_var(nc, layout["quality"]):
            qf, _ = read_var(nc, layout["quality"], url=url)
            check_lengths(url, **{str(layout["sif"]): sif, str(layout["quality"]): qf})
            keep &= np.isfinite(qf) & (qf <= max_quality_flag)
        if modes is not None and layout["mode"] and has_var(nc, layout["mode"]):
            mode, _ = read_var(nc, layout["mode"], url=url)
            check_lengths(url, **{str(layout["sif"]): sif, str(layout["mode"]): mode})
            keep &= np.isin(mode, modes)
    return Points(lat=lat, lon=lon, values={"sif": np.where(keep, sif, np.nan)},
                  n_read=int(sif.size), n_rejected=int((~keep).sum()))


def _date(url: str, layout: dict[str, str | None]) -> pd.Timestamp:
    day = date_from_name(url, _NAME_DATE)
    if day is not None:
        return day
    name = str(layout["time"])
    with open_nc(url) as nc:
        values, attrs = read_var(nc, name, url=url)
    units = attrs.get("units", _DEFAULT_TIME_UNITS.get(name))
    if units is None:
        raise UnitError(f"{basename(url)}: time field {name!r} has no units and the file name "
                         "has no date (oco2_LtSIF_YYMMDD_...); cannot date the file.")
    times = decode_cf_time(values[np.isfinite(values)], units, where=basename(url))
    return pd.Timestamp(np.sort(times.values)[len(times) // 2]).floor("D")


def read_oco2_lite(paths: PathsLike, *, grid: GridLike = 0.5, freq: str = "8D",
                   max_quality_flag: int = 1, sif_variable: str | None = None,
                   measurement_modes: tuple[int, ...] | None = None) -> xr.Dataset:
    """Bin OCO-2 SIF Lite soundings onto a sparse ``(time, lat, lon)`` cube.

    Parameters
    ----------
    paths : str, os.PathLike or list
        ``oco2_LtSIF_*.nc4`` files: a file, folder, glob or fsspec URL.
    grid : float or xarray.Dataset
        Target resolution [degree] or a dataset whose lat/lon cell centres to bin onto.
    freq : {"8D", "D", "MS"}
        Time step (``"8D"``: MODIS convention, steps start 1 Jan, 9 Jan, ...).
    max_quality_flag : int
        Keep soundings with ``Quality_Flag`` <= this (0 best, 1 good, 2 bad); ignored, and
        recorded in ``attrs``, for versions without a quality flag.
    sif_variable : str, optional
        SIF field to use; by default the first of :data:`SIF_CANDIDATES` present.
    measurement_modes : tuple of int, optional
        Keep only these ``MeasurementMode`` values (0 nadir, 1 glint, 2 target, 3 SAM);
        None keeps all.

    Returns
    -------
    xarray.Dataset
        ``sif`` [mW m-2 nm-1 sr-1] cell means (NaN where no sounding), ``sif_count`` [1] and lazy
        per-step coordinates ``n_soundings_read``/``n_soundings_rejected``/
        ``n_soundings_outside``.  ``attrs['source_variable']`` names the SIF field used.
    """
    check_freq(freq)
    urls = expand_paths(paths, suffixes=(".nc4", ".nc", ".h5"), what="OCO-2 SIF Lite")
    target = make_grid(grid, where="read_oco2_lite grid")
    layout = _layout(urls[0], sif_variable)
    dates = {u: _date(u, layout) for u in urls}
    one_file_per_day({u: d for u, d in dates.items() if date_from_name(u, _NAME_DATE)},
                     "OCO-2 SIF Lite")
    reader = functools.partial(_read_lite, layout=layout, max_quality_flag=max_quality_flag,
                               modes=measurement_modes)
    ds = binned_cube(group_by_step(dates, freq), reader, target, ("sif",), freq)
    if layout["quality"] is None:
        log.warning("OCO-2 Lite files have no quality flag (looked for %s); no quality filter "
                    "applied", list(_QUALITY))
    ds.attrs.update({
        "source": "OCO-2 SIF Lite", "source_variable": str(layout["sif"]),
        "quality_filter": (f"{layout['quality']} <= {max_quality_flag}" if layout["quality"]
                           else "none: the files have no quality flag"),
        "n_files": len(urls),
    })
    if "757" in str(layout["sif"]):
        ds["sif"].attrs["comment"] = (f"from {layout['sif']}: SIF at 757 nm, about 1/1.5 of the "
                                      "740 nm value; not rescaled")
    return ds
