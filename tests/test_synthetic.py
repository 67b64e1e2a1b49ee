"""The twin world: determinism, chunk independence, plausibility, round trip, bad arguments."""

import dask
import numpy as np
import pytest
import xarray as xr

from xgpp.landcover import IGBP_CODES
from xgpp.synthetic import VARIANTS, WorldConfig, make_world, write_world
from xgpp.synthetic.config import SLOPE_SPREAD
from xgpp.synthetic.physics import (
    EFFICIENCY_MEAN,
    Points,
    seasonal_amplitude,
    static_state,
    time_axis,
    true_state,
)
from xgpp.variables import DRIVERS


@pytest.fixture(scope="module")
def world():
    return make_world(resolution=4.0, start="2018-01-01", end="2019-12-31",
                      chunks={"time": 23, "lat": 20, "lon": 30})


@pytest.fixture(scope="module")
def computed(world):
    with dask.config.set(scheduler="threads"):
        return {k: v.compute() for k, v in world.datasets.items()}


def test_products_are_lazy_and_dask_backed(world):
    for name, ds in world.datasets.items():
        for v in ds.data_vars:
            assert ds[v].chunks is not None, f"{name}.{v} is not dask-backed"
    assert set(DRIVERS) <= set(world.drivers.data_vars)
    assert {"igbp", "land_mask", "elevation"} <= set(world.drivers.data_vars)
    assert world.drivers["tair"].dims == ("time", "lat", "lon")
    assert world.drivers["tair"].attrs["units"] == "degC"
    assert world.truth["gpp"].attrs["units"] == "gC m-2 d-1"
    assert world.sif_tropomi["sif"].attrs["units"] == "mW m-2 nm-1 sr-1"
    assert world.drivers.chunks["time"][0] == 23


def test_same_seed_same_bytes_and_other_seed_differs():
    a = make_world(resolution=5.0, start="2019-01-01", end="2019-03-31")
    b = make_world(resolution=5.0, start="2019-01-01", end="2019-03-31")
    c = make_world(resolution=5.0, start="2019-01-01", end="2019-03-31", seed=1)
    ta, tb, tc = (w.truth["gpp"].values for w in (a, b, c))
    assert ta.tobytes() == tb.tobytes()
    assert not np.allclose(np.nan_to_num(ta), np.nan_to_num(tc))
    xr.testing.assert_identical(a.sites.compute(), b.sites.compute())


def test_sub_region_alone_equals_slice_of_whole(world):
    """Chunk independence: a different chunking and a later start give the same values."""
    other = make_world(resolution=4.0, start="2018-03-01", end="2019-12-31",
                       chunks={"time": 7, "lat": 9, "lon": 11})
    region = dict(time=slice("2018-06-01", "2018-09-30"), lat=slice(-30, 60), lon=slice(-100, 40))
    for name in ("drivers", "truth", "sif_tropomi", "sif_oco2"):
        ds_a = world.datasets[name].sel(region).compute()
        ds_b = other.datasets[name].sel(region).compute()
        xr.testing.assert_equal(ds_a, ds_b)


def test_gpp_plausible(computed, world):
    gpp = computed["truth"]["gpp"]
    land = computed["drivers"]["land_mask"] == 1
    assert float(gpp.min()) >= 0.0
    assert bool(gpp.where(~land).isnull().all()), "ocean GPP must be NaN"
    assert 5.0 < float(gpp.max()) < 40.0
    # global annual total within the literature range (Beer et al. 2010: 123 +- 8; up to ~170)
    area = np.cos(np.deg2rad(gpp.lat)) * (4 * 111.2e3) ** 2
    total = float((gpp.fillna(0) * area).sum(("lat", "lon")).mean("time")) * 365 / 1e15
    assert 90 < total < 190, total


def test_seasonal_phase_flips_across_equator(computed):
    gpp = computed["truth"]["gpp"]
    month = gpp["time"].dt.month
    north = gpp.sel(lat=slice(40, 60)).mean(("lat", "lon"))
    south = gpp.sel(lat=slice(-40, -20)).mean(("lat", "lon"))
    jja, djf = month.isin([6, 7, 8]), month.isin([12, 1, 2])
    assert float(north.where(jja).mean()) > 2 * float(north.where(djf).mean())
    assert float(south.where(djf).mean()) > float(south.where(jja).mean())


