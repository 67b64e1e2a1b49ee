"""Tests for xgpp.catalog on local and in-memory stores (cloud stores: tests/test_cloud.py)."""

from __future__ import annotations

import shutil

import dask
import numpy as np
import pytest
import xarray as xr

import xgpp
from xgpp import catalog as catalog_mod
from xgpp.catalog import (
    PACKAGED_CATALOGS,
    STORES,
    build_catalog,
    catalogs_dir,
    entry_location,
    list_entries,
    open_catalog,
    open_cube,
    write_catalog,
)


def small_cube(seed: int = 0) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    time = np.array(["2019-01-01", "2019-01-09", "2019-01-17", "2019-01-25"], dtype="M8[ns]")
    return xr.Dataset(
        {
            "gpp": (("time", "lat", "lon"), rng.random((4, 3, 5), dtype="f4"),
                    {"units": "gC m-2 d-1", "long_name": "gross primary productivity"}),
            "land_mask": (("lat", "lon"), np.ones((3, 5), "f4"), {"units": "1"}),
        },
        coords={"time": time, "lat": [-10.0, 0.0, 10.0], "lon": np.arange(5) * 10.0},
    ).chunk({"time": 2, "lat": 3, "lon": 5})


def write_cube(ds: xr.Dataset, url: str, **kw) -> None:
    ds.to_zarr(url, mode="w", zarr_format=3, consolidated=False, **kw)


@pytest.fixture
def world(tmp_path):
    """A folder with five small stores and its catalog."""
    root = tmp_path / "world"
    cubes = {name: small_cube(i) for i, name in enumerate(STORES)}
    for name, ds in cubes.items():
        write_cube(ds, str(root / f"{name}.zarr"))
    write_catalog(str(root))
    return root, cubes


def assert_lazy_equal(opened: xr.Dataset, expected: xr.Dataset) -> None:
    for name in expected.data_vars:
        assert dask.is_dask_collection(opened[name].variable._data), f"{name} is not dask-backed"
        assert opened[name].chunks == expected[name].chunks, "chunks differ from the stored ones"
    xr.testing.assert_identical(opened.compute(), expected.compute())


# --------------------------------------------------------------------------- writing and reading


def test_write_catalog_returns_url_and_lists_every_store(world):
    root, _ = world
    assert (root / "catalog.yaml").is_file()
    cat = open_catalog(str(root / "catalog.yaml"))
    assert list_entries(cat) == sorted(STORES)
    assert cat.metadata["xgpp"]["stores"] == list(STORES)


def test_catalog_entries_open_lazily_with_stored_values(world):
    root, cubes = world
    cat = open_catalog(str(root))  # a world folder means folder/catalog.yaml
    for name, expected in cubes.items():
        assert_lazy_equal(open_cube(name, catalog=cat), expected)
    # plain intake works too, without xgpp
    assert_lazy_equal(cat["truth"].read(), cubes["truth"])


def test_catalog_survives_moving_the_folder(world, tmp_path):
    root, cubes = world
    moved = tmp_path / "elsewhere" / "moved-world"
    shutil.move(str(root), str(moved))
    text = (moved / "catalog.yaml").read_text()
    assert str(root) not in text and "{CATALOG_DIR}/drivers.zarr" in text
    ds = open_cube("drivers", catalog=str(moved / "catalog.yaml"))
    assert_lazy_equal(ds, cubes["drivers"])


def test_write_catalog_creates_a_local_folder(tmp_path):
    url = write_catalog(str(tmp_path / "new" / "world"), names=["truth"])
    assert (tmp_path / "new" / "world" / "catalog.yaml").is_file()
    assert url.endswith("new/world/catalog.yaml")


def test_write_catalog_records_extra_metadata(tmp_path):
    url = write_catalog(str(tmp_path), names=["drivers"], extra={"seed": 3, "resolution": 0.5})
    assert url == f"{tmp_path}/catalog.yaml"
    cat = open_catalog(url)
    assert list_entries(cat) == ["drivers"]
    assert cat.metadata["seed"] == 3 and cat.metadata["resolution"] == 0.5


def test_write_catalog_rejects_non_plain_metadata(tmp_path):
    with pytest.raises(OSError, match=r"could not write the catalog .*plain values"):
        write_catalog(str(tmp_path), extra={"bad": object()})


