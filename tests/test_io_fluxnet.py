from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
from io_fixtures import write_fluxnet, write_sites

from xgpp.io import SW_TO_PPFD, parse_fluxnet_name, read_fluxnet

DAYS = pd.date_range("2019-01-01", "2019-01-16", freq="D")  # two MODIS 8-day steps


@pytest.fixture
def sites(tmp_path):
    return write_sites(tmp_path / "sites.csv", [("US-Ha1", 42.54, -72.17, "DBF"),
                                                ("DE-Tha", 50.96, 13.57, "ENF")])


def test_dd_round_trip_units_and_coords(tmp_path, sites):
    gpp = np.arange(16, dtype=float)
    write_fluxnet(tmp_path, "US-Ha1", DAYS, values={"GPP_NT_VUT_REF": gpp})
    ds = read_fluxnet(tmp_path / "*.csv", sites=sites)
    assert ds["gpp"].dims == ("site", "time")
    assert list(ds.time.values) == list(pd.to_datetime(["2019-01-01", "2019-01-09"]))
    np.testing.assert_allclose(ds["gpp"].sel(site="US-Ha1"), [gpp[:8].mean(), gpp[8:].mean()])
    np.testing.assert_allclose(ds["vpd"], 1000.0)  # 10 hPa
    np.testing.assert_allclose(ds["patm"], 100000.0)  # 100 kPa
    np.testing.assert_allclose(ds["ppfd"], 200.0 * SW_TO_PPFD)
    np.testing.assert_allclose(ds["tair"], 15.0)
    np.testing.assert_allclose(ds["co2"], 400.0)
    assert ds["gpp"].attrs["units"] == "gC m-2 d-1"
    assert ds["gpp"].attrs["source_variable"] == "GPP_NT_VUT_REF"
    assert ds["vpd"].attrs["units"] == "Pa" and "long_name" in ds["vpd"].attrs
    assert ds["igbp"].values.tolist() == ["DBF"] and ds["igbp"].dtype.kind == "U"
    assert float(ds["lat"][0]) == pytest.approx(42.54)
    assert json.loads(ds.attrs["missing_driver_columns"]) == {}
    assert ds["co2"].attrs["n_values_missing_column"] == 0


def test_gpp_variable_choice_and_dt(tmp_path, sites):
    write_fluxnet(tmp_path, "US-Ha1", DAYS)
    ds = read_fluxnet(tmp_path, sites=sites, gpp_variable="GPP_DT_VUT_REF", drivers=())
    np.testing.assert_allclose(ds["gpp"], 4.0)
    assert list(ds.data_vars) == ["gpp"]


def test_hh_units_qc_and_daily(tmp_path, sites):
    times = pd.date_range("2019-07-01", periods=96, freq="30min")
    qc = np.zeros(96)
    qc[:10] = 2  # medium gap-fill: dropped with the default threshold 1
    gpp = np.full(96, 10.0)
    gpp[:10] = 1000.0
    write_fluxnet(tmp_path, "DE-Tha", times, res="HH", product="FLUXNET_FULLSET",
                  values={"GPP_NT_VUT_REF": gpp, "NEE_VUT_REF_QC": qc})
    ds = read_fluxnet(tmp_path, sites=sites, freq="D")
    np.testing.assert_allclose(ds["gpp"], 10.0 * 12.011e-6 * 86400)
    assert ds["gpp"].attrs["n_dropped_qc"] == 10
    assert ds["gpp"].attrs["n_values_read"] == 96


def test_coverage_rule_and_missing_counts(tmp_path, sites):
    gpp = np.full(16, 3.0)
    gpp[:5] = np.nan  # only 3 of 8 days valid in the first step
    write_fluxnet(tmp_path, "US-Ha1", DAYS, values={"GPP_NT_VUT_REF": gpp})
    ds = read_fluxnet(tmp_path, sites=sites, min_coverage=0.5)
    assert np.isnan(ds["gpp"].values[0, 0]) and ds["gpp"].values[0, 1] == 3.0
    assert ds["gpp"].attrs["n_dropped_missing"] == 5
    assert ds["gpp"].attrs["n_steps_dropped_coverage"] == 1


