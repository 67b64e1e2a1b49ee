"""Cloud round trips against a real S3 server (moto) on loopback: catalogs and cubes on s3://."""

from __future__ import annotations

import dask
import numpy as np
import pytest
import xarray as xr

import xgpp
from xgpp.catalog import entry_location, list_entries, open_catalog, open_cube, write_catalog


def small_cube(seed: int = 0) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    return xr.Dataset(
        {"sif": (("time", "lat", "lon"), rng.random((4, 2, 3), dtype="f4"),
                 {"units": "mW m-2 nm-1 sr-1"})},
        coords={"time": np.arange(4), "lat": [0.5, 1.5], "lon": [0.5, 1.5, 2.5]},
    ).chunk({"time": 2})


def assert_lazy_equal(opened: xr.Dataset, expected: xr.Dataset) -> None:
    for name in expected.data_vars:
        assert dask.is_dask_collection(opened[name].variable._data), f"{name} is not dask-backed"
    xr.testing.assert_identical(opened.compute(), expected.compute())


def test_cube_and_catalog_round_trip_on_s3(s3_bucket):
    bucket, options = s3_bucket
    root = f"{bucket}/world"
    cubes = {"sif_tropomi": small_cube(1), "sif_oco2": small_cube(2)}
    for name, ds in cubes.items():
        ds.to_zarr(f"{root}/{name}.zarr", mode="w", zarr_format=3, consolidated=False,
                   storage_options=options)
    url = write_catalog(root, names=list(cubes), storage_options=options)
    assert url == f"{root}/catalog.yaml"

    # the catalog names the folder it was read from, and passes its storage options on
    cat = open_catalog(url, storage_options=options)
    assert list_entries(cat) == sorted(cubes)
    store, store_options = entry_location(cat, "sif_oco2")
    assert store == f"{root}/sif_oco2.zarr"
    assert store_options == options
    for name, expected in cubes.items():
        assert_lazy_equal(open_cube(name, catalog=cat), expected)
        assert_lazy_equal(open_cube(f"{root}/{name}.zarr", **options), expected)
    # plain intake on the same catalog
    assert_lazy_equal(cat["sif_tropomi"].read(), cubes["sif_tropomi"])


def test_s3_template_catalog_against_loopback(s3_bucket, monkeypatch):
    bucket, options = s3_bucket
    ds = small_cube(3)
    ds.to_zarr(f"{bucket}/tw/truth.zarr", mode="w", zarr_format=3, consolidated=False,
               storage_options=options)
    # credentials come from the environment (set by the s3_server fixture), endpoint from env
    monkeypatch.setenv("XGPP_S3_ROOT", f"{bucket}/tw")
    monkeypatch.setenv("XGPP_S3_ENDPOINT", options["endpoint_url"])
    assert_lazy_equal(open_cube("truth", catalog="twin_world_s3"), ds)


def test_missing_s3_store_names_the_url(s3_bucket):
    bucket, options = s3_bucket
    with pytest.raises(FileNotFoundError, match=rf"no Zarr store at {bucket}/nothing\.zarr"):
        open_cube(f"{bucket}/nothing.zarr", **options)


def test_missing_s3_catalog_names_the_url(s3_bucket):
    bucket, options = s3_bucket
    with pytest.raises(FileNotFoundError, match=rf"no catalog at {bucket}/none/catalog\.yaml"):
        open_catalog(f"{bucket}/none", storage_options=options)


def test_unreachable_endpoint_names_the_url(s3_server):
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    _, options = s3_server
    bad = {**options, "endpoint_url": f"http://127.0.0.1:{port}",
           "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1}}
    # not "no Zarr store": an endpoint that does not answer is not a missing store
    with pytest.raises(OSError, match=r"cannot read the Zarr store at s3://xgpp-nowhere/c\.zarr "
                                      r"\(EndpointConnectionError: .*127\.0\.0\.1:"
                                      rf"{port}.*Check that the endpoint is reachable") as err:
        open_cube("s3://xgpp-nowhere/c.zarr", **bad)
    assert not isinstance(err.value, FileNotFoundError) and err.value.__cause__ is not None


# --------------------------------------------------------------------------- the twin world


def test_twin_world_on_s3(s3_bucket):
    """write_world -> s3://bucket/world, then catalog and URLs open lazily with equal values."""
    from xgpp import synthetic

    bucket, options = s3_bucket
    root = f"{bucket}/world"
    world = synthetic.write_world(root, resolution=10.0, start="2019-01-01", end="2019-02-15",
                                  seed=7, storage_options=options, progress=False)
    cat = xgpp.open_catalog(f"{root}/catalog.yaml", storage_options=options)
    assert set(list_entries(cat)) == {"drivers", "truth", "sif_tropomi", "sif_oco2", "sites"}
    for name in list_entries(cat):
        expected = world.datasets[name]
        from_catalog = xgpp.open_cube(name, catalog=cat)
        from_url = xgpp.open_cube(f"{root}/{name}.zarr", **options)
        for opened in (from_catalog, from_url):
            for var in expected.data_vars:
                assert dask.is_dask_collection(opened[var].variable._data)
            xr.testing.assert_identical(opened.compute(), expected.compute())


def test_resumable_prediction_streams_to_s3_from_cluster_workers(s3_bucket):
    """ds.gpp.to_zarr on an s3:// URL: workers write the chunks with the storage options."""
    from test_predict import _model

    from xgpp.synthetic import make_world

    bucket, options = s3_bucket
    drivers = make_world(resolution=12.0, start="2019-01-01", end="2019-06-30", n_sites=4,
                         chunks={"time": 6, "lat": 8, "lon": 15}).drivers
    model = _model(drivers)
    url = f"{bucket}/pred.zarr"
    with xgpp.cluster("local", n_workers=1, threads_per_worker=2, dashboard_address=":0"):
        drivers.gpp.to_zarr(model, url, storage_options=options, progress=False)
    back = open_cube(url, **options)
    assert back.attrs["xgpp_complete"] is True
    expect = xgpp.predict(drivers.compute(), model)["gpp"].values
    np.testing.assert_allclose(back["gpp"].values, expect, rtol=1e-5, atol=1e-5)
    assert np.isfinite(expect).any()