def test_drivers_are_observed_not_true(computed):
    """Models never see the true state: observed fAPAR differs from the state behind the truth."""
    d = computed["drivers"]
    assert 0.0 < float(d["fapar"].isnull().where(d.land_mask == 1).mean()) < 0.2  # VI gaps
    assert float(d["co2"].max()) - float(d["co2"].min()) > 3.0  # rising + seasonal
    co2_2018 = float(d["co2"].sel(time="2018").mean())
    co2_2019 = float(d["co2"].sel(time="2019").mean())
    assert 1.5 < co2_2019 - co2_2018 < 3.0


def test_sif_gpp_slope_differs_between_biomes(computed):
    sif = computed["sif_tropomi"]["sif"]
    gpp = computed["truth"]["gpp"].sel(time=sif.time)
    igbp = computed["drivers"]["igbp"].broadcast_like(gpp)
    slopes = {}
    for code in ("ENF", "GRA", "CRO", "EBF"):
        m = (igbp == IGBP_CODES.index(code)).values & np.isfinite(sif.values) & (gpp.values > 0.5)
        if m.sum() > 50:
            slopes[code] = np.polyfit(sif.values[m], gpp.values[m], 1)[0]
    assert len(slopes) >= 3, slopes
    corr = xr.corr(sif, gpp.where(sif.notnull()))
    assert float(corr) > 0.8
    assert max(slopes.values()) / min(slopes.values()) > 1.2, slopes


def test_uniform_slope_variant_changes_only_sif():
    a = make_world(resolution=10.0, start="2019-06-01", end="2019-07-31")
    b = make_world(resolution=10.0, start="2019-06-01", end="2019-07-31", variant="uniform_slope")
    xr.testing.assert_equal(a.truth.compute(), b.truth.compute())
    assert not np.allclose(np.nan_to_num(a.sif_tropomi["sif"].values),
                           np.nan_to_num(b.sif_tropomi["sif"].values))
    assert set(VARIANTS) >= {"default", "uniform_slope", "no_tropical_sites"}


def test_tropomi_and_oco2_records(computed, world):
    trop, oco = computed["sif_tropomi"], computed["sif_oco2"]
    assert trop["time"].values[0] >= np.datetime64("2018-04-30")
    land = computed["drivers"]["land_mask"] == 1
    trop_cover = float(trop["sif"].notnull().where(land).mean())
    oco_cover = float(oco["sif"].notnull().where(land).mean())
    assert 0.2 < trop_cover < 0.95, trop_cover  # full coverage but cloud gaps
    assert oco_cover < 0.25 * trop_cover, (oco_cover, trop_cover)  # sparse tracks
    observed = np.isfinite(oco["sif"].values)
    assert observed.any()
    assert (oco["sif_count"].values[observed] >= 5).all()


def test_sites_follow_fluxnet_bias(computed):
    sites = computed["sites"]
    assert sites.sizes["site"] == 200
    assert sites["gpp"].dims == ("site", "time")
    lat, lon = sites["lat"].values, sites["lon"].values
    na = (lat > 25) & (lat < 55) & (lon > -130) & (lon < -60)
    eu = (lat > 35) & (lat < 70) & (lon > -10) & (lon < 40)
    tropics = np.abs(lat) < 23.5
    assert (na | eu).mean() > 0.55
    assert tropics.mean() < 0.15
    assert set(np.unique(sites["igbp"].values)) <= set(IGBP_CODES) - {"WAT", "SNO", "BSV"}
    # records of their own length and gaps
    valid = np.isfinite(sites["gpp"].values)
    lengths = valid.sum(axis=1)
    assert lengths.min() < lengths.max()
    first = valid.argmax(axis=1)
    last = valid.shape[1] - 1 - valid[:, ::-1].argmax(axis=1)
    span = last - first + 1
    assert (span < valid.shape[1]).any() and (span == valid.shape[1]).any()  # some start late
    assert 0.02 < 1 - lengths.sum() / span.sum() < 0.3  # gaps inside the records (about 11 %)
    assert lengths.max() < valid.shape[1]  # no record is complete


def test_no_tropical_sites_variant():
    w = make_world(resolution=5.0, start="2019-01-01", end="2019-02-28", variant="no_tropical_sites",
                   n_sites=60)
    assert (np.abs(w.sites["lat"].values) >= 23.5).all()
    assert w.sites.sizes["site"] > 40


def test_zarr_round_trip_keeps_values_and_attributes(tmp_path):
    w = make_world(resolution=10.0, start="2019-01-01", end="2019-12-31", n_sites=20)
    write_world(tmp_path / "w", w, progress=False)
    for name, ds in w.datasets.items():
        back = xr.open_zarr(tmp_path / "w" / f"{name}.zarr", consolidated=False)
        xr.testing.assert_identical(back.compute(), ds.compute())
        assert back.attrs["world_config"] == w.config.to_json()
    assert (tmp_path / "w" / "catalog.yaml").exists()