def test_build_catalog_needs_names():
    with pytest.raises(ValueError, match="at least one store name"):
        build_catalog(names=[])


def test_open_cube_by_url_local_and_memory(tmp_path):
    ds = small_cube()
    write_cube(ds, str(tmp_path / "c.zarr"))
    assert_lazy_equal(open_cube(tmp_path / "c.zarr"), ds)
    write_cube(ds, "memory://xgpp-test/c.zarr")
    assert_lazy_equal(xgpp.open_cube("memory://xgpp-test/c.zarr"), ds)


def test_open_cube_reads_consolidated_stores_without_warning(tmp_path):
    import warnings

    ds = small_cube()
    with warnings.catch_warnings():  # zarr warns that v3 consolidation is not in the spec
        warnings.simplefilter("ignore")
        ds.to_zarr(tmp_path / "c.zarr", mode="w", zarr_format=3, consolidated=True)
    assert catalog_mod._probe_zarr(str(tmp_path / "c.zarr"), {}) is True
    assert_lazy_equal(open_cube(str(tmp_path / "c.zarr")), ds)


def test_open_cube_computes_nothing(world):
    root, _ = world
    with dask.config.set(scheduler=_raise_if_computed):
        ds = open_cube("drivers", catalog=str(root))
    assert dask.is_dask_collection(ds["gpp"])


def _raise_if_computed(dsk, keys, **kwargs):  # a dask scheduler that refuses to run
    raise AssertionError("open_cube computed dask tasks; it must stay lazy")


# --------------------------------------------------------------------------- errors


def test_missing_store_names_the_url(tmp_path):
    url = str(tmp_path / "nope.zarr")
    with pytest.raises(FileNotFoundError, match=rf"no Zarr store at {url}"):
        open_cube(url)


def test_unknown_entry_lists_available_entries(world):
    root, _ = world
    with pytest.raises(KeyError, match=r"no entry 'driverz'.*available entries: \['drivers'"):
        open_cube("driverz", catalog=str(root))


def test_entry_whose_store_is_gone_names_entry_url_and_entries(world):
    root, _ = world
    shutil.rmtree(root / "sif_oco2.zarr")
    with pytest.raises(FileNotFoundError, match=r"entry 'sif_oco2' points to .*sif_oco2\.zarr"):
        open_cube("sif_oco2", catalog=str(root))


def test_missing_catalog_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"no catalog at {tmp_path}/catalog.yaml"):
        open_catalog(str(tmp_path))


def test_unknown_catalog_parameter(world):
    with pytest.raises(TypeError, match=r"unknown catalog parameter\(s\) \['XGPP_DAT'\]"):
        open_catalog(XGPP_DAT="/x")


def test_group_check(tmp_path):
    import zarr

    zarr.create_array(str(tmp_path / "a.zarr"), shape=(2,), dtype="f4")
    with pytest.raises(ValueError, match="not a group"):
        open_cube(str(tmp_path / "a.zarr"))


# --------------------------------------------------------------------------- packaged catalogs


def test_packaged_catalogs_match_their_generator(tmp_path):
    """catalogs/*.yaml are generated by code; regenerate with _regenerate_packaged_catalogs()."""
    catalog_mod._regenerate_packaged_catalogs(tmp_path)
    for name in PACKAGED_CATALOGS:
        shipped = (catalogs_dir() / f"{name}.yaml").read_text()
        assert shipped == (tmp_path / f"{name}.yaml").read_text(), f"catalogs/{name}.yaml drifted"


def test_default_catalog_uses_xgpp_data(world, monkeypatch):
    root, cubes = world
    monkeypatch.setenv("XGPP_DATA", str(root))
    cat = xgpp.open_catalog()
    assert list_entries(cat) == sorted(STORES)
    url, options = entry_location(cat, "truth")
    assert url == f"{root}/truth.zarr" and options == {}
    assert_lazy_equal(xgpp.open_cube("truth"), cubes["truth"])
    # an explicit keyword beats the environment
    assert entry_location(open_catalog(XGPP_DATA="/data/w"), "sites")[0] == "/data/w/sites.zarr"


