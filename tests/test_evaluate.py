"""Scores against the truth field and at sites: streamed sums equal the direct numpy formulas."""

import dask
import numpy as np
import pytest
import xarray as xr

from xgpp.evaluate import at_sites, field_scores, pair_scores, scores


@pytest.fixture
def cubes():
    rng = np.random.default_rng(0)
    shape = (10, 6, 8)
    coords = {"time": np.arange(10), "lat": np.linspace(-50, 50, 6), "lon": np.linspace(-175, 175, 8)}
    truth = xr.DataArray(rng.gamma(2.0, 2.0, shape), dims=("time", "lat", "lon"), coords=coords)
    pred = truth * 0.9 + rng.normal(0, 0.5, shape)
    pred[0, 0, 0] = np.nan
    return pred.chunk({"time": 3, "lat": 4}), truth.chunk({"time": 5})


def test_pair_scores_known_values():
    obs = np.arange(1.0, 101.0)
    s = pair_scores(obs + 1.0, obs)
    assert s["bias"] == pytest.approx(1.0) and s["rmse"] == pytest.approx(1.0)
    assert s["slope"] == pytest.approx(1.0) and s["pearson_r2"] == pytest.approx(1.0)
    assert s["bias_low_decile"] == pytest.approx(1.0) and s["bias_high_decile"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 3"):
        pair_scores(np.array([1.0, np.nan]), np.array([1.0, 2.0]))


def test_streamed_field_scores_equal_numpy(cubes):
    pred, truth = cubes
    p, o = pred.values.ravel(), truth.values.ravel()
    ok = np.isfinite(p) & np.isfinite(o)
    direct = pair_scores(p[ok], o[ok])
    got = field_scores(pred, truth)
    assert got["n"] == ok.sum()
    for key in ("r2", "pearson_r2", "rmse", "bias"):
        assert got[key] == pytest.approx(direct[key], rel=1e-9)


def test_scores_take_one_pass_and_pick_the_nearest_cell(cubes):
    pred, truth = cubes
    sites = xr.Dataset(
        {"gpp": (("site", "time"), truth.isel(lat=[1, 4], lon=[2, 6]).values.diagonal(axis1=1, axis2=2).T)},
        coords={"site": ["A", "B"], "time": truth.time,
                "lat": ("site", truth.lat.values[[1, 4]] + 0.3),
                "lon": ("site", truth.lon.values[[2, 6]] - 0.4)},
    )
    np.testing.assert_array_equal(at_sites(truth, sites).values, sites["gpp"].values)
    calls = []

    def counting(dsk, keys, **kwargs):
        calls.append(1)
        return dask.get(dsk, keys, **kwargs)

    with dask.config.set(scheduler=counting):
        field, site, at = scores(pred, truth, sites)
    assert len(calls) == 1
    assert field == pytest.approx(field_scores(pred, truth))
    assert at.dims == ("site", "time")
    assert site["n"] == np.isfinite(at.values).sum()
