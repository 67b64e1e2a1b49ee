"""Write small fixture files in the exact layouts of the real products (used by test_io_*)."""

from __future__ import annotations

from pathlib import Path

import netCDF4
import numpy as np
import pandas as pd

FLUX_COLS = ["TA_F", "VPD_F", "SW_IN_F", "PA_F", "CO2_F_MDS", "NEE_VUT_REF_QC",
             "GPP_NT_VUT_REF", "GPP_DT_VUT_REF"]


def write_fluxnet(folder: Path, site: str, times: pd.DatetimeIndex, *, res: str = "DD",
                  values: dict[str, np.ndarray] | None = None, network: str = "FLX",
                  product: str = "FLUXNET2015_FULLSET", drop: tuple[str, ...] = ()) -> Path:
    """A FLUXNET2015/ONEFlux CSV with -9999 as missing; ``values`` override column defaults."""
    n = len(times)
    cols = {"TA_F": np.full(n, 15.0), "VPD_F": np.full(n, 10.0), "SW_IN_F": np.full(n, 200.0),
            "PA_F": np.full(n, 100.0), "CO2_F_MDS": np.full(n, 400.0),
            "NEE_VUT_REF_QC": np.zeros(n) if res in ("HH", "HR") else np.ones(n),
            "GPP_NT_VUT_REF": np.full(n, 5.0), "GPP_DT_VUT_REF": np.full(n, 4.0)}
    cols.update(values or {})
    if res in ("HH", "HR"):
        step = pd.Timedelta(minutes=30 if res == "HH" else 60)
        ts = {"TIMESTAMP_START": times.strftime("%Y%m%d%H%M"),
              "TIMESTAMP_END": (times + step).strftime("%Y%m%d%H%M")}
    elif res == "WW":
        ts = {"TIMESTAMP_START": times.strftime("%Y%m%d"),
              "TIMESTAMP_END": (times + pd.Timedelta(days=6)).strftime("%Y%m%d")}
    elif res == "MM":
        ts = {"TIMESTAMP": times.strftime("%Y%m")}
    else:
        ts = {"TIMESTAMP": times.strftime("%Y%m%d")}
    df = pd.DataFrame({**ts, **{k: np.where(np.isnan(v), -9999, v) for k, v in cols.items()}})
    df = df.drop(columns=list(drop))
    y0, y1 = times[0].year, times[-1].year
    path = Path(folder) / f"{network}_{site}_{product}_{res}_{y0}-{y1}_1-4.csv"
    df.to_csv(path, index=False)
    return path


def write_sites(path: Path, rows: list[tuple[str, float, float, str]]) -> Path:
    pd.DataFrame(rows, columns=["SITE_ID", "LOCATION_LAT", "LOCATION_LONG", "IGBP"]).to_csv(
        path, index=False)
    return path


def write_troposif_l2b(path: Path, day: str, lat, lon, sif, *, cloud=None, nirv=None,
                       sif_units: str | None = "mW m-2 sr-1 nm-1",
                       delta_units: str = "milliseconds since {day} 00:00:00") -> Path:
    """TROPOSIF L2B daily file: soundings on dimension ``n_elem`` in group PRODUCT."""
    n = len(lat)
    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension("time", 1)
        t = nc.createVariable("time", "i4", ("time",))
        t.units = "seconds since 2010-01-01 00:00:00"
        t[:] = int((pd.Timestamp(day) - pd.Timestamp("2010-01-01")).total_seconds())
        p = nc.createGroup("PRODUCT")
        p.createDimension("n_elem", n)
        for name, vals in (("latitude", lat), ("longitude", lon)):
            v = p.createVariable(name, "f4", ("n_elem",))
            v[:] = vals
        for name in ("SIF_743", "SIF_Corr_743", "SIF_ERROR_743"):
            v = p.createVariable(name, "f4", ("n_elem",), fill_value=np.float32(9.96921e36))
            if sif_units is not None:
                v.units = sif_units
            v[:] = np.ma.masked_invalid(np.asarray(sif, dtype="f4") * (0.9 if name == "SIF_743"
                                                                      else 1.0))
        v = p.createVariable("NIRv", "f4", ("n_elem",))
        v[:] = np.full(n, 0.2) if nirv is None else nirv
        d = p.createVariable("delta_time", "f8", ("n_elem",))
        d.units = delta_units.format(day=day)
        d[:] = np.linspace(3.6e6, 8.64e7 - 3.6e6, n)
        inp = p.createGroup("SUPPORT_DATA").createGroup("INPUT_DATA")
        c = inp.createVariable("cloud_fraction_L2", "f4", ("n_elem",))
        c[:] = np.zeros(n) if cloud is None else cloud
    return path