def test_dd_qc_fraction(tmp_path, sites):
    qc = np.ones(16)
    qc[8:] = 0.2
    write_fluxnet(tmp_path, "US-Ha1", DAYS, values={"NEE_VUT_REF_QC": qc})
    ds = read_fluxnet(tmp_path, sites=sites, qc_threshold=0.5)
    assert np.isnan(ds["gpp"].values[0, 1]) and ds["gpp"].attrs["n_dropped_qc"] == 8


def test_folder_of_sites_monthly_and_names(tmp_path, sites):
    write_fluxnet(tmp_path, "US-Ha1", DAYS, network="AMF", product="FLUXNET_SUBSET")
    months = pd.date_range("2019-01-01", periods=3, freq="MS")
    write_fluxnet(tmp_path, "DE-Tha", months, res="MM")
    ds = read_fluxnet(tmp_path, sites=sites, freq="MS")
    assert ds.sizes == {"site": 2, "time": 3}
    assert sorted(ds.site.values) == ["DE-Tha", "US-Ha1"]
    assert parse_fluxnet_name("FLX_US-Ha1_FLUXNET2015_FULLSET_DD_1991-2012_1-4.csv").site == "US-Ha1"
    assert parse_fluxnet_name("AMF_US-Ha1_FLUXNET_SUBSET_HH_1991-2020_3-5.csv").res == "HH"


def test_dd_file_without_co2_column_gives_nan_co2_and_records_it(tmp_path, sites, caplog):
    gpp = np.arange(16, dtype=float)
    path = write_fluxnet(tmp_path, "US-Ha1", DAYS, values={"GPP_NT_VUT_REF": gpp},
                         drop=("CO2_F_MDS",))
    with caplog.at_level(logging.WARNING, logger="xgpp.io"):
        ds = read_fluxnet(tmp_path, sites=sites)
    assert ds["co2"].isnull().all()
    np.testing.assert_allclose(ds["gpp"].sel(site="US-Ha1"), [gpp[:8].mean(), gpp[8:].mean()])
    np.testing.assert_allclose(ds["tair"], 15.0)  # the other drivers are read as usual
    np.testing.assert_allclose(ds["patm"], 100000.0)
    assert ds["co2"].attrs["units"] == "ppm"
    assert json.loads(ds.attrs["missing_driver_columns"]) == {
        "US-Ha1": {"co2": {"column": "CO2_F_MDS", "file": path.name, "n_values": 16}}}
    assert ds["co2"].attrs["n_values_missing_column"] == 16
    assert ds["co2"].attrs["sites_missing_column"] == "US-Ha1"
    assert ds["tair"].attrs["n_values_missing_column"] == 0
    hits = [r.getMessage() for r in caplog.records if "CO2_F_MDS" in r.getMessage()]
    assert hits and "US-Ha1" in hits[0] and path.name in hits[0], caplog.text


def test_folder_where_one_site_lacks_pa_f_reads_both(tmp_path, sites, caplog):
    write_fluxnet(tmp_path, "US-Ha1", pd.date_range("2019-07-01", periods=2, freq="D"))
    hh = write_fluxnet(tmp_path, "DE-Tha", pd.date_range("2019-07-01", periods=96, freq="30min"),
                       res="HH", drop=("PA_F",))
    with caplog.at_level(logging.WARNING, logger="xgpp.io"):
        ds = read_fluxnet(tmp_path, sites=sites, freq="D")
    assert sorted(ds.site.values) == ["DE-Tha", "US-Ha1"]
    assert ds["patm"].sel(site="DE-Tha").isnull().all()
    np.testing.assert_allclose(ds["patm"].sel(site="US-Ha1"), 100000.0)
    np.testing.assert_allclose(ds["gpp"].sel(site="US-Ha1"), 5.0)
    np.testing.assert_allclose(ds["gpp"].sel(site="DE-Tha"), 5.0 * 12.011e-6 * 86400)
    np.testing.assert_allclose(ds["co2"], 400.0)
    missing = json.loads(ds.attrs["missing_driver_columns"])
    assert missing == {"DE-Tha": {"patm": {"column": "PA_F", "file": hh.name, "n_values": 96}}}
    assert ds["patm"].attrs["sites_missing_column"] == "DE-Tha"
    assert any("DE-Tha" in r.getMessage() and "PA_F" in r.getMessage() and hh.name in r.getMessage()
               for r in caplog.records), caplog.text


