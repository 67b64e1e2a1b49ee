from __future__ import annotations

import dask
import numpy as np
import pandas as pd
import pytest
from io_fixtures import write_era5, write_modis

from xgpp.io import SW_TO_PPFD, esat_magnus, read_era5, read_modis

TIMES = pd.date_range("2019-01-01", periods=48, freq="h")
LAT = np.array([1.5, 0.5, -0.5, -1.5])  # descending, like ERA5
LON = np.array([0.5, 1.5, 358.5, 359.5])  # 0..360


def _fields():
    shape = (TIMES.size, LAT.size, LON.size)
    hour = TIMES.hour.to_numpy()[:, None, None]
    day = (hour >= 6) & (hour < 18)
    # accumulation ending at hour h covers (h-1, h]: daylight accumulations end at 7..18
    acc_day = ((hour >= 7) & (hour <= 18))
    t2m = np.where(day, 293.15, 283.15) * np.ones(shape)
    return {"t2m": t2m, "d2m": np.full(shape, 278.15), "sp": np.full(shape, 95000.0),
            "ssrd": np.where(acc_day, 360.0 * 3600, 0.0) * np.ones(shape)}


def test_era5_round_trip(tmp_path):
    write_era5(tmp_path / "era5_2019-01.nc", TIMES, LAT, LON, _fields())
    ds = read_era5(tmp_path, freq="D")
    assert isinstance(ds["tair"].data, dask.array.Array)
    assert list(ds.lat.values) == sorted(LAT) and list(ds.lon.values) == [-1.5, -0.5, 0.5, 1.5]
    np.testing.assert_allclose(ds["tair"], 20.0, rtol=1e-5)  # daylight hours only
    np.testing.assert_allclose(ds["vpd"], esat_magnus(20.0) - esat_magnus(5.0), rtol=1e-4)
    np.testing.assert_allclose(ds["patm"], 95000.0)
    np.testing.assert_allclose(ds["ppfd"].isel(time=0), 360.0 * SW_TO_PPFD / 2, rtol=1e-5)
    assert ds["ppfd"].attrs["units"] == "umol m-2 s-1"


def test_era5_coarsen_and_24h(tmp_path):
    write_era5(tmp_path / "era5.nc", TIMES, LAT, LON, _fields())
    ds = read_era5(tmp_path, grid=2.0, freq="D", daytime=False)
    assert ds.sizes["lat"] == 90 and ds.sizes["lon"] == 180
    np.testing.assert_allclose(float(ds["tair"].isel(time=0).sel(lat=1.0, lon=1.0)), 15.0,
                               rtol=1e-5)


def test_era5_missing_units_and_bad_grid(tmp_path):
    write_era5(tmp_path / "era5.nc", TIMES, LAT, LON, _fields(), units={"t2m": ""})
    with pytest.raises(ValueError, match="t2m"):
        read_era5(tmp_path)
    write_era5(tmp_path / "era5.nc", TIMES, LAT, LON, _fields())
    with pytest.raises(ValueError, match=r"grid does not match along 'lat'"):
        read_era5(tmp_path, grid=1.5, freq="D")


def test_modis_scale_and_fill(tmp_path):
    times = pd.DatetimeIndex(["2019-01-01", "2019-01-09"])
    lat, lon = np.array([0.25, 0.75]), np.array([10.25, 10.75])
    fpar = np.full((2, 2, 2), 50, dtype="u1")
    fpar[0, 0, 0] = 250  # class code, not data
    lai = np.full((2, 2, 2), 25, dtype="u1")
    write_modis(tmp_path / "MCD15A2H.nc", times, lat, lon, fpar, lai)
    ds = read_modis(tmp_path, freq="8D")
    assert np.isnan(ds["fapar"].values[0, 0, 0])
    np.testing.assert_allclose(ds["fapar"].values[1], 0.5, rtol=1e-6)
    np.testing.assert_allclose(ds["lai"], 2.5, rtol=1e-6)
    assert ds["lai"].attrs["units"] == "m2 m-2"