@pytest.mark.parametrize("product, window, start, end, empty", [
    ("sif_tropomi", "2018-04-30", "2015-01-01", "2016-12-31", ("sif_tropomi",)),
    ("sif_oco2", "2014-09-06", "2013-01-01", "2013-12-31", ("sif_tropomi", "sif_oco2")),
])
def test_record_before_a_product_window_writes_an_empty_store(tmp_path, product, window, start,
                                                                end, empty):
    """A world that ends before a SIF product starts writes that product with 0 time steps."""
    import xgpp

    w = write_world(tmp_path / "w", resolution=5.0, start=start, end=end, n_sites=10,
                    chunks={"time": 23, "lat": 18, "lon": 36}, progress=False)
    assert (tmp_path / "w" / "catalog.yaml").exists()
    full = make_world(resolution=5.0, start="2019-01-01", end="2019-02-28", n_sites=10)

    def window_of(name):
        return full.datasets[name].attrs["product_window_start"]

    for name in empty:
        for back in (xr.open_zarr(tmp_path / "w" / f"{name}.zarr", consolidated=False),
                     xgpp.open_cube(name, catalog=str(tmp_path / "w" / "catalog.yaml"))):
            assert dict(back.sizes) == {"time": 0, "lat": 36, "lon": 72}, name
            assert set(back.data_vars) == {"sif", "sif_count"}
            assert back["sif"].attrs["units"] == full.datasets[name]["sif"].attrs["units"]
            assert back.attrs["time_steps"] == 0
            assert back.attrs["product_window_start"] == window_of(name)
            assert back.time.dtype.kind == "M"
            xr.testing.assert_identical(back.lat, full.datasets[name].lat)
        assert "0 time steps" in back.attrs["empty_store"]
        assert window_of(name) in back.attrs["empty_store"]
        assert f"{start}..{end}" in back.attrs["empty_store"]
        assert back.attrs["world_config"] == w.config.to_json()
        stored = xr.open_zarr(tmp_path / "w" / f"{name}.zarr", consolidated=False)
        assert stored["sif"].encoding["chunks"] == (23, 18, 36)  # the world's chunking
    assert w.datasets[product].attrs["product_window_start"] == window
    # the other products are unaffected: full record, values as generated
    steps = w.drivers.sizes["time"]
    assert steps > 40
    for name in ("drivers", "truth", "sites") + (("sif_oco2",) if product == "sif_tropomi" else ()):
        back = xgpp.open_cube(name, catalog=str(tmp_path / "w" / "catalog.yaml"))
        assert "time_steps" not in back.attrs and "empty_store" not in back.attrs
        xr.testing.assert_identical(back.compute(), w.datasets[name].compute())
    assert float(w.truth["gpp"].max()) > 5.0
    if product == "sif_tropomi":
        oco = xr.open_zarr(tmp_path / "w" / "sif_oco2.zarr", consolidated=False)
        assert oco.sizes["time"] == steps and bool(oco["sif"].notnull().any())


@pytest.mark.parametrize("kwargs, match", [
    ({"resolution": 0.7}, "does not divide 180"),
    ({"start": "2020-01-01", "end": "2019-01-01"}, "before start"),
    ({"freq": "3H"}, "freq"),
    ({"variant": "martian"}, "unknown world variant"),
    ({"sif_slope": "magic"}, "sif_slope"),
    ({"slope_spread": "c5"}, "slope_spread='c5' is not a within-class slope spread"),
])
def test_bad_arguments_give_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_world(**kwargs)


def test_unknown_variable_is_a_clear_error(world):
    from xgpp.variables import get_variable

    with pytest.raises(KeyError, match="unknown variable 'gpp_total'"):
        get_variable("gpp_total")


# ----------------------------------------------------------------------------- golden values
def test_default_world_keeps_its_values():
    """Summary statistics of a tiny default world, recorded before the slope-spread variant and
    the ceiling were added: a changed random stream or kernel shows up here."""
    w = make_world(resolution=10.0, start="2019-05-01", end="2019-08-31", n_sites=10)
    with dask.config.set(scheduler="synchronous"):
        got = [float(np.nansum(w.truth["gpp"].values.astype(float))),
               float(np.nansum(w.sif_tropomi["sif"].values.astype(float))),
               float(np.nanmean(w.drivers["tair"].values.astype(float))),
               float(np.nansum(w.sif_oco2["sif"].values.astype(float))),
               float(np.nansum(w.sites["gpp"].values.astype(float)))]
    np.testing.assert_allclose(got, [9142.02938161094, 644.5883911486505, -12.695510496279686,
                                     320.66947467680757, 631.1635744869709], rtol=1e-9)
    assert w.config.slope_spread == "none"
    assert float(np.nanmin(w.truth["sif_slope_factor"])) == 1.0 == float(
        np.nanmax(w.truth["sif_slope_factor"]))


