from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from xgpp.io import harmonize


def _cube(lat, lon, times, values=1.0, units="K", name="tair"):
    data = np.full((len(times), len(lat), len(lon)), values, dtype=float)
    return xr.Dataset({name: (("time", "latitude", "longitude"), data, {"units": units})},
                      coords={"time": times, "latitude": lat, "longitude": lon})


def test_flip_roll_units_and_8d_steps():
    times = pd.date_range("2019-12-20", "2020-01-10", freq="D")
    ds = _cube(np.array([0.5, -0.5]), np.array([90.5, 270.5]), times, 293.15)
    out = harmonize(ds, freq="8D")
    assert list(out.lat.values) == [-0.5, 0.5] and list(out.lon.values) == [-89.5, 90.5]
    assert out.time.values.tolist() == pd.to_datetime(
        ["2019-12-19", "2019-12-27", "2020-01-01", "2020-01-09"]).values.tolist()
    np.testing.assert_allclose(out["tair"], 20.0)
    assert out["tair"].attrs["units"] == "degC"


def test_coverage_and_area_weighted_coarsening():
    lat = np.arange(-89.5, 90, 1.0)
    lon = np.arange(-179.5, 180, 1.0)
    times = pd.date_range("2019-01-01", periods=8, freq="D")
    ds = _cube(lat, lon, times, 10.0, "degC").chunk({"time": 4})
    ds["tair"][:, 178, 0] = 20.0  # lat 88.5: tiny cos weight
    ds["tair"][:6, 0, 0] = np.nan
    out = harmonize(ds, grid=2.0, freq="8D", min_coverage=0.5, keep_counts=True)
    w = np.cos(np.deg2rad([88.5, 89.5]))
    expected = (20 * w[0] + 10 * w[0] + 20 * w[1]) / (2 * w.sum())
    np.testing.assert_allclose(float(out["tair"][0, -1, 0]), expected)
    assert "tair_count" in out and out["tair"].dims == ("time", "lat", "lon")
    single = harmonize(ds.isel(latitude=[0, 1], longitude=[0, 1]), min_coverage=0.5, freq="8D")
    assert np.isnan(float(single["tair"][0, 0, 0]))  # 2 of 8 days valid


def test_like_sets_grid_and_time():
    lat = np.arange(-89.75, 90, 0.5)
    lon = np.arange(-179.75, 180, 0.5)
    times = pd.date_range("2019-01-01", periods=20, freq="D")
    ds = _cube(lat, lon, times, 3.0, "hPa", "vpd")
    like = xr.Dataset(coords={"time": pd.DatetimeIndex(["2019-01-01", "2019-01-09",
                                                        "2019-01-17", "2019-01-25"]),
                              "lat": np.arange(-89.5, 90, 1.0), "lon": np.arange(-179.5, 180, 1.0)})
    out = harmonize(ds, like=like)
    assert out.sizes == {"time": 4, "lat": 180, "lon": 360}
    np.testing.assert_allclose(out["vpd"].isel(time=0), 300.0)
    assert np.isnan(out["vpd"].isel(time=3)).all()


def test_errors_teach():
    times = pd.date_range("2019-01-01", periods=3, freq="D")
    lat, lon = np.array([0.5, 1.5]), np.array([0.5, 1.5])
    no_units = _cube(lat, lon, times)
    del no_units["tair"].attrs["units"]
    with pytest.raises(ValueError, match=r"'tair' has no 'units'.*expected 'degC'"):
        harmonize(no_units, freq="D")
    with pytest.raises(ValueError, match=r"units 'furlongs'"):
        harmonize(_cube(lat, lon, times, units="furlongs"))
    with pytest.raises(ValueError, match=r"grid does not match along 'lat'"):
        harmonize(_cube(lat, lon, times), grid=1.5)
    with pytest.raises(ValueError, match=r"duplicated time stamp 2019-01-02"):
        harmonize(_cube(lat, lon, pd.DatetimeIndex(["2019-01-01", "2019-01-02", "2019-01-02"])),
                  freq="8D")
    with pytest.raises(ValueError, match=r"not one of xgpp's canonical variables"):
        harmonize(_cube(lat, lon, times, name="t2m"))
    with pytest.raises(ValueError, match=r"no 'lat' dimension"):
        harmonize(xr.Dataset({"tair": ("x", [1.0], {"units": "K"})}))
    with pytest.raises(ValueError, match="never disaggregates"):
        harmonize(_cube(lat, lon, pd.date_range("2019-01-01", periods=3, freq="MS")), freq="D")
