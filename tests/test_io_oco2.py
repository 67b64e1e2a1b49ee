from __future__ import annotations

import numpy as np
import pytest
from io_fixtures import write_oco2_lite

from xgpp.io import read_oco2_lite

LAT = np.array([45.2, 45.4, 45.3, 0.1])
LON = np.array([-100.2, -100.4, -100.3, 10.1])
W_TO_MW = 1.0  # 1 W m-2 um-1 sr-1 == 1 mW m-2 nm-1 sr-1


def test_b11_round_trip_quality_filter(tmp_path):
    write_oco2_lite(tmp_path / "oco2_LtSIF_190701_B11012Ar_200101000000s.nc4", "2019-07-01",
                    LAT, LON, [1.0, 2.0, 9.0, 0.5], quality=[0, 1, 2, 0])
    ds = read_oco2_lite(tmp_path, grid=1.0, freq="MS")
    assert ds.attrs["source_variable"] == "Daily_SIF_740nm"
    cell = ds.sel(lat=45.5, lon=-100.5).isel(time=0)
    np.testing.assert_allclose(float(cell["sif"]), 1.5 * W_TO_MW)  # the bad sounding is out
    assert int(cell["sif_count"]) == 2
    assert int(ds["n_soundings_rejected"].sum()) == 1
    assert int(ds["sif_count"].sum()) == 3
    assert np.isnan(float(ds["sif"].sel(lat=-30.5, lon=60.5).isel(time=0)))  # sparse


def test_b8_layout_detected_and_dated_from_time(tmp_path):
    write_oco2_lite(tmp_path / "oco2_sif_lite_b8.nc4", "2015-02-10", LAT, LON,
                    [1.0, 1.0, 1.0, np.nan], version="B8")
    ds = read_oco2_lite(tmp_path, grid=1.0, freq="D")
    assert ds.attrs["source_variable"] == "SIF_757nm"
    assert "none" in ds.attrs["quality_filter"]
    assert ds.time.values[0] == np.datetime64("2015-02-10")
    assert int(ds["sif_count"].sum()) == 3 and int(ds["n_soundings_rejected"].sum()) == 1


def test_no_sif_field_lists_found(tmp_path):
    write_oco2_lite(tmp_path / "oco2_LtSIF_190701_B11012Ar_x.nc4", "2019-07-01", LAT, LON,
                    [1.0] * 4)
    with pytest.raises(KeyError, match=r"SIF_9999nm.*found \[.*Daily_SIF_740nm"):
        read_oco2_lite(tmp_path, sif_variable="SIF_9999nm")


def test_missing_units(tmp_path):
    write_oco2_lite(tmp_path / "oco2_LtSIF_190701_B11012Ar_x.nc4", "2019-07-01", LAT, LON,
                    [1.0] * 4, sif_units=None)
    with pytest.raises(ValueError, match=r"oco2_LtSIF_190701.*Daily_SIF_740nm.*no 'units'"):
        read_oco2_lite(tmp_path).compute()


def test_unknown_units(tmp_path):
    write_oco2_lite(tmp_path / "oco2_LtSIF_190701_B11012Ar_x.nc4", "2019-07-01", LAT, LON,
                    [1.0] * 4, sif_units="photons/s/cm2")
    with pytest.raises(ValueError, match=r"photons/s/cm2.*mW m-2 nm-1 sr-1"):
        read_oco2_lite(tmp_path).compute()
