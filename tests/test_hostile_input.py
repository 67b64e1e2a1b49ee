"""Corrupt and hostile input (issue 12 item 5): every case is a clear xgpp error or a counted drop.

Real readers on files in the real layouts (tests/io_fixtures.py), and open_cube on a real Zarr
store whose chunk files are overwritten or truncated.  Each refusal must name the file (or
store) and the field; each exclusion must be counted where the docs say.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from io_fixtures import (
    write_era5,
    write_fluxnet,
    write_modis,
    write_oco2_lite,
    write_troposif_l2b,
    write_troposif_l3,
)

from xgpp import open_cube
from xgpp.errors import CorruptChunkError, InputError, UnitError
from xgpp.io import (
    open_source,
    read_era5,
    read_fluxnet,
    read_modis,
    read_oco2_lite,
    read_tropomi,
)

DAYS = pd.date_range("2019-01-01", "2019-01-16", freq="D")
HOURS = pd.date_range("2019-01-01", periods=48, freq="h")
LAT = np.array([1.5, 0.5, -0.5, -1.5])
LON = np.array([0.5, 1.5, 358.5, 359.5])
SHAPE = (HOURS.size, LAT.size, LON.size)
OCO = "oco2_LtSIF_190701_B11012Ar_200101000000s.nc4"
TROPO = "TROPOSIF_L2B_2019-07-01.nc"
S_LAT = np.array([10.1, 11.2, 12.3, -45.2])
S_LON = np.array([20.1, 21.3, 22.2, -170.1])


def _era5_fields(**over):
    hour = HOURS.hour.to_numpy()[:, None, None]
    acc = (hour >= 7) & (hour <= 18)
    fields = {"t2m": np.full(SHAPE, 293.15), "d2m": np.full(SHAPE, 278.15),
              "sp": np.full(SHAPE, 95000.0),
              "ssrd": np.where(acc, 360.0 * 3600, 0.0) * np.ones(SHAPE)}
    return {**fields, **over}


M_LAT, M_LON = np.array([0.25, 0.75]), np.array([10.25, 10.75])


def _modis(path, *, lat=M_LAT, lon=M_LON, fpar=50, scale=None):
    times = pd.DatetimeIndex(["2019-01-01", "2019-01-09"])
    shape = (2, lat.size, lon.size)
    raw = np.full(shape, fpar, dtype="u1") if np.isscalar(fpar) else fpar
    return write_modis(path, times, lat, lon, raw, np.full(shape, 25, dtype="u1"), scale=scale)


def _l3(path, day="2019-07-04", sif=1.0, units="mW m-2 sr-1 nm-1", lat=None):
    lat = np.arange(-1.75, 2, 0.5) if lat is None else lat
    lon = np.arange(10.25, 12, 0.5)
    sif = np.full((1, lat.size, lon.size), sif)
    return write_troposif_l3(path, [day], lat, lon, sif, np.ones_like(sif), sif_units=units)


# --------------------------------------------------------------------------- Zarr chunks


@pytest.fixture
def store(tmp_path):
    ds = xr.Dataset({"gpp": (("time", "lat"), np.arange(12.0).reshape(4, 3),
                             {"units": "gC m-2 d-1"})},
                    coords={"time": pd.date_range("2019-01-01", periods=4, freq="8D"),
                            "lat": [0.5, 1.5, 2.5]}).chunk({"time": 2})
    url = tmp_path / "cube.zarr"
    ds.to_zarr(url, zarr_format=3, consolidated=False)
    return url


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_zarr_chunk_names_store_variable_and_chunk(store, damage):
    chunk = store / "gpp" / "c" / "1" / "0"
    raw = chunk.read_bytes()
    chunk.write_bytes({"garbage": b"\x13\x37" * 40, "truncated": raw[: len(raw) // 2],
                       "empty": b""}[damage])
    ds = open_cube(str(store))  # lazy: nothing read yet
    np.testing.assert_array_equal(ds["gpp"].isel(time=slice(0, 2)).values,
                                  np.arange(6.0).reshape(2, 3))  # other chunks read fine
    with pytest.raises(CorruptChunkError,
                       match=r"cube\.zarr.*variable 'gpp' at time 2:4, lat 0:3 "
                             r"\(Zarr chunk gpp/c/1/0\)"):
        ds["gpp"].compute()


def test_corrupt_zarr_metadata_names_the_store(store):
    (store / "zarr.json").write_bytes(b"{\x00not json")
    with pytest.raises(CorruptChunkError, match=r"cube\.zarr.*zarr\.json"):
        open_cube(str(store))


# --------------------------------------------------------------------------- not netCDF


def _write_reader_file(kind, folder):
    if kind == "era5":
        return write_era5(folder / "era5_2019-01.nc", HOURS, LAT, LON, _era5_fields())
    if kind == "modis":
        return _modis(folder / "MCD15A2H.nc")
    if kind == "oco2":
        return write_oco2_lite(folder / OCO, "2019-07-01", S_LAT, S_LON, [1.0, 2.0, 0.5, 1.5])
    if kind == "tropomi":
        return write_troposif_l2b(folder / TROPO, "2019-07-01", S_LAT, S_LON,
                                  [1.0, 2.0, 0.5, 1.5])
    return _l3(folder / "TROPOSIF_L3_2019-07-04.nc")


READ = {"era5": lambda p: read_era5(p, freq="D"), "modis": read_modis,
        "oco2": lambda p: read_oco2_lite(p, grid=1.0), "tropomi": lambda p: read_tropomi(p, grid=1.0),
        "tropomi_l3": lambda p: read_tropomi(p, grid=0.5),
        "open_source": lambda p: open_source(p, grid=1.0)}


@pytest.mark.parametrize("kind", ["era5", "modis", "oco2", "tropomi", "tropomi_l3", "open_source"])
@pytest.mark.parametrize("damage", ["html", "truncated"])
def test_netcdf_that_is_not_one_names_the_file(tmp_path, kind, damage):
    path = _write_reader_file("oco2" if kind == "open_source" else kind, tmp_path)
    raw = path.read_bytes()
    path.write_bytes(b"<html><body>503 Service Unavailable</body></html>" if damage == "html"
                     else raw[: len(raw) // 2])
    with pytest.raises(CorruptChunkError, match=rf"{path.name}.*netCDF"):
        READ[kind](tmp_path).compute()


# --------------------------------------------------------------------------- CSV garbage


def test_binary_csv_names_the_file(tmp_path):
    path = write_fluxnet(tmp_path, "US-Ha1", DAYS)
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe" * 50)
    with pytest.raises(CorruptChunkError, match=rf"{path.name}.*FLUXNET CSV"):
        read_fluxnet(tmp_path)


def test_garbage_cells_are_dropped_and_counted(tmp_path, caplog):
    path = write_fluxnet(tmp_path, "US-Ha1", DAYS)
    clean = read_fluxnet(tmp_path)
    df = pd.read_csv(path, dtype=str)
    df.loc[[2, 9], "TA_F"] = ["\x07\x1b[0m", "ÿþgarbage"]
    df.loc[4, "GPP_NT_VUT_REF"] = "1.2.3"
    df.to_csv(path, index=False)
    with caplog.at_level(logging.WARNING, logger="xgpp.io"):
        ds = read_fluxnet(tmp_path)
    assert ds["tair"].attrs["n_dropped_unreadable"] == 2
    assert ds["gpp"].attrs["n_dropped_unreadable"] == 1
    assert ds["gpp"].attrs["n_dropped_missing"] == 0
    xr.testing.assert_equal(ds[["tair", "gpp"]], clean[["tair", "gpp"]])  # constant columns
    assert "column TA_F" in caplog.text and "not numbers" in caplog.text


# --------------------------------------------------------------------------- NaN / inf


def test_fluxnet_nan_or_inf_everywhere(tmp_path):
    nan = np.full(DAYS.size, np.nan)
    write_fluxnet(tmp_path, "US-Ha1", DAYS, values={c: nan for c in
                                                    ("TA_F", "VPD_F", "SW_IN_F", "PA_F")})
    ds = read_fluxnet(tmp_path)  # drivers all missing: NaN, counted
    assert np.isnan(ds["tair"]).all() and ds["tair"].attrs["n_dropped_missing"] == DAYS.size
    path = write_fluxnet(tmp_path, "US-Ha1", DAYS)
    df = pd.read_csv(path, dtype=str)
    df["GPP_NT_VUT_REF"] = "inf"
    df["TA_F"] = "-inf"
    df.to_csv(path, index=False)
    with pytest.raises(InputError, match=rf"{path.name}.*US-Ha1.*no valid GPP_NT_VUT_REF"):
        read_fluxnet(tmp_path)


def test_era5_nan_is_missing_inf_is_refused(tmp_path):
    write_era5(tmp_path / "era5.nc", HOURS, LAT, LON,
               _era5_fields(**{v: np.full(SHAPE, np.nan) for v in ("t2m", "d2m", "sp")}))
    ds = read_era5(tmp_path, freq="D").compute()  # NaN = missing: every step fails coverage
    assert all(bool(ds[v].isnull().all()) for v in ("tair", "vpd", "patm"))
    write_era5(tmp_path / "era5.nc", HOURS, LAT, LON, _era5_fields(sp=np.full(SHAPE, np.inf)))
    with pytest.raises(InputError, match=r"era5\.nc variable 'sp'.*outside the physically "
                                         r"possible range.*inf"):
        read_era5(tmp_path, freq="D").compute()


@pytest.mark.parametrize("kind", ["oco2", "tropomi"])
def test_soundings_nan_or_inf_everywhere_are_rejected_and_counted(tmp_path, kind):
    sif = [np.nan, np.inf, -np.inf, np.nan]
    if kind == "oco2":
        write_oco2_lite(tmp_path / OCO, "2019-07-01", S_LAT, S_LON, sif)
    else:
        write_troposif_l2b(tmp_path / TROPO, "2019-07-01", S_LAT, S_LON, sif)
    ds = READ[kind](tmp_path).compute()
    assert int(ds["n_soundings_read"].sum()) == 4 and int(ds["n_soundings_rejected"].sum()) == 4
    assert int(ds["sif_count"].sum()) == 0 and bool(ds["sif"].isnull().all())


def test_modis_all_fill_is_missing_impossible_counts_are_refused(tmp_path):
    ds = read_modis(_modis(tmp_path / "MCD15A2H.nc", fpar=255)).compute()
    assert bool(ds["fapar"].isnull().all()) and float(ds["lai"].max()) == pytest.approx(2.5)
    raw = np.full((2, 2, 2), 50, dtype="u1")
    raw[1, 0, 1] = 180  # 1.8: no fill code, not a possible fAPAR
    _modis(tmp_path / "MCD15A2H.nc", fpar=raw)
    with pytest.raises(InputError, match=r"MCD15A2H\.nc variable 'Fpar_500m'.*fapar has 1 of 8 value.*e\.g\. 1\.8"):
        read_modis(tmp_path).compute()


# --------------------------------------------------------------------------- magnitudes


def test_kelvin_labelled_degc_is_refused_with_the_likely_mistake(tmp_path):
    write_era5(tmp_path / "era5.nc", HOURS, LAT, LON, _era5_fields(), units={"t2m": "degC"})
    with pytest.raises(UnitError, match=r"era5\.nc variable 't2m'.*median 293.*plausible range "
                                        r"-60\.\.55 degC.*kelvin labelled as degrees Celsius"):
        read_era5(tmp_path, freq="D").compute()
    write_fluxnet(tmp_path, "US-Ha1", DAYS, values={"TA_F": np.full(DAYS.size, 288.15)})
    with pytest.raises(UnitError, match=r"US-Ha1.*column TA_F.*kelvin.*15 degC"):
        read_fluxnet(tmp_path)


@pytest.mark.parametrize("kind", ["oco2", "tropomi", "tropomi_l3"])
def test_sif_1000_times_too_large_is_refused(tmp_path, kind):
    if kind == "oco2":  # values in mW m-2 nm-1 sr-1, labelled W m-2 nm-1 sr-1
        path = write_oco2_lite(tmp_path / OCO, "2019-07-01", S_LAT, S_LON, [1.0, 2.0, 0.5, 1.5],
                               sif_units="W m-2 nm-1 sr-1")
        field = "Daily_SIF_740nm"
    elif kind == "tropomi":
        path = write_troposif_l2b(tmp_path / TROPO, "2019-07-01", S_LAT, S_LON,
                                  [1.0, 2.0, 0.5, 1.5], sif_units="W m-2 sr-1 nm-1")
        field = "SIF_Corr_743"
    else:
        path = _l3(tmp_path / "TROPOSIF_L3_2019-07-04.nc", units="W m-2 sr-1 nm-1")
        field = "SIF_Corr_743"
    with pytest.raises(UnitError, match=rf"{path.name}.*{field}.*median 1\d\d\d mW.*1000 times too "
                                        r"large.*mW as W"):
        READ[kind](tmp_path).compute()


def test_other_magnitude_mistakes_name_the_slip(tmp_path):
    write_fluxnet(tmp_path, "US-Ha1", DAYS, values={"PA_F": np.full(DAYS.size, 1000.0)})
    with pytest.raises(UnitError, match=r"column PA_F.*patm.*median 1e\+06 Pa.*hPa labelled "
                                        "as kPa"):
        read_fluxnet(tmp_path)
    _modis(tmp_path / "MCD15A2H.nc", scale={"Fpar_500m": 1.0})
    with pytest.raises(UnitError, match=r"Fpar_500m.*median 50.*percent labelled as a fraction"):
        read_modis(tmp_path).compute()


def test_single_impossible_values_are_dropped_and_counted(tmp_path):
    ta = np.full(DAYS.size, 15.0)
    ta[3] = 500.0
    write_fluxnet(tmp_path, "US-Ha1", DAYS, values={"TA_F": ta})
    ds = read_fluxnet(tmp_path)
    assert ds["tair"].attrs["n_dropped_implausible"] == 1
    np.testing.assert_allclose(ds["tair"], 15.0)
    write_oco2_lite(tmp_path / OCO, "2019-07-01", S_LAT, S_LON, [1.0, 2.0, 1e4, 1.5])
    ds = read_oco2_lite(tmp_path, grid=1.0).compute()
    assert int(ds["n_soundings_rejected"].sum()) == 1 and float(ds["sif"].max()) == 2.0


# --------------------------------------------------------------------------- time stamps


def test_fluxnet_rows_out_of_order_are_sorted_duplicates_refused(tmp_path):
    gpp = np.arange(DAYS.size, dtype=float)
    path = write_fluxnet(tmp_path, "US-Ha1", DAYS, values={"GPP_NT_VUT_REF": gpp})
    clean = read_fluxnet(tmp_path)
    df = pd.read_csv(path, dtype=str)
    df.sample(frac=1.0, random_state=3).to_csv(path, index=False)
    xr.testing.assert_identical(read_fluxnet(tmp_path), clean)
    pd.concat([df, df.iloc[[5]]]).to_csv(path, index=False)
    with pytest.raises(InputError, match=rf"{path.name}.*duplicated timestamp 2019-01-06"):
        read_fluxnet(tmp_path)
    df.loc[7, "TIMESTAMP"] = "2019-13-45"
    df.to_csv(path, index=False)
    with pytest.raises(InputError, match=r"column TIMESTAMP.*row 9 holds '2019-13-45'"):
        read_fluxnet(tmp_path)


def test_era5_times_shuffled_are_sorted_duplicated_refused(tmp_path):
    fields = _era5_fields(t2m=293.15 + np.arange(HOURS.size)[:, None, None] * 0.1
                          * np.ones(SHAPE))
    write_era5(tmp_path / "era5.nc", HOURS, LAT, LON, fields)
    clean = read_era5(tmp_path, freq="D").compute()
    order = np.random.default_rng(1).permutation(HOURS.size)
    write_era5(tmp_path / "era5.nc", HOURS[order], LAT, LON,
               {k: v[order] for k, v in fields.items()})
    xr.testing.assert_allclose(read_era5(tmp_path, freq="D").compute(), clean)
    dup = HOURS.insert(5, HOURS[4])
    write_era5(tmp_path / "era5.nc", dup, LAT, LON,
               {k: np.insert(v, 5, v[4], axis=0) for k, v in fields.items()})
    with pytest.raises(InputError, match=r"era5\.nc: time 2019-01-01 04:00:00 appears 2 times"):
        read_era5(tmp_path, freq="D")


def test_overlapping_files_are_refused_naming_both(tmp_path):
    fields = _era5_fields()
    write_era5(tmp_path / "era5_a.nc", HOURS[:30], LAT, LON, {k: v[:30] for k, v in fields.items()})
    write_era5(tmp_path / "era5_b.nc", HOURS[24:], LAT, LON, {k: v[24:] for k, v in fields.items()})
    with pytest.raises(InputError, match=r"era5_a\.nc and era5_b\.nc both hold time 2019-01-02"):
        read_era5(tmp_path, freq="D")
    _l3(tmp_path / "TROPOSIF_L3_2019-07-04.nc")
    _l3(tmp_path / "TROPOSIF_L3_v2_2019-07-04.nc")
    with pytest.raises(InputError, match=r"TROPOSIF_L3_2019-07-04\.nc and "
                                         r"TROPOSIF_L3_v2_2019-07-04\.nc both hold time"):
        read_tropomi(tmp_path / "TROPOSIF_L3*.nc", grid=0.5)


@pytest.mark.parametrize("kind", ["oco2", "tropomi"])
def test_two_daily_files_of_one_date_are_refused(tmp_path, kind):
    if kind == "oco2":
        names = [OCO, "oco2_LtSIF_190701_B10206r_190901000000s.nc4"]
        for n in names:
            write_oco2_lite(tmp_path / n, "2019-07-01", S_LAT, S_LON, [1.0] * 4)
    else:
        names = [TROPO, "TROPOSIF_L2B_2019-07-01_v2.nc"]
        for n in names:
            write_troposif_l2b(tmp_path / n, "2019-07-01", S_LAT, S_LON, [1.0] * 4)
    first, second = sorted(names)
    with pytest.raises(InputError, match=rf"{first}.*{second}.*both dated 2019-07-01"):
        READ[kind](tmp_path)


# --------------------------------------------------------------------------- grid gaps


def test_coordinate_gaps_are_refused_naming_file_and_coordinate(tmp_path):
    lat = np.array([1.5, 0.5, -1.5, -2.5])  # -0.5 missing
    write_era5(tmp_path / "era5.nc", HOURS, lat, LON, _era5_fields())
    with pytest.raises(InputError, match=r"era5\.nc: coordinate 'lat' is not regularly spaced"
                                         r".*-1\.5 -> 0\.5"):
        read_era5(tmp_path, freq="D")
    (tmp_path / "era5.nc").unlink()
    _modis(tmp_path / "MCD15A2H.nc", lon=np.array([10.25, 10.75, 11.75]))
    with pytest.raises(InputError, match=r"MCD15A2H\.nc: coordinate 'lon' is not regularly"):
        read_modis(tmp_path)
    _l3(tmp_path / "TROPOSIF_L3_2019-07-04.nc", lat=np.array([0.25, 0.75, 1.25, 2.25]))
    with pytest.raises(InputError, match=r"TROPOSIF_L3_2019-07-04\.nc: coordinate 'lat'"):
        read_tropomi(tmp_path / "TROPOSIF_*.nc", grid=0.5)
    write_era5(tmp_path / "era5.nc", HOURS, np.array([0.5, 0.5, -0.5, -1.5]), LON, _era5_fields())
    with pytest.raises(InputError, match=r"era5\.nc: coordinate 'lat' holds 0\.5 twice"):
        read_era5(tmp_path / "era5.nc", freq="D")