def test_default_catalog_falls_back_to_cwd_xgpp_data(monkeypatch, tmp_path):
    monkeypatch.delenv("XGPP_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    url, _ = entry_location(open_catalog(), "drivers")
    assert url == f"{tmp_path.resolve()}/xgpp-data/drivers.zarr"
    with pytest.raises(FileNotFoundError, match=r"entry 'drivers' points to .*xgpp-data"):
        open_cube("drivers")


def test_s3_template_catalog_resolves_from_environment(monkeypatch):
    monkeypatch.setenv("XGPP_S3_ROOT", "s3://my-bucket/world")
    monkeypatch.setenv("XGPP_S3_ENDPOINT", "http://127.0.0.1:9000")
    monkeypatch.setenv("XGPP_S3_ANON", "true")
    url, options = entry_location(open_catalog("twin_world_s3"), "sif_tropomi")
    assert url == "s3://my-bucket/world/sif_tropomi.zarr"
    assert options == {"anon": True, "endpoint_url": "http://127.0.0.1:9000"}
    monkeypatch.delenv("XGPP_S3_ENDPOINT")
    monkeypatch.delenv("XGPP_S3_ANON")
    # no endpoint: AWS default (the None option is dropped)
    assert entry_location(open_catalog("twin_world_s3"), "drivers")[1] == {"anon": False}


def test_s3_template_rejects_non_boolean_anon(monkeypatch):
    monkeypatch.setenv("XGPP_S3_ANON", "maybe")
    with pytest.raises(ValueError, match=r"XGPP_S3_ANON must be a boolean; got 'maybe'"):
        open_catalog("twin_world_s3")


def test_gcs_template_catalog(monkeypatch):
    monkeypatch.delenv("XGPP_GCS_ROOT", raising=False)
    cat = open_catalog("twin_world_gcs", XGPP_GCS_TOKEN="anon")
    url, options = entry_location(cat, "sites")
    assert url == "gs://xgpp/twin-world/sites.zarr"
    assert options == {"token": "anon"}


# --------------------------------------------------------------------------- installed from a wheel

_FROM_WHEEL = """
import json, os, sys
import xgpp
from xgpp.catalog import catalogs_dir, list_entries
cat = xgpp.open_catalog()
print(json.dumps({"xgpp": xgpp.__file__, "catalogs": str(catalogs_dir()),
                  "entries": list_entries(cat)}))
"""


def test_packaged_catalogs_open_from_an_installed_wheel(tmp_path):
    """A wheel carries the catalogs as package data; open_catalog() reads the installed copy."""
    import json
    import os
    import subprocess
    import sys
    import time
    import zipfile
    from pathlib import Path

    pytest.importorskip("setuptools", reason="the build backend (setuptools) is not installed; "
                        "the wheel cannot be built offline without build isolation")
    repo = Path(xgpp.__file__).resolve().parents[1]
    if not (repo / "pyproject.toml").is_file():
        pytest.skip(f"xgpp is not imported from a source checkout ({repo}): nothing to build")
    # build from a copy of what the build reads, so the checkout gets no build/ folder
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(repo / name, src / name)
    for lic in repo.glob("LICEN[CS]E*"):
        shutil.copy2(lic, src / lic.name)
    shutil.copytree(repo / "xgpp", src / "xgpp",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--no-index", "-q", "-w", str(tmp_path / "dist"), str(src)],
                   check=True, capture_output=True, text=True, timeout=120)
    (wheel,) = (tmp_path / "dist").glob("xgpp-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    assert {f"xgpp/catalogs/{n}.yaml" for n in PACKAGED_CATALOGS} <= names, sorted(names)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                    "--target", str(target), str(wheel)],
                   check=True, capture_output=True, text=True, timeout=120)
    # the installed copy only: no checkout on the path, cwd outside the repository; the
    # environment's editable finder comes after sys.path, so PYTHONPATH wins
    shutil.rmtree(src)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XGPP_DATA")}
    env["PYTHONPATH"] = str(target)
    out = subprocess.run([sys.executable, "-c", _FROM_WHEEL], cwd=work, env=env, check=True,
                         capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - started
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(got["xgpp"]).resolve().is_relative_to(target.resolve()), got
    assert Path(got["catalogs"]).resolve() == (target / "xgpp" / "catalogs").resolve()
    assert got["entries"] == sorted(STORES)
    assert elapsed < 60, f"building and installing the wheel took {elapsed:.1f} s"