def test_file_without_any_gpp_column_is_a_clear_error(tmp_path, sites):
    path = write_fluxnet(tmp_path, "US-Ha1", DAYS, drop=("GPP_NT_VUT_REF", "GPP_DT_VUT_REF"))
    with pytest.raises(KeyError, match=r"no GPP column 'GPP_NT_VUT_REF'.*GPP columns found: "
                                       r"none.*columns found: .*CO2_F_MDS") as err:
        read_fluxnet(tmp_path, sites=sites)
    assert path.name in str(err.value) and "US-Ha1" in str(err.value)


def test_other_gpp_column_is_suggested(tmp_path, sites):
    write_fluxnet(tmp_path, "US-Ha1", DAYS, drop=("GPP_NT_VUT_REF",))
    with pytest.raises(KeyError, match=r"GPP columns found: \['GPP_DT_VUT_REF'\]"):
        read_fluxnet(tmp_path, sites=sites)


def test_missing_qc_column_names_file_and_lists_found(tmp_path, sites):
    path = write_fluxnet(tmp_path, "US-Ha1", DAYS, drop=("NEE_VUT_REF_QC",))
    with pytest.raises(KeyError, match=r"NEE_VUT_REF_QC.*columns found.*TA_F") as err:
        read_fluxnet(tmp_path, sites=sites)
    assert path.name in str(err.value)


def test_all_missing_file_names_site(tmp_path, sites):
    write_fluxnet(tmp_path, "US-Ha1", DAYS, values={"GPP_NT_VUT_REF": np.full(16, np.nan)})
    with pytest.raises(ValueError, match=r"US-Ha1.*no valid GPP_NT_VUT_REF"):
        read_fluxnet(tmp_path, sites=sites)


def test_site_missing_from_table(tmp_path, sites):
    write_fluxnet(tmp_path, "FI-Hyy", DAYS)
    with pytest.raises(KeyError, match="FI-Hyy"):
        read_fluxnet(tmp_path, sites=sites)


def test_duplicated_timestamp(tmp_path, sites):
    dup = DAYS.append(DAYS[3:4])
    write_fluxnet(tmp_path, "US-Ha1", dup)
    with pytest.raises(ValueError, match=r"duplicated timestamp 2019-01-04"):
        read_fluxnet(tmp_path, sites=sites)


def test_empty_glob_and_unreachable_url(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing\*\.csv|nothing"):
        read_fluxnet(tmp_path / "nothing*.csv")
    with pytest.raises(OSError, match=r"127\.0\.0\.1:9"):
        read_fluxnet("http://127.0.0.1:9/FLX_US-Ha1_FLUXNET2015_FULLSET_DD_1991-2012_1-4.csv")


def test_bad_file_name_and_ww_to_8d(tmp_path):
    (tmp_path / "gpp.csv").write_text("TIMESTAMP,GPP_NT_VUT_REF\n20190101,1\n")
    with pytest.raises(ValueError, match=r"'gpp.csv' is not a FLUXNET file name"):
        read_fluxnet(tmp_path / "gpp.csv")
    weeks = pd.date_range("2019-01-01", periods=4, freq="7D")
    write_fluxnet(tmp_path, "US-Ha1", weeks, res="WW")
    with pytest.raises(ValueError, match="never disaggregates"):
        read_fluxnet(tmp_path / "FLX_*.csv", freq="8D")