# ----------------------------------------------------------------------------- slope spread
def _grid_points(resolution):
    lat = -90.0 + (np.arange(round(180 / resolution)) + 0.5) * resolution
    lon = -180.0 + (np.arange(round(360 / resolution)) + 0.5) * resolution
    return Points.grid(lat, lon, resolution)


def test_slope_spread_table_covers_every_class():
    for name, col in SLOPE_SPREAD.items():
        assert col.shape == (len(IGBP_CODES),), name
    assert (SLOPE_SPREAD["c4_mean"] <= SLOPE_SPREAD["c4_max"]).all()
    forests = [IGBP_CODES.index(c) for c in ("ENF", "EBF", "DNF", "DBF", "MF")]
    assert (SLOPE_SPREAD["c4_max"][forests] == 0).all()  # C4 is herbaceous
    assert VARIANTS["slope_spread"] == {"slope_spread": "full"}


def test_slope_spread_field_is_regional_and_within_class():
    """C4 grass where it is warm, C3 where it is cool; the factor spreads inside a class with a
    long correlation length."""
    pts = _grid_points(2.0)
    st = static_state(pts, WorldConfig(resolution=2.0, slope_spread="full"))
    igbp, c4, fac = st["igbp"], st["c4_fraction"], st["sif_slope_factor"]
    t_warm = st["tmean"] + seasonal_amplitude(pts.lat, st["moist"])
    gra = igbp == IGBP_CODES.index("GRA")
    assert c4[gra & (t_warm > 27)].mean() > 0.6
    assert c4[gra & (t_warm < 17)].mean() < 0.15
    assert (c4[np.isin(igbp, [1, 2, 3, 4, 5])] == 0).all()
    for code in ("CRO", "GRA", "ENF"):
        m = igbp == IGBP_CODES.index(code)
        assert np.log(fac[m]).std() > 0.08, code  # slopes vary inside the class
    # spatially correlated: east-west neighbours (2 degrees apart) nearly share their factor
    grid = np.log(fac).reshape(90, 180)
    veg = (st["land"] & ~np.isin(igbp, [0, 13, 15])).reshape(90, 180)
    both = veg[:, :-1] & veg[:, 1:]
    assert np.corrcoef(grid[:, :-1][both], grid[:, 1:][both])[0, 1] > 0.7
    # the parts: "c3c4" leaves forests at exactly 1, "structure" does not vary with C4 share
    c3c4 = static_state(pts, WorldConfig(resolution=2.0, slope_spread="c3c4"))
    assert (c3c4["sif_slope_factor"][np.isin(igbp, [1, 2, 3, 4, 5])] == 1.0).all()
    structure = static_state(pts, WorldConfig(resolution=2.0, slope_spread="structure"))
    np.testing.assert_allclose(structure["sif_slope_factor"] * c3c4["sif_slope_factor"], fac)


def test_slope_spread_changes_the_sif_conversion_only():
    """Same world with the variant: drivers, truth GPP, ceiling and sites identical; SIF is the
    default SIF divided by the static factor (a pixel property, the same at every step)."""
    kw = dict(resolution=10.0, start="2019-06-01", end="2019-07-31", n_sites=10)
    a, b = make_world(**kw), make_world(**kw, variant="slope_spread")
    with dask.config.set(scheduler="synchronous"):
        for name in ("drivers", "sites"):
            xr.testing.assert_identical(a.datasets[name].drop_attrs().compute(),
                                        b.datasets[name].drop_attrs().compute())
        ta, tb = a.truth.compute(), b.truth.compute()
    xr.testing.assert_equal(ta[["gpp", "gpp_ceiling"]], tb[["gpp", "gpp_ceiling"]])
    factor = tb["sif_slope_factor"]
    assert factor.dims == ("lat", "lon")
    np.testing.assert_array_equal(factor.notnull().values, ta["gpp"].isel(time=0).notnull().values)
    assert float(factor.std()) > 0.05
    # true SIF: the variant's is the default's divided by the factor, at every step
    cfg_a, cfg_b = a.config, b.config
    pts = Points.grid(a.truth.lat.values, a.truth.lon.values, cfg_a.resolution)
    times = time_axis(cfg_a.start, cfg_a.end, cfg_a.freq)
    st_a, st_b = static_state(pts, cfg_a), static_state(pts, cfg_b)
    sa = true_state(times, pts, st_a, cfg_a)["sif"]
    sb = true_state(times, pts, st_b, cfg_b)["sif"]
    ok = np.isfinite(sa) & (sa > 0)
    ratio = np.broadcast_to(st_b["sif_slope_factor"][None, :], sa.shape)
    np.testing.assert_allclose(sa[ok] / sb[ok], ratio[ok], rtol=1e-12)
    np.testing.assert_allclose(factor.values.ravel()[np.isfinite(factor.values.ravel())],
                               st_b["sif_slope_factor"][st_b["land"]], rtol=1e-6)
    assert not np.allclose(np.nan_to_num(a.sif_tropomi["sif"].values),
                           np.nan_to_num(b.sif_tropomi["sif"].values))


