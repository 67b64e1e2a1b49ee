from __future__ import annotations

import dask
import numpy as np
import pytest
import xarray as xr
from io_fixtures import write_troposif_l2b

from xgpp.io import read_tropomi

LAT = np.array([10.1, 10.2, 10.3, -45.2])
LON = np.array([20.1, 20.3, 200.2, -170.1])  # 200.2 is -159.8 after wrapping


def test_l2b_round_trip_binning_cloud_and_lazy(tmp_path):
    write_troposif_l2b(tmp_path / "TROPOSIF_L2B_2019-07-01.nc", "2019-07-01", LAT, LON,
                       [1.0, 3.0, 2.0, 0.5], cloud=[0.1, 0.2, 0.1, 0.9])
    write_troposif_l2b(tmp_path / "TROPOSIF_L2B_2019-07-02.nc", "2019-07-02", LAT, LON,
                       [2.0, np.nan, 2.0, 0.5])
    ds = read_tropomi(tmp_path / "TROPOSIF_L2B_*.nc", grid=1.0, freq="8D",
                      max_cloud_fraction=0.5)
    assert isinstance(ds["sif"].data, dask.array.Array)
    assert ds.time.values[0] == np.datetime64("2019-06-26")  # 8-day step holding 1 July
    cell = ds.sel(lat=10.5, lon=20.5).isel(time=0)
    np.testing.assert_allclose(float(cell["sif"]), (1 + 3 + 2) / 3, rtol=1e-6)
    assert int(cell["sif_count"]) == 3
    assert int(ds.sel(lat=10.5, lon=-159.5)["sif_count"].isel(time=0)) == 2
    far = ds.sel(lat=-45.5, lon=-170.5).isel(time=0)
    assert int(far["sif_count"]) == 1  # the cloudy day-1 sounding is rejected
    assert int(ds["n_soundings_read"].sum()) == 8
    assert int(ds["n_soundings_rejected"].sum()) == 2  # one cloudy, one fill value
    assert ds["sif"].attrs["units"] == "mW m-2 nm-1 sr-1"
    np.testing.assert_allclose(float(cell["nirv"]), 0.2, rtol=1e-6)


def test_l2b_date_from_delta_time_and_grid_dataset(tmp_path):
    write_troposif_l2b(tmp_path / "troposif_granule.nc", "2019-03-05", LAT, LON,
                       [1.0, 1.0, 1.0, 1.0], delta_units="milliseconds")
    target = xr.Dataset(coords={"lat": np.arange(-89.75, 90, 0.5),
                                "lon": np.arange(-179.75, 180, 0.5)})
    ds = read_tropomi(tmp_path, grid=target, freq="D", variable="SIF_743")
    assert ds.time.values[0] == np.datetime64("2019-03-05")
    np.testing.assert_allclose(float(ds["sif"].sel(lat=10.25, lon=20.25)[0]), 0.9, rtol=1e-6)


def test_l2b_missing_units(tmp_path):
    write_troposif_l2b(tmp_path / "TROPOSIF_L2B_2019-07-01.nc", "2019-07-01", LAT, LON,
                       [1.0] * 4, sif_units=None)
    ds = read_tropomi(tmp_path, grid=1.0)
    with pytest.raises(ValueError, match=r"TROPOSIF_L2B_2019-07-01.nc.*SIF_Corr_743.*no 'units'"):
        ds.compute()


def test_l2b_unknown_variable_and_bad_grid(tmp_path):
    write_troposif_l2b(tmp_path / "TROPOSIF_L2B_2019-07-01.nc", "2019-07-01", LAT, LON, [1.0] * 4)
    with pytest.raises(KeyError, match=r"PRODUCT/SIF_999.*PRODUCT/SIF_743"):
        read_tropomi(tmp_path, variable="SIF_999")
    with pytest.raises(ValueError, match="divide 180"):
        read_tropomi(tmp_path, grid=0.7)


def test_l3_gridded_coarsened_count_weighted(tmp_path):
    lat = np.arange(-89.75, 90, 0.5)
    lon = np.arange(-179.75, 180, 0.5)
    sif = np.zeros((1, lat.size, lon.size), dtype="f4")
    n = np.zeros_like(sif, dtype="i4")
    sif[0, 200, 400:402] = [1.0, 4.0]
    n[0, 200, 400:402] = [3, 1]
    ds = xr.Dataset({"SIF_Corr_743": (("time", "lat", "lon"), sif,
                                      {"units": "mW m-2 sr-1 nm-1"}),
                     "n": (("time", "lat", "lon"), n)},
                    coords={"time": np.array(["2019-07-04"], dtype="datetime64[ns]"),
                            "lat": lat, "lon": lon})
    ds.to_netcdf(tmp_path / "TROPOSIF_L3_8day_0.5deg_2019-07-04.nc")
    out = read_tropomi(tmp_path, grid=1.0, freq="8D")
    cell = out.isel(time=0).sel(lat=10.5, lon=20.5)
    np.testing.assert_allclose(float(cell["sif"]), (3 * 1.0 + 4.0) / 4, rtol=1e-6)
    assert int(cell["sif_count"]) == 4


def test_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path.name)):
        read_tropomi(tmp_path)