def write_oco2_lite(path: Path, day: str, lat, lon, sif, *, quality=None, version: str = "B11",
                    sif_units: str | None = "W/m^2/sr/µm") -> Path:
    """OCO-2 SIF Lite file: B10/B11 (root Latitude, Daily_SIF_740nm, Quality_Flag, groups
    Science/Metadata) or B8 (lower-case latitude/longitude/time, SIF_757nm)."""
    n = len(lat)
    t = pd.Timestamp(day) + pd.Timedelta(hours=12)
    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension("sounding_dim", n)

        def var(name, dtype, vals, units=None, group=nc, fill=None):
            v = group.createVariable(name, dtype, ("sounding_dim",), fill_value=fill)
            if units is not None:
                v.units = units
            v[:] = vals

        if version == "B8":
            var("latitude", "f4", lat, "degrees_north")
            var("longitude", "f4", lon, "degrees_east")
            var("time", "f8", np.full(n, (t - pd.Timestamp("1970-01-01")).total_seconds()),
                "seconds since 1970-01-01 00:00:00")
            var("SIF_757nm", "f4", np.ma.masked_invalid(sif), sif_units, fill=-999999.0)
            var("SIF_771nm", "f4", np.ma.masked_invalid(sif), sif_units, fill=-999999.0)
            return path
        var("Latitude", "f4", lat, "degrees_north")
        var("Longitude", "f4", lon, "degrees_east")
        var("Delta_Time", "f8", np.full(n, (t - pd.Timestamp("1990-01-01")).total_seconds()),
            "seconds since 1990-01-01 00:00:00")
        var("Daily_SIF_740nm", "f4", np.ma.masked_invalid(sif), sif_units, fill=-999999.0)
        var("Daily_SIF_757nm", "f4", np.ma.masked_invalid(np.asarray(sif) / 1.5), sif_units,
            fill=-999999.0)
        var("Quality_Flag", "i1", np.zeros(n) if quality is None else quality)
        var("IGBP_index", "u1", np.full(n, 4), group=nc.createGroup("Science"))
        var("MeasurementMode", "i1", np.zeros(n), group=nc.createGroup("Metadata"))
    return path


def write_era5(path: Path, times: pd.DatetimeIndex, lat_desc: np.ndarray, lon_360: np.ndarray,
               fields: dict[str, np.ndarray], units: dict[str, str] | None = None) -> Path:
    """ERA5 CDS netCDF: valid_time (seconds since 1970), latitude descending, longitude 0..360."""
    units = {"t2m": "K", "d2m": "K", "sp": "Pa", "ssrd": "J m**-2", **(units or {})}
    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension("valid_time", len(times))
        nc.createDimension("latitude", len(lat_desc))
        nc.createDimension("longitude", len(lon_360))
        vt = nc.createVariable("valid_time", "i8", ("valid_time",))
        vt.units = "seconds since 1970-01-01"
        vt.calendar = "proleptic_gregorian"
        vt[:] = ((times - pd.Timestamp("1970-01-01")) // pd.Timedelta(seconds=1)).to_numpy()
        la = nc.createVariable("latitude", "f8", ("latitude",))
        la.units = "degrees_north"
        la[:] = lat_desc
        lo = nc.createVariable("longitude", "f8", ("longitude",))
        lo.units = "degrees_east"
        lo[:] = lon_360
        for name, vals in fields.items():
            v = nc.createVariable(name, "f4", ("valid_time", "latitude", "longitude"))
            if units.get(name):
                v.units = units[name]
            v[:] = vals
    return path


def write_modis(path: Path, times: pd.DatetimeIndex, lat: np.ndarray, lon: np.ndarray,
                fpar_raw: np.ndarray, lai_raw: np.ndarray,
                scale: dict[str, float] | None = None) -> Path:
    """MODIS MCD15A2H-style netCDF (AppEEARS): uint8 counts, scale_factor, _FillValue 255.

    ``scale`` overrides the ``scale_factor`` attribute of ``Fpar_500m``/``Lai_500m``.
    """
    scale = {"Fpar_500m": 0.01, "Lai_500m": 0.1, **(scale or {})}
    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension("time", len(times))
        nc.createDimension("lat", len(lat))
        nc.createDimension("lon", len(lon))
        t = nc.createVariable("time", "f8", ("time",))
        t.units = "days since 2000-01-01"
        t[:] = (times - pd.Timestamp("2000-01-01")).days.to_numpy()
        nc.createVariable("lat", "f8", ("lat",))[:] = lat
        nc.createVariable("lon", "f8", ("lon",))[:] = lon
        for name, raw in (("Fpar_500m", fpar_raw), ("Lai_500m", lai_raw)):
            v = nc.createVariable(name, "u1", ("time", "lat", "lon"), fill_value=np.uint8(255))
            v.set_auto_maskandscale(False)
            v.scale_factor = scale[name]
            v.add_offset = 0.0
            v[:] = raw
    return path


def write_troposif_l3(path: Path, times, lat: np.ndarray, lon: np.ndarray, sif: np.ndarray,
                      count: np.ndarray | None = None,
                      sif_units: str | None = "mW m-2 sr-1 nm-1") -> Path:
    """Gridded TROPOSIF-style L3 netCDF: ``SIF_Corr_743`` and ``n`` on (time, lat, lon)."""
    attrs = {"units": sif_units} if sif_units is not None else {}
    data = {"SIF_Corr_743": (("time", "lat", "lon"), np.asarray(sif, dtype="f4"), attrs)}
    if count is not None:
        data["n"] = (("time", "lat", "lon"), np.asarray(count, dtype="i4"))
    import xarray as xr

    xr.Dataset(data, coords={"time": pd.DatetimeIndex(times).values, "lat": lat,
                             "lon": lon}).to_netcdf(path)
    return path