def test_slope_spread_field_chunk_alone_equals_slice_of_whole():
    base = dict(resolution=5.0, start="2019-06-01", end="2019-07-31", variant="slope_spread",
                n_sites=5)
    whole = make_world(**base, chunks={"time": 8, "lat": 36, "lon": 72})
    other = make_world(**base, chunks={"time": 3, "lat": 7, "lon": 11})
    region = dict(lat=slice(-40, 55), lon=slice(-120, 30))
    with dask.config.set(scheduler="synchronous"):
        for name in ("truth", "sif_tropomi"):  # values and variable attributes
            xr.testing.assert_identical(
                whole.datasets[name].sel(region).compute().drop_attrs(deep=False),
                other.datasets[name].sel(region).compute().drop_attrs(deep=False))
        again = make_world(**base).truth
        seed1 = make_world(**base, seed=1).truth
        fa = whole.truth["sif_slope_factor"].values
        assert fa.tobytes() == again["sif_slope_factor"].values.tobytes()
        fb = seed1["sif_slope_factor"].values
    assert not np.allclose(np.nan_to_num(fa), np.nan_to_num(fb))


# ----------------------------------------------------------------------------- the ceiling
def test_gpp_ceiling_is_truth_without_the_unobserved_efficiency(computed, world):
    truth = computed["truth"]
    gpp, ceiling = truth["gpp"], truth["gpp_ceiling"]
    assert world.truth["gpp_ceiling"].chunks == world.truth["gpp"].chunks  # lazy, same chunks
    assert ceiling.attrs["units"] == "gC m-2 d-1"
    assert {"long_name", "description"} <= set(ceiling.attrs)
    assert "SIF" in ceiling.attrs["description"]
    assert bool((ceiling.notnull() == gpp.notnull()).all())
    # equals gpp / efficiency * E[efficiency] with the static efficiency of each cell
    pts = Points.grid(truth.lat.values, truth.lon.values, world.config.resolution)
    eff = static_state(pts, world.config)["efficiency"].reshape(truth.sizes["lat"],
                                                                 truth.sizes["lon"])
    assert EFFICIENCY_MEAN == 1.0
    np.testing.assert_allclose(ceiling.values,
                               gpp.values.astype(float) / eff[None] * EFFICIENCY_MEAN,
                               rtol=2e-6, atol=1e-6)
    # a high but imperfect predictor of the truth
    g, c = gpp.values.ravel(), ceiling.values.ravel()
    ok = np.isfinite(g)
    r2 = 1.0 - np.sum((g[ok] - c[ok]) ** 2) / np.sum((g[ok] - g[ok].mean()) ** 2)
    assert 0.5 < r2 < 0.999, r2


def test_finishing_a_store_drops_its_progress_attributes_in_one_write(tmp_path,
                                                                       zarr_metadata_saves):
    """A kill between two per-key writes would leave a store half-marked; one write cannot."""
    import fsspec
    import zarr

    import xgpp.synthetic.write as W

    url = str(tmp_path / "w")
    xr.Dataset({"a": ("x", np.arange(3.0))}).to_zarr(f"{url}/d.zarr", zarr_format=3,
                                                     consolidated=False)
    zarr.open_group(f"{url}/d.zarr", mode="r+").update_attributes(
        {"world_config": "{}", "xgpp_complete": False, "xgpp_progress": "../p/d"})
    zarr_metadata_saves.clear()  # only the finish's own writes
    fs, root = fsspec.core.url_to_fs(url)
    fs.makedirs(f"{root}/{W.PROGRESS_DIR}/d", exist_ok=True)
    W._finish_store(fs, root, url, "d", {})
    assert zarr_metadata_saves == [{"world_config": "{}"}]
    assert dict(zarr.open_group(f"{url}/d.zarr", mode="r").attrs) == {"world_config": "{}"}
