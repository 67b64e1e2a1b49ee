"""ERA5-style reanalysis drivers and MODIS-style fAPAR/LAI onto the canonical cube.

ERA5 (CDS netCDF): ``t2m``/``d2m`` [K], ``sp`` [Pa], hourly accumulated ``ssrd`` [J m-2] on
``valid_time`` (or ``time``) x ``latitude`` (descending) x ``longitude`` (0..360 or -180..180).
MODIS-style (e.g. MCD15A2H exported to netCDF by AppEEARS): raw integers ``Fpar_500m`` (scale
0.01) and ``Lai_500m`` (scale 0.1) with fill/class codes >= 249.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import pandas as pd
import xarray as xr

from xgpp.errors import InputError, NotFoundError, UnitError
from xgpp.io._grid import GridLike
from xgpp.io._nc import open_dataset
from xgpp.io._paths import PathsLike, basename, expand_paths
from xgpp.io._ranges import screened
from xgpp.io._time import check_freq
from xgpp.io._units import normalise
from xgpp.io.fluxnet import SW_TO_PPFD
from xgpp.io.harmonize import _canonical_dims, check_file_axes, harmonize
from xgpp.variables import attrs_for

__all__ = ["read_era5", "read_modis", "esat_magnus", "MODIS_FIELDS"]

#: MODIS field -> (canonical name, default scale factor [1 per count], canonical units)
MODIS_FIELDS: dict[str, tuple[str, float, str]] = {
    "Fpar_500m": ("fapar", 0.01, "1"), "Lai_500m": ("lai", 0.1, "m2 m-2"),
    "Fpar": ("fapar", 0.01, "1"), "Lai": ("lai", 0.1, "m2 m-2"),
}
#: first raw value that is a fill or class code rather than data in MOD15 products
MODIS_FILL_MIN = 249


def esat_magnus(t_degc):
    """Saturation vapour pressure over water [Pa] at temperature ``t_degc`` [degC].

    Magnus formula with the WMO coefficients (WMO-No. 8, 2008, annex 4.B):
    ``611.2 * exp(17.62 t / (243.12 + t))``.
    """
    return 611.2 * np.exp(17.62 * t_degc / (243.12 + t_degc))


def _open_all(urls: list[str], what: str,
              prepare: Callable[[xr.Dataset, str], xr.Dataset], **kwargs) -> xr.Dataset:
    """Open, check (grid, times) and ``prepare`` each file, then stack them in time."""
    parts = []
    for url in urls:
        name = basename(url)
        try:
            ds = _canonical_dims(open_dataset(url, **kwargs))
        except InputError as err:
            raise InputError(f"{what} file {name}: {err}") from err
        drop = [c for c in ds.coords if c not in ("time", "lat", "lon")]
        parts.append(prepare(check_file_axes(ds.drop_vars(drop), name), name))
    if len(parts) == 1:
        return parts[0]
    seen: dict[np.datetime64, str] = {}
    for url, part in zip(urls, parts, strict=True):
        for t in part["time"].values if "time" in part.dims else ():
            if t in seen:
                raise InputError(f"{what} files {seen[t]} and {basename(url)} both hold time "
                                 f"{pd.Timestamp(t)}; each time must appear in one file only "
                                 "(overlapping downloads?). Remove the duplicate file.")
            seen[t] = basename(url)
    try:
        return xr.concat(parts, dim="time", data_vars="all", coords="minimal",
                         join="exact", compat="override").sortby("time")
    except ValueError as err:
        raise InputError(f"{what} files {[basename(u) for u in urls]} do not share one lat/lon "
                         f"grid and variables, so they cannot be stacked in time: {err}") from err


#: ERA5 field -> canonical variable its values are checked (and converted) as
_ERA5_FIELDS: dict[str, str] = {"t2m": "tair", "d2m": "tair", "sp": "patm"}


def _era5_file(ds: xr.Dataset, name: str) -> xr.Dataset:
    """One ERA5 file in canonical units (``t2m``/``d2m`` [degC], ``sp`` [Pa], ``ssrd`` raw).

    Each field is converted from its own ``units`` and checked lazily (unit mistakes, values
    outside the possible range: :mod:`xgpp.io._ranges`), so messages name this file.
    """
    out = {}
    for v in [v for v in (*_ERA5_FIELDS, "ssrd") if v in ds]:
        if "units" not in ds[v].attrs:
            raise UnitError(f"ERA5 variable {v!r} has no 'units' attribute (file {name}); xgpp "
                            "converts units from the attribute.")
    for v, canon in _ERA5_FIELDS.items():
        if v in ds:
            where = f"ERA5 file {name} variable {v!r}"
            units = str(ds[v].attrs["units"])
            out[v] = screened(normalise(ds[v].rename(canon), canon, where=where), canon,
                              where=where, units=units)
    if "ssrd" in ds:
        units = str(ds["ssrd"].attrs["units"]).replace("**", "").replace("^", "")
        if units not in ("J m-2", "J/m2"):
            raise UnitError(f"ERA5 file {name}: ssrd has units {ds['ssrd'].attrs['units']!r}; "
                            "expected 'J m**-2' (accumulated energy).")
        ssrd = ds["ssrd"]
        if "time" in ssrd.dims and ds.sizes["time"] > 1:
            dt = float(np.median(np.diff(ds["time"].values).astype("timedelta64[s]")
                                 .astype(float)))
            ssrd = screened(ssrd, "ppfd", where=f"ERA5 file {name} variable 'ssrd'",
                            scale=SW_TO_PPFD / dt, units="J m-2 per step")
        out["ssrd"] = ssrd
    return xr.Dataset(out, attrs=ds.attrs)


def read_era5(paths: PathsLike, *, grid: GridLike | None = None, freq: str = "8D",
              min_coverage: float = 0.5, daytime: bool = True) -> xr.Dataset:
    """Read ERA5-style hourly files into canonical drivers ``tair``, ``vpd``, ``patm``, ``ppfd``.

    Parameters
    ----------
    paths : str, os.PathLike or list
        ERA5 netCDF files (file, folder, glob or fsspec URL) with any of ``t2m`` [K],
        ``d2m`` [K], ``sp`` [Pa], ``ssrd`` [J m-2, accumulated over each preceding time step].
    grid : float or xarray.Dataset, optional
        Target resolution [degree] (an integer multiple of the source's) or dataset whose grid
        to coarsen onto; None keeps the source grid (made canonical).
    freq : {"8D", "D", "MS"}
        Output time step (``"8D"``: MODIS convention).
    min_coverage : float
        Minimum fraction [1] of a step's hours that must be present.
    daytime : bool
        Average ``tair`` and ``vpd`` over daylight hours only (``ssrd`` > 0), matching their
        canonical definition; needs ``ssrd``.

    Returns
    -------
    xarray.Dataset
        Lazy ``(time, lat, lon)`` drivers: ``tair`` [degC], ``vpd`` [Pa] = esat(t2m) - esat(d2m)
        (:func:`esat_magnus`), ``patm`` [Pa], ``ppfd`` [umol m-2 s-1] = ssrd / step seconds x
        2.04 (:data:`xgpp.io.fluxnet.SW_TO_PPFD`), each accumulation labelled by its start.
    """
    check_freq(freq)
    urls = expand_paths(paths, suffixes=(".nc", ".nc4"), what="ERA5 netCDF")
    src = _open_all(urls, "ERA5", _era5_file)
    known = ("t2m", "d2m", "sp", "ssrd")
    if not any(v in src for v in known):
        raise NotFoundError(f"ERA5 files {[basename(u) for u in urls][:3]} have none of "
                            f"{list(known)}; found {sorted(map(str, src.data_vars))}.")
    out = {}
    if "t2m" in src:
        out["tair"] = src["t2m"].rename("tair")
    if "t2m" in src and "d2m" in src:
        vpd = (esat_magnus(out["tair"]) - esat_magnus(src["d2m"])).clip(min=0)
        out["vpd"] = vpd.rename("vpd").assign_attrs(attrs_for("vpd"))
    if "sp" in src:
        out["patm"] = src["sp"].rename("patm")
    if "ssrd" in src:
        t = src["time"].values if "time" in src.dims else np.array([])
        dt = np.diff(t).astype("timedelta64[s]").astype(float)
        if len(t) < 2 or not np.allclose(dt, dt[0]):
            raise InputError(
                f"ERA5 ssrd in {[basename(u) for u in urls][:3]}: accumulations need a regular "
                f"time axis of >= 2 steps (found {len(t)} time(s), spacings "
                f"{sorted(set(dt))[:3]} s: a missing hour?)."
            )
        ppfd = (src["ssrd"] / dt[0] * SW_TO_PPFD).shift(time=-1)
        out["ppfd"] = ppfd.rename("ppfd").assign_attrs(attrs_for("ppfd"))
    ds = xr.Dataset(out)
    day_mean = daytime and "ppfd" in ds
    if day_mean:
        day = (ds["ppfd"] > 0).astype("float32").where(ds["ppfd"].notnull())
        for v in ("tair", "vpd"):
            if v in ds:
                ds[f"_{v}_day"] = ds[v] * day
        ds["_day"] = day
    agg = harmonize(ds, grid=grid, freq=freq, min_coverage=min_coverage, strict=False)
    if day_mean:
        frac = agg["_day"].where(agg["_day"] > 0)
        for v in ("tair", "vpd"):
            if v in agg:
                agg[v] = (agg[f"_{v}_day"] / frac).assign_attrs(attrs_for(v))
        agg = agg.drop_vars([v for v in agg.data_vars if str(v).startswith("_")])
    agg.attrs.update({"source": "ERA5", "n_files": len(urls),
                      "tair_vpd_mean": "daylight hours (ssrd > 0)" if day_mean else "24 h"})
    return agg


def _modis_file(ds: xr.Dataset, name: str, *,
                fields: dict[str, tuple[str, float, str]]) -> xr.Dataset:
    """One MODIS file's fields as canonical ``fapar``/``lai``, fill codes NaN, checked lazily."""
    present = [f for f in fields if f in ds]
    if not present:
        raise NotFoundError(f"MODIS file {name} has none of {list(fields)}; found "
                            f"{sorted(map(str, ds.data_vars))}.")
    out = {}
    for field in present:
        canon, default_scale, units = fields[field]
        raw = ds[field]
        try:
            scale = float(raw.attrs.get("scale_factor", default_scale))
            offset = float(raw.attrs.get("add_offset", 0.0))
        except (TypeError, ValueError) as err:
            raise UnitError(f"MODIS file {name}: {field} has scale_factor "
                            f"{raw.attrs.get('scale_factor')!r} / add_offset "
                            f"{raw.attrs.get('add_offset')!r}; expected numbers.") from err
        fill = raw.attrs.get("_FillValue")
        bad = raw >= MODIS_FILL_MIN
        if fill is not None:
            bad = bad | (raw == fill)
        val = (raw.astype("float32") * scale + offset).where(~bad)
        val = val.rename(canon).assign_attrs({**attrs_for(canon), "units": units,
                                              "source_variable": field})
        out[canon] = screened(val, canon, where=f"MODIS file {name} variable {field!r}",
                              units=f"counts x scale_factor {scale:g}")
    return xr.Dataset(out, attrs=ds.attrs)


def read_modis(paths: PathsLike, *, grid: GridLike | None = None, freq: str = "8D",
               fields: dict[str, tuple[str, float, str]] | None = None) -> xr.Dataset:
    """Read MODIS-style fAPAR/LAI netCDF (raw integer counts with scale factors).

    Parameters
    ----------
    paths : str, os.PathLike or list
        netCDF files on a lat/lon grid with ``Fpar_500m``/``Lai_500m`` (or ``Fpar``/``Lai``).
    grid : float or xarray.Dataset, optional
        Target resolution [degree] or dataset; None keeps the source grid.
    freq : {"8D", "D", "MS"}
        Output time step.
    fields : dict, optional
        Field -> (canonical name, default scale [1 per count], units); defaults to
        :data:`MODIS_FIELDS`.  A ``scale_factor`` attribute in the file wins over the default.

    Returns
    -------
    xarray.Dataset
        ``fapar`` [1] and/or ``lai`` [m2 m-2]; raw values >= 249 (fill and class codes) are NaN.
    """
    check_freq(freq)
    fields = fields or MODIS_FIELDS
    urls = expand_paths(paths, suffixes=(".nc", ".nc4"), what="MODIS netCDF")
    src = _open_all(urls, "MODIS", functools.partial(_modis_file, fields=fields),
                    mask_and_scale=False)
    if not src.data_vars:
        raise NotFoundError(f"MODIS files {[basename(u) for u in urls][:3]} have none of "
                            f"{list(fields)}.")
    out = {str(n): src[n] for n in src.data_vars}
    ds = harmonize(xr.Dataset(out), grid=grid, freq=freq)
    ds.attrs.update({"source": "MODIS", "n_files": len(urls)})
    return ds
