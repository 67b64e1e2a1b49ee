"""Tests for xgpp.io.sources and open_cube/catalogs over folders of real-layout files."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import dask
import fsspec
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from io_fixtures import write_fluxnet, write_oco2_lite, write_sites, write_troposif_l2b

import xgpp
from xgpp.catalog import (
    build_catalog,
    catalog_entry_for_source,
    entry_location,
    open_catalog,
    open_cube,
    write_catalog,
)
from xgpp.io import SOURCES, DataSource, read_fluxnet, read_oco2_lite, read_tropomi
from xgpp.io.sources import detect_source, open_source, register_source

DAYS = pd.date_range("2019-01-01", "2019-01-16", freq="D")
LAT = np.array([10.1, 10.2, 10.3, -45.2])
LON = np.array([20.1, 20.3, 200.2, -170.1])
GRID = {"grid": 1.0, "freq": "8D"}


def fluxnet_folder(folder):
    folder.mkdir(parents=True, exist_ok=True)
    write_fluxnet(folder, "US-Ha1", DAYS, values={"GPP_NT_VUT_REF": np.arange(16.0)})
    write_fluxnet(folder, "DE-Tha", DAYS, network="AMF", product="FLUXNET_SUBSET")
    write_sites(folder / "sites.csv", [("US-Ha1", 42.54, -72.17, "DBF"),
                                       ("DE-Tha", 50.96, 13.57, "ENF")])
    return folder


def tropomi_folder(folder):
    folder.mkdir(parents=True, exist_ok=True)
    for day, sif in (("2019-07-01", [1.0, 3.0, 2.0, 0.5]), ("2019-07-02", [2.0, 1.0, 2.0, 0.5])):
        write_troposif_l2b(folder / f"TROPOSIF_L2B_{day}.nc", day, LAT, LON, sif)
    return folder


def oco2_folder(folder):
    folder.mkdir(parents=True, exist_ok=True)
    write_oco2_lite(folder / "oco2_LtSIF_190701_B11012Ar_200101000000s.nc4", "2019-07-01",
                    LAT, LON, [1.0, 2.0, 9.0, 0.5], quality=[0, 1, 2, 0])
    write_oco2_lite(folder / "oco2_LtSIF_190712_B11012Ar_200101000000s.nc4", "2019-07-12",
                    LAT, LON, [1.5, 2.5, 1.0, 0.5])
    return folder


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """One folder per product, as a user downloads them."""
    root = tmp_path_factory.mktemp("archive")
    return {"fluxnet": fluxnet_folder(root / "fluxnet"), "tropomi": tropomi_folder(root / "tropomi"),
            "oco2": oco2_folder(root / "oco2"), "root": root}


def _raise_if_computed(dsk, keys, **kwargs):  # a dask scheduler that refuses to run
    raise AssertionError("open_cube computed dask tasks; it must stay lazy")


# --------------------------------------------------------------------------- the protocol


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_every_registered_source_satisfies_the_protocol(name, tmp_path):
    source = SOURCES[name]
    assert isinstance(source, DataSource)
    assert source.name == name and source.description
    assert source.matches([]) == []
    files = [str(tmp_path / "README.md"), str(tmp_path / "sites.csv")]
    assert source.matches(files) == []  # nobody claims files that are not theirs


def test_each_source_claims_only_its_files(archive):
    from xgpp.io._paths import expand_paths

    files = expand_paths(archive["root"])
    claimed = {name: s.matches(files) for name, s in SOURCES.items()}
    assert [f.split("/")[-2] for f in claimed["fluxnet"]] == ["fluxnet", "fluxnet"]
    assert len(claimed["tropomi"]) == 2 and len(claimed["oco2"]) == 2
    assert claimed["zarr"] == []


def test_register_source_checks_the_protocol_and_names():
    with pytest.raises(TypeError, match=r"not a data source.*matches\(files\)"):
        register_source(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'fluxnet' is registered already.*replace=True"):
        register_source(SOURCES["fluxnet"])


def test_a_new_source_is_one_registration(tmp_path):
    """Adding a source is writing a class and registering it: detection and format= see it."""

    @dataclass(frozen=True)
    class Toy:
        name: str = "toy"
        description: str = "toy cubes named *.toy"

        def matches(self, files):
            return [f for f in files if f.endswith(".toy")]

        def open(self, paths, *, storage_options=None, **options):
            return xr.Dataset({"n": ((), len(paths))}, attrs=options)

    register_source(Toy())
    try:
        (tmp_path / "a.toy").write_text("")
        (tmp_path / "b.toy").write_text("")
        ds = open_cube(f"{tmp_path}/", reader_options={"unit": "m"})
        assert int(ds["n"]) == 2 and ds.attrs == {"unit": "m"}
    finally:
        del SOURCES["toy"]


# --------------------------------------------------------------------------- opening folders


def test_open_cube_on_a_fluxnet_folder_equals_the_reader(archive):
    sites = str(archive["fluxnet"] / "sites.csv")
    ds = open_cube(str(archive["fluxnet"]), reader_options={"sites": sites})
    assert ds["gpp"].dims == ("site", "time")
    assert sorted(ds.site.values) == ["DE-Tha", "US-Ha1"]
    xr.testing.assert_identical(ds, read_fluxnet(archive["fluxnet"] / "*_FLUXNET*.csv",
                                                 sites=sites))
    daily = open_cube(archive["fluxnet"], reader_options={"sites": sites, "freq": "D",
                                                          "gpp_variable": "GPP_DT_VUT_REF"})
    assert daily.sizes["time"] == 16 and daily["gpp"].attrs["source_variable"] == "GPP_DT_VUT_REF"


def test_open_cube_on_a_tropomi_folder_and_glob_equals_the_reader(archive):
    folder = archive["tropomi"]
    with dask.config.set(scheduler=_raise_if_computed):
        ds = open_cube(str(folder), reader_options=GRID)
    assert ds["sif"].dims == ("time", "lat", "lon") and ds["sif_count"].dims == ds["sif"].dims
    assert dask.is_dask_collection(ds["sif"])
    expected = read_tropomi(folder, **GRID)
    xr.testing.assert_identical(ds.compute(), expected.compute())
    xr.testing.assert_identical(open_cube(f"{folder}/TROPOSIF_*.nc", reader_options=GRID)
                                .compute(), expected.compute())
    assert int(ds["sif_count"].sum()) == 8


def test_open_cube_on_an_oco2_folder_equals_the_reader(archive):
    ds = open_cube(str(archive["oco2"]), reader_options={"grid": 1.0, "freq": "MS"})
    assert ds["sif"].dims == ("time", "lat", "lon")
    expected = read_oco2_lite(archive["oco2"], grid=1.0, freq="MS")
    xr.testing.assert_identical(ds.compute(), expected.compute())
    assert int(ds["sif_count"].sum()) == 7  # one bad-quality sounding left out


def test_open_cube_on_a_remote_fluxnet_folder(archive):
    fs = fsspec.filesystem("memory")
    for path in archive["fluxnet"].iterdir():
        fs.pipe(f"/xgpp-src/fluxnet/{path.name}", path.read_bytes())
    try:
        ds = open_cube("memory://xgpp-src/fluxnet",
                       reader_options={"sites": "memory://xgpp-src/fluxnet/sites.csv"})
        expected = read_fluxnet(archive["fluxnet"] / "*_FLUXNET*.csv",
                                sites=archive["fluxnet"] / "sites.csv")
        xr.testing.assert_identical(ds, expected)
    finally:
        fs.rm("/xgpp-src", recursive=True)


def test_format_overrides_detection(tmp_path):
    write_troposif_l2b(tmp_path / "s5p_sif_2019-07-01.nc", "2019-07-01", LAT, LON, [1.0] * 4)
    with pytest.raises(ValueError, match=r"s5p_sif_2019-07-01\.nc.*format=<name>"):
        open_cube(str(tmp_path))
    ds = open_cube(str(tmp_path), format="tropomi", reader_options=GRID)
    xr.testing.assert_identical(ds.compute(), read_tropomi(tmp_path, **GRID).compute())
    with pytest.raises(ValueError, match=r"unknown format 'tropomi_l3'.*'fluxnet'"):
        open_cube(str(tmp_path), format="tropomi_l3")


def test_zarr_stores_still_open_by_url_and_without_suffix(tmp_path):
    ds = xr.Dataset({"gpp": (("time",), np.arange(3.0))}).chunk({"time": 2})
    ds.to_zarr(tmp_path / "c.zarr", mode="w", zarr_format=3, consolidated=False)
    shutil.copytree(tmp_path / "c.zarr", tmp_path / "plain")
    for url in (tmp_path / "c.zarr", str(tmp_path / "plain"), f"{tmp_path}/plain/"):
        xr.testing.assert_identical(open_cube(url).compute(), ds.compute())
    assert detect_source(str(tmp_path / "plain"))[0] is SOURCES["zarr"]
    xr.testing.assert_identical(open_cube(tmp_path / "plain", format="zarr").compute(),
                                ds.compute())


# --------------------------------------------------------------------------- errors


def test_unknown_folder_content_names_path_files_and_formats(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "data.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError) as err:
        open_cube(str(tmp_path))
    text = str(err.value)
    assert str(tmp_path) in text and "'data.csv'" in text and "'notes.txt'" in text
    for name in ("fluxnet", "tropomi", "oco2", "zarr", "FLX_US-Ha1_FLUXNET2015"):
        assert name in text


def test_empty_and_missing_folders_are_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"nothing to open at .*empty.*fluxnet"):
        open_cube(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match=r"nothing to open at .*nope.*does not exist"):
        open_cube(str(tmp_path / "nope"))


def test_mixed_folder_is_ambiguous(archive):
    with pytest.raises(ValueError, match=r"several formats \(fluxnet: \[.*FLX_US-Ha1.*"
                                         r"tropomi: .*oco2: .*format= one of"):
        open_cube(str(archive["root"]))


def test_folder_of_zarr_stores_points_at_a_store(tmp_path):
    xr.Dataset({"a": ("x", [1.0])}).to_zarr(tmp_path / "w" / "truth.zarr", zarr_format=3,
                                             consolidated=False)
    with pytest.raises(ValueError, match=r"holds Zarr store\(s\) \['truth.zarr'\].*open_catalog"):
        open_cube(str(tmp_path / "w"))


def test_wrong_options_name_what_the_reader_takes(archive, tmp_path):
    with pytest.raises(TypeError, match=r"read_tropomi, which takes \['grid', 'freq'.*\['gird'\]"):
        open_cube(str(archive["tropomi"]), reader_options={"gird": 1.0})
    with pytest.raises(ValueError, match=r"storage options \['anon'\] cannot be passed"):
        open_cube(str(archive["oco2"]), anon=True)
    xr.Dataset({"a": ("x", [1.0])}).to_zarr(tmp_path / "c.zarr", zarr_format=3,
                                             consolidated=False)
    with pytest.raises(TypeError, match=r"Zarr cube takes no reader options but chunks; got "
                                        r"\[.freq.\]"):
        open_cube(str(tmp_path / "c.zarr"), reader_options={"freq": "D"})
    with pytest.raises(TypeError, match="Zarr cube takes no reader options but chunks"):
        open_source(str(tmp_path / "c.zarr"), grid=1.0)


# --------------------------------------------------------------------------- catalogs


def _sources(**overrides):
    return {
        "flux_sites": catalog_entry_for_source(
            "fluxnet", "{CATALOG_DIR}/fluxnet",
            reader_options={"sites": "{CATALOG_DIR}/fluxnet/sites.csv", **overrides}),
        "tropomi": catalog_entry_for_source("tropomi", "{CATALOG_DIR}/tropomi/TROPOSIF_*.nc",
                                            reader_options=GRID),
        "oco2": catalog_entry_for_source("oco2", "{CATALOG_DIR}/oco2",
                                         description="OCO-2 B11 Lite, July 2019",
                                         reader_options={"grid": 1.0, "freq": "MS"}),
    }


def test_catalog_source_entries_round_trip_through_yaml(archive, tmp_path):
    root = tmp_path / "world"
    shutil.copytree(archive["root"], root)
    url = write_catalog(str(root), names=(), sources=_sources())
    assert "xgpp.io.sources:open_source" in Path(url).read_text()
    moved = tmp_path / "moved"
    shutil.move(root, moved)  # {CATALOG_DIR}: the folder can move
    cat = open_catalog(str(moved))
    assert sorted(cat.entries) == ["flux_sites", "oco2", "tropomi"]
    assert cat.metadata["xgpp"]["sources"] == ["flux_sites", "tropomi", "oco2"]

    flux = open_cube("flux_sites", catalog=cat)  # an entry's location goes to the reader as is
    xr.testing.assert_identical(flux, read_fluxnet(moved / "fluxnet",
                                                   sites=moved / "fluxnet" / "sites.csv"))
    assert float(flux["lat"].sel(site="US-Ha1")) == pytest.approx(42.54)
    trop = open_cube("tropomi", catalog=str(moved / "catalog.yaml"))
    xr.testing.assert_identical(trop.compute(), read_tropomi(moved / "tropomi", **GRID).compute())
    oco = open_cube("oco2", catalog=cat)
    xr.testing.assert_identical(oco.compute(), read_oco2_lite(moved / "oco2", grid=1.0,
                                                              freq="MS").compute())
    assert cat["oco2"].metadata["description"] == "OCO-2 B11 Lite, July 2019"
    # open_cube's reader options update the entry's; intake itself can read the entry too
    assert open_cube("flux_sites", catalog=cat, reader_options={"freq": "D"}).sizes["time"] == 16
    xr.testing.assert_identical(cat["flux_sites"].read(), flux)
    assert entry_location(cat, "oco2") == (f"file://{moved}/oco2", {})


def test_catalog_source_entry_errors(archive, tmp_path):
    with pytest.raises(ValueError, match=r"'zarr' is not a file source.*build_catalog"):
        catalog_entry_for_source("zarr", "{CATALOG_DIR}/x.zarr")
    with pytest.raises(TypeError, match=r"read_oco2_lite, which takes.*\['frq'\]"):
        catalog_entry_for_source("oco2", "x", reader_options={"frq": "D"})
    with pytest.raises(TypeError, match="not an entry made by"):
        build_catalog(names=(), sources={"x": "not an entry"})
    with pytest.raises(ValueError, match="both stores and sources"):
        build_catalog(names=["oco2"], sources=_sources())
    root = tmp_path / "w"
    write_catalog(str(root), names=(), sources=_sources())  # no data next to it
    cat = open_catalog(str(root))
    with pytest.raises(FileNotFoundError, match=r"entry 'oco2' points to .*oco2, which cannot"):
        open_cube("oco2", catalog=cat)
    with pytest.raises(ValueError, match="holds oco2 files; format='tropomi'"):
        open_cube("oco2", catalog=cat, format="tropomi")
    with pytest.raises(KeyError, match=r"no entry 'fluxnet'.*'./name'"):
        xgpp.open_cube("fluxnet", catalog=cat)


def test_chunks_is_for_zarr_cubes_and_a_file_source_says_how_to_rechunk(archive):
    with pytest.raises(TypeError, match=r"unknown reader option\(s\) \['chunks'\].*ds\.chunk"):
        xgpp.open_cube(archive["fluxnet"], chunks={"time": 8})
