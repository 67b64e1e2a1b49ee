"""ERA5-style reanalysis drivers and MODIS-style fAPAR/LAI onto the canonical cube.

ERA5 (CDS netCDF): ``t2m``/``d2m`` [K], ``sp`` [Pa], hourly accumulated ``ssrd`` [J m-2] on
``valid_time`` (or ``time``) x ``latitude`` (descending) x ``longitude`` (0..360 or -180..180).
MODIS-style (e.g. MCD15A2H exported to netCDF by AppEEARS): raw integers ``Fpar_500m`` (scale
0.01) and ``Lai_500m`` (scale 0.1) with fill/class codes >= 249.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from xgpp.errors import InputError, NotFoundError, UnitError
from xgpp.io._grid import GridLike
from xgpp.io._nc import open_dataset
from xgpp.io._paths import PathsLike, basename, expand_paths
from xgpp.io._time import check_freq
from xgpp.io._units import normalise
from xgpp.io.fluxnet import SW_TO_PPFD
from xgpp.io.harmonize import _canonical_dims, harmonize
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


def _open_all(urls: list[str], what: str, **kwargs) -> xr.Dataset:
    parts = []
    for url in urls:
        ds = _canonical_dims(open_dataset(url, **kwargs))
        drop = [c for c in ds.coords if c not in ("time", "lat", "lon")]
        parts.append(ds.drop_vars(drop))
    if len(parts) == 1:
        return parts[0]
    try:
        return xr.concat(parts, dim="time", data_vars="all", coords="minimal",
                         join="exact", compat="override").sortby("time")
    except ValueError as err:
        raise InputError(f"{what} files {[basename(u) for u in urls]} do not share one lat/lon "
                         f"grid and variables, so they cannot be stacked in time: {err}") from err


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
    src = _open_all(urls, "ERA5")
    known = ("t2m", "d2m", "sp", "ssrd")
    if not any(v in src for v in known):
        raise NotFoundError(f"ERA5 files {[basename(u) for u in urls][:3]} have none of {list(known)}; "
                       f"found {sorted(map(str, src.data_vars))}.")
    for v in [v for v in known if v in src]:
        if "units" not in src[v].attrs:
            raise UnitError(f"ERA5 variable {v!r} has no 'units' attribute (file "
                             f"{basename(urls[0])}); xgpp converts units from the attribute.")
    out = {}
    if "t2m" in src:
        out["tair"] = normalise(src["t2m"].rename("tair"), "tair", where="ERA5 t2m")
    if "t2m" in src and "d2m" in src:
        td = normalise(src["d2m"].rename("tair"), "tair", where="ERA5 d2m")
        vpd = (esat_magnus(out["tair"]) - esat_magnus(td)).clip(min=0)
        out["vpd"] = vpd.rename("vpd").assign_attrs(attrs_for("vpd"))
    if "sp" in src:
        out["patm"] = normalise(src["sp"].rename("patm"), "patm", where="ERA5 sp")
    if "ssrd" in src:
        units = str(src["ssrd"].attrs["units"]).replace("**", "").replace("^", "")
        if units not in ("J m-2", "J/m2"):
            raise UnitError(f"ERA5 ssrd has units {src['ssrd'].attrs['units']!r}; expected "
                             "'J m**-2' (accumulated energy).")
        t = src["time"].values
        dt = np.diff(t).astype("timedelta64[s]").astype(float)
        if len(t) < 2 or not np.allclose(dt, dt[0]):
            raise InputError("ERA5 ssrd: accumulations need a regular time axis of >= 2 steps "
                             f"(found spacings {sorted(set(dt))[:3]} s).")
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
    src = _open_all(urls, "MODIS", mask_and_scale=False)
    present = [f for f in fields if f in src]
    if not present:
        raise NotFoundError(f"MODIS files {[basename(u) for u in urls][:3]} have none of "
                       f"{list(fields)}; found {sorted(map(str, src.data_vars))}.")
    out = {}
    for field in present:
        name, default_scale, units = fields[field]
        raw = src[field]
        scale = float(raw.attrs.get("scale_factor", default_scale))
        offset = float(raw.attrs.get("add_offset", 0.0))
        fill = raw.attrs.get("_FillValue")
        bad = raw >= MODIS_FILL_MIN
        if fill is not None:
            bad = bad | (raw == fill)
        val = (raw.astype("float32") * scale + offset).where(~bad)
        out[name] = val.rename(name).assign_attrs({**attrs_for(name), "units": units,
                                                   "source_variable": field})
    ds = harmonize(xr.Dataset(out), grid=grid, freq=freq)
    ds.attrs.update({"source": "MODIS", "n_files": len(urls)})
    return ds
