"""Samples from the real twin world (small: 5 degree, 2018-2020).

``twin()`` and ``twin_store()`` are cached per test session and imported by the other
model/train test modules, so the world is generated once.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
import threading
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import xarray as xr

from xgpp.models.features import (
    ConstantFeatureWarning,
    FeatureConfig,
    FeatureSpec,
    streaming_moments,
)
from xgpp.samples import (
    GridSamples,
    SampleExclusionWarning,
    ShuffleBuffer,
    site_samples,
    store_chunks,
    validation_cells,
)

CHUNKS = {"time": 23, "lat": 18, "lon": 36}


@functools.cache
def twin() -> SimpleNamespace:
    """A small real twin world, computed once (dask-backed, chunked like a store)."""
    from xgpp.synthetic import make_world

    w = make_world(resolution=5.0, start="2018-01-01", end="2020-12-31", seed=0, chunks=CHUNKS)
    return SimpleNamespace(world=w, drivers=w.drivers.persist(), sites=w.sites.compute(),
                           sif=w.sif_tropomi.persist())


@functools.cache
def twin_store() -> str:
    """The products training reads, written as Zarr v3 stores with a catalog.yaml.

    Written from the cached world (as ``write_world`` does, store chunks = dask chunks) but
    only drivers, sif_tropomi and sites, to keep the tests fast.
    """
    from xgpp.catalog import write_catalog

    root = tempfile.mkdtemp(prefix="xgpp-twin-")
    atexit.register(shutil.rmtree, root, True)
    t = twin()
    names = ("drivers", "sif_tropomi", "sites")
    for name, ds in zip(names, (t.drivers, t.sif, t.world.sites), strict=True):
        enc = {v: {"chunks": tuple(c[0] for c in ds[v].chunks)} for v in ds.data_vars}
        ds.to_zarr(f"{root}/{name}.zarr", mode="w", zarr_format=3, consolidated=False,
                   encoding=enc)
    write_catalog(root, names=names)
    return root


def open_store(name: str) -> xr.Dataset:
    from xgpp.catalog import open_cube

    return open_cube(f"{twin_store()}/{name}.zarr")


def spec_for(drivers: xr.Dataset, **kw) -> FeatureSpec:
    return FeatureSpec.fit(FeatureConfig(**kw), drivers)


# ------------------------------------------------------------------------------ site samples
def _samples(**kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SampleExclusionWarning)
        return site_samples(twin().drivers, twin().sites, **kw)


def _recorded(fn, *args, **kw):
    """Call ``fn`` and return (result, messages of the SampleExclusionWarnings it raised)."""
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        out = fn(*args, **kw)
    assert all(issubclass(r.category, SampleExclusionWarning) for r in rec), rec
    return out, [str(r.message) for r in rec]


def test_site_samples_take_the_nearest_cell_on_the_cube_time_step():
    t = twin()
    s = _samples()
    assert s.sizes["sample"] > 1000
    assert {"site", "time", "lat", "lon", "igbp_code"} <= set(s.coords)
    for i in (0, s.sizes["sample"] // 2, s.sizes["sample"] - 1):
        row = s.isel(sample=i)
        cell = t.drivers.sel(time=row.time.values, lat=row.lat.values, lon=row.lon.values,
                            method="nearest")
        for v in ("tair", "fapar", "elevation"):
            np.testing.assert_allclose(row[v].values, cell[v].values, rtol=1e-6)
        site_gpp = t.sites["gpp"].sel(site=row.site.values, time=row.time.values)
        np.testing.assert_allclose(row["gpp"].values, site_gpp.values)
    assert np.isfinite(s["gpp"]).all()
    assert s["tair"].attrs["units"] == "degC"


def test_site_samples_window_mean():
    t = twin()
    s = _samples(window=3, inputs=("tair",))
    row = s.isel(sample=7)
    iy = int(np.abs(t.drivers.lat.values - row.cell_lat.values).argmin())
    ix = int(np.abs(t.drivers.lon.values - row.cell_lon.values).argmin())
    nx = t.drivers.sizes["lon"]
    block = t.drivers["tair"].sel(time=row.time.values).values[
        max(iy - 1, 0):iy + 2][:, [(ix - 1) % nx, ix, (ix + 1) % nx]]
    np.testing.assert_allclose(row["tair"].values, np.nanmean(block), rtol=1e-5)
    with pytest.raises(ValueError, match="odd"):
        site_samples(t.drivers, t.sites, window=2)


def test_sites_outside_the_grid_are_counted():
    t = twin()
    north = t.drivers.sel(lat=slice(0, 90))
    n_south = int((t.sites.lat.values < 0).sum())
    s, msgs = _recorded(site_samples, north, t.sites)
    assert any(f"{n_south} of {t.sites.sizes['site']} sites lie outside the driver grid" in m
               for m in msgs)
    assert (s.lat.values > 0).all()


def test_a_site_without_valid_samples_is_reported():
    t = twin()
    sites = t.sites.copy(deep=True)
    sites["gpp"][0, :] = np.nan
    victim = str(sites.site.values[0])
    s, msgs = _recorded(site_samples, t.drivers, sites)
    assert any("no valid sample" in m and victim in m for m in msgs)
    assert victim not in set(s.site.values)


def test_a_driver_missing_at_some_sites_is_counted_by_input():
    t = twin()
    s0 = _samples()
    row = s0.isel(sample=0)
    drv = t.drivers.compute()
    iy = int(np.abs(drv.lat.values - row.cell_lat.values).argmin())
    ix = int(np.abs(drv.lon.values - row.cell_lon.values).argmin())
    drv["swc"][:, iy, ix] = np.nan
    s, msgs = _recorded(site_samples, drv, t.sites)
    assert any("because an input is missing" in m and "'swc'" in m for m in msgs)
    assert s.sizes["sample"] < s0.sizes["sample"]
    assert np.isfinite(s["swc"]).all()


def test_cube_not_overlapping_the_site_records_is_an_error():
    t = twin()
    late = t.sites.assign_coords(time=t.sites.time.values + np.timedelta64(3650, "D"))
    with pytest.raises(ValueError, match="does not overlap the site records"):
        site_samples(t.drivers, late)


def test_missing_input_variable_is_named():
    t = twin()
    with pytest.raises(KeyError, match="lacks input.*'vpd'"):
        site_samples(t.drivers.drop_vars("vpd"), t.sites)


# ------------------------------------------------------------------------------ statistics
def test_streaming_moments_match_numpy():
    t = twin()
    m = streaming_moments(t.drivers, ["tair", "fapar"])
    tair = t.drivers["tair"].values
    assert m["tair"][0] == pytest.approx(np.nanmean(tair), rel=1e-6)
    assert m["tair"][1] == pytest.approx(np.nanstd(tair), rel=1e-5)
    assert m["tair"][2] == int(np.isfinite(tair).sum())


def test_all_nan_and_constant_features():
    d = twin().drivers
    with pytest.raises(ValueError, match="'swc' is all-NaN"):
        spec_for(d.assign(swc=d["swc"] * np.nan))
    const = d.assign(co2=d["co2"] * 0 + 400.0)
    with pytest.warns(ConstantFeatureWarning, match="'co2' is constant"):
        spec = spec_for(const)
    assert spec.std["co2"] == 1.0


# ------------------------------------------------------------------------------ grid stream
def _brute_force(drivers, sif, spec, mask=None):
    """Every valid pixel, computed directly (reference for the stream)."""
    ds = drivers[list(spec.inputs)].sel(time=sif.time).compute()
    from xgpp.models.features import columns_from_dataset

    cols = columns_from_dataset(ds, spec.inputs)
    y = sif["sif"].transpose("time", "lat", "lon").values.reshape(-1)
    ok = spec.valid_mask(cols) & np.isfinite(y)
    if mask is not None:
        ok &= np.broadcast_to(mask[None], ds["tair"].shape).reshape(-1)
    return spec.transform({k: v[ok] for k, v in cols.items()}), y[ok]


def test_grid_stream_from_zarr_is_chunk_aligned_and_delivers_every_pixel_once():
    drivers, sif = open_store("drivers"), open_store("sif_tropomi")
    spec = spec_for(drivers)
    stream = GridSamples(drivers, sif, spec, batch_size=1000, shuffle_buffer=5000, prefetch=3,
                         workers=2, seed=1)
    chunks = store_chunks(drivers, spec.inputs)
    assert chunks == CHUNKS
    body = stream.generators[0]
    assert body.input_dims == chunks  # xbatcher patches == store chunks
    xs, ys = zip(*stream.iterate(0), strict=True)
    assert all(len(x) == 1000 for x in xs[:-1]) and xs[0].dtype == np.float32
    x, y = np.concatenate(xs), np.concatenate(ys)[:, 0]
    xr_, yr = _brute_force(drivers, sif, spec)
    assert len(y) == len(yr)
    np.testing.assert_allclose(np.sort(y), np.sort(yr), rtol=1e-6)
    np.testing.assert_allclose(np.sort(x[:, 0]), np.sort(xr_[:, 0]), rtol=1e-5, atol=1e-6)
    assert not np.isnan(x).any()


def test_grid_stream_is_deterministic_and_shuffled_per_epoch():
    t = twin()
    spec = spec_for(t.drivers)
    stream = GridSamples(t.drivers, t.sif, spec, batch_size=512, shuffle_buffer=3000, seed=4)
    a = np.concatenate([y for _, y in stream.iterate(0)])
    b = np.concatenate([y for _, y in stream.iterate(0)])
    c = np.concatenate([y for _, y in stream.iterate(1)])
    np.testing.assert_array_equal(a, b)
    assert len(a) == len(c) and not np.array_equal(a, c)


def test_grid_stream_covers_uneven_chunks_and_cell_masks():
    t = twin()
    drivers = t.drivers.chunk({"time": 40, "lat": 20, "lon": 50})
    spec = spec_for(drivers)
    val = validation_cells(drivers.lat.values, drivers.lon.values, block=20, fraction=0.3)
    assert 0 < val.sum() < val.size
    for mask in (val, ~val):
        stream = GridSamples(drivers, t.sif, spec, cell_mask=mask, batch_size=4096,
                             shuffle_buffer=0)
        assert len(stream.generators) > 1  # remainder strips get their own generators
        n = sum(len(x) for x, _ in stream.iterate(0))
        assert n == len(_brute_force(drivers, t.sif, spec, mask)[1])


def test_grid_stream_stops_cleanly_and_caps_samples():
    t = twin()
    spec = spec_for(t.drivers)
    stream = GridSamples(t.drivers, t.sif, spec, batch_size=256, shuffle_buffer=1000,
                         queue_batches=2)
    before = threading.active_count()
    got = sum(len(x) for x, _ in stream.iterate(0, max_samples=1000))
    assert 1000 <= got < 1300
    for _ in range(50):
        if threading.active_count() <= before:
            break
        threading.Event().wait(0.05)
    assert threading.active_count() <= before


def test_grid_stream_rejects_a_target_on_another_grid():
    t = twin()
    spec = spec_for(t.drivers)
    with pytest.raises(ValueError, match="'lat' axis"):
        GridSamples(t.drivers, t.sif.isel(lat=slice(1, None)), spec)


def test_shuffle_buffer_emits_a_permutation():
    rng = np.random.default_rng(0)
    buf = ShuffleBuffer(100, rng)
    x = np.arange(1000, dtype=np.float32)[:, None]
    out = [o for i in range(0, 1000, 70) for o, _ in buf.add(x[i:i + 70], x[i:i + 70])]
    out.append(buf.flush()[0])
    got = np.concatenate(out)[:, 0]
    assert sorted(got) == list(range(1000))
    assert not np.array_equal(got, np.arange(1000))


def test_grid_stream_names_a_corrupt_chunk(tmp_path):
    import shutil

    from xgpp._chunks import UnreadableChunkError
    from xgpp.catalog import open_cube

    src = tmp_path / "drivers.zarr"
    shutil.copytree(f"{twin_store()}/drivers.zarr", src)
    chunk = src / "fapar" / "c" / "2" / "1" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[8:40] = b"\xff" * 32
    chunk.write_bytes(bytes(raw))
    drivers, sif = open_cube(str(src)), open_store("sif_tropomi")
    # normalisation statistics read the whole cube first
    with pytest.raises(UnreadableChunkError, match=r"variable 'fapar'.*Zarr chunk c/2/1/0"):
        spec_for(drivers)
    # the training stream reads it chunk by chunk
    stream = GridSamples(drivers, sif, spec_for(open_store("drivers")), batch_size=1000, seed=1)
    with pytest.raises(UnreadableChunkError, match=r"variable 'fapar'.*Zarr chunk c/2/1/0"):
        for _ in stream.iterate(0):
            pass
