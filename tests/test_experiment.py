"""The experiment: plan, scores, one real ``xgpp experiment --quick`` and a failed run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from xgpp.evaluate import (
    annual_totals,
    cell_area,
    field_report,
    quintile_bias,
    site_report,
    step_days,
)
from xgpp.experiment import ExperimentConfig, fold_for_seed, plan_runs


def test_fold_for_seed_spreads_over_the_folds():
    assert [fold_for_seed(5, i, 3) for i in range(3)] == [0, 1, 2]
    assert [fold_for_seed(13, i, 3) for i in range(3)] == [0, 4, 8]
    assert fold_for_seed(2, 3, 4) == 1  # wraps


def test_config_refuses_a_fold_and_round_trips():
    with pytest.raises(ValueError, match="names a fold"):
        ExperimentConfig(splits=("site-kfold:k=5,fold=1",))
    cfg = ExperimentConfig.quick_config(seeds=(3, 4))
    assert ExperimentConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(TypeError, match="unknown ExperimentConfig field"):
        ExperimentConfig.from_dict({"seed": 1})


def _sites(n=40, seed=0):
    rng = np.random.default_rng(seed)
    codes = np.array(["ENF", "EBF", "DBF", "GRA", "CRO"])[rng.integers(0, 5, n)]
    return xr.Dataset(coords={"site": [f"S{i:02d}" for i in range(n)],
                              "lat": ("site", rng.uniform(-50, 60, n)),
                              "lon": ("site", rng.uniform(-170, 170, n)),
                              "igbp": ("site", codes)})


def test_plan_covers_every_method_split_seed_and_scale():
    from xgpp.train import METHODS

    methods = list(METHODS)
    cfg = ExperimentConfig(worlds=("default", "slope_spread"), seeds=(0, 1),
                           splits=("site-kfold:k=4", "igbp"), variant_splits=("site-kfold:k=4",),
                           sif_scales=(0.5, 1.0, 2.0), scale_methods=("siftml",))
    runs = plan_runs(cfg, {"default": _sites(), "slope_spread": _sites()}, methods)
    ids = [r.id for r in runs]
    assert len(ids) == len(set(ids))  # every run its own folder
    # first world: 2 splits x 2 seeds x every method + 2 seeds x 2 extra scales
    first = [r for r in runs if r.world == "default"]
    assert len(first) == 2 * 2 * len(methods) + 2 * 2
    assert {r.method for r in first} == set(methods)
    assert {r.kind for r in first} == {"site-kfold", "igbp"}
    assert {r.sif_scale for r in first} == {0.5, 1.0, 2.0}
    other = [r for r in runs if r.world == "slope_spread"]
    assert {r.kind for r in other} == {"site-kfold"} and len(other) == 2 * len(methods)
    # seeds train different folds; track methods hold out track segments too
    assert {r.split for r in first if r.method == "ec-only" and r.kind == "site-kfold"} == {
        "site-kfold:k=4,fold=0", "site-kfold:k=4,fold=2"}  # spread: 4 folds, 2 seeds
    moe = [r for r in first if r.method == "moe"]
    assert all(";tracks:k=5,fold=" in r.split for r in moe)
    quick = plan_runs(ExperimentConfig.quick_config(), {"default": _sites()}, methods)
    assert {r.method for r in quick} == set(methods)
    assert {r.kind for r in quick} == {"site-kfold", "igbp", "blocks"}


def test_moment_scores_equal_xskillscore_and_regions():
    import xskillscore as xs

    rng = np.random.default_rng(1)
    t = pd.date_range("2019-01-01", periods=12, freq="8D")
    o = xr.DataArray(rng.gamma(2.0, 2.0, (12, 9, 10)), dims=("time", "lat", "lon"),
                     coords={"time": t, "lat": np.linspace(-80, 80, 9), "lon": np.arange(10.)})
    p = (o + rng.normal(0, 1.0, o.shape)).where(lambda x: x > -0.5)
    scores, maps = field_report(p.chunk({"time": 5}), o.chunk({"time": 5}),
                                igbp=xr.DataArray(rng.integers(1, 4, (9, 10)),
                                                  dims=("lat", "lon")))
    w = np.cos(np.deg2rad(o["lat"])).broadcast_like(o).where(p.notnull(), 0.0)
    dims = ["time", "lat", "lon"]
    np.testing.assert_allclose(scores["overall"]["r2"],
                               float(xs.r2(o.where(p.notnull()), p, dim=dims, weights=w,
                                           skipna=True)), rtol=1e-10)
    np.testing.assert_allclose(scores["overall"]["rmse"],
                               float(xs.rmse(o, p, dim=dims, weights=w, skipna=True)),
                               rtol=1e-10)
    np.testing.assert_allclose(scores["overall"]["bias"],
                               float(xs.me(p, o, dim=dims, weights=w, skipna=True)), rtol=1e-9)
    assert set(scores["by_region"]) == {"tropics", "temperate", "boreal"}
    assert sum(r["n"] for r in scores["by_region"].values()) == scores["overall"]["n"]
    assert sum(c["n"] for c in scores["by_igbp"].values()) == scores["overall"]["n"]
    np.testing.assert_allclose(maps["truth"].values, o.where(p.notnull()).mean("time").values,
                               rtol=1e-5)
    perfect, _ = field_report(o, o)
    assert perfect["overall"]["r2"] == pytest.approx(1.0) and perfect["spatial_r2"] == \
        pytest.approx(1.0)


def test_annual_totals_of_a_known_field():
    t = pd.DatetimeIndex([d for y in (2019, 2020)
                          for d in pd.date_range(f"{y}-01-01", f"{y}-12-31", freq="8D")])
    assert step_days(t).sum() == 365 + 366
    lat, lon = np.arange(-89, 90, 2.0), np.arange(-179, 180, 2.0)
    area = cell_area(xr.DataArray(lat, dims="lat"), xr.DataArray(lon, dims="lon"))
    assert float(area.sum()) == pytest.approx(4 * np.pi * 6_371_008.8**2, rel=1e-9)
    one = xr.DataArray(np.ones((len(t), lat.size, lon.size), "float32"),
                       dims=("time", "lat", "lon"), coords={"time": t, "lat": lat, "lon": lon})
    tot = annual_totals(one.chunk({"time": 23}))
    # 1 gC m-2 d-1 over the whole sphere for a year: area * days / 1e15 PgC
    np.testing.assert_allclose(tot.values, float(area.sum()) * np.array([365, 366]) / 1e15,
                               rtol=1e-6)
    assert tot.attrs["units"] == "PgC yr-1"


def test_quintiles_tell_regression_dilution_from_bias():
    rng = np.random.default_rng(0)
    truth = rng.gamma(2.0, 3.0, 20_000)
    obs = truth + rng.normal(0, 2.0, truth.size)
    # the truth itself, binned by the noisy observation: high at low, low at high observed
    q = quintile_bias(truth, obs, obs)["bias"]
    assert q[0] > 0.5 and q[4] < -0.5
    # binned by the true value the truth has no bias
    assert np.allclose(quintile_bias(truth, truth, truth)["bias"], 0.0)
    rep = site_report(truth, obs, truth=truth, tair=np.where(np.arange(truth.size) % 4, 10, -5),
                      igbp=np.full(truth.size, 4))
    assert rep["quintile_samples"] == int((np.arange(truth.size) % 4 != 0).sum())
    assert np.allclose(rep["quintiles_true"]["bias"], 0.0)
    assert rep["quintiles_observed_truth"]["bias"][0] > 0.5
    assert rep["slope"] < 1 and rep["intercept"] > 0  # dilution of the OLS slope


def _xgpp(*args, timeout=600):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "xgpp.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


@pytest.mark.timeout(600)
def test_quick_experiment_end_to_end_and_resume(tmp_path):
    from xgpp.train import METHODS

    out = tmp_path / "exp"
    t0 = time.perf_counter()
    proc = _xgpp("experiment", "--quick", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = time.perf_counter() - t0
    rows = pd.read_csv(out / "metrics.csv")
    runs = rows[rows["split"].notna()]
    assert set(METHODS) <= set(runs["method"]), "every registered method runs"
    assert {"site-kfold", "igbp", "blocks"} <= set(runs["kind"])
    assert (runs["status"] == "ok").all(), runs[runs["status"] != "ok"][["method", "error"]]
    assert runs["field_r2"].notna().all() and runs["site_r2"].notna().all()
    assert rows["method"].str.startswith("ceiling").any()
    assert set(runs["sif_scale"]) == {0.5, 1.0, 2.0}
    moe = runs[runs["method"] == "moe"].iloc[0]
    assert np.isfinite(moe["sif_tracks_r2"]) and 0 < moe["sif_tracks_r2"] <= 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["summary"]["default"]["site-kfold"]["siftml"]["1"]["n"] == 1
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 8
    assert 'src="figures/' not in html and "<table" in html
    md = (out / "report.md").read_text()
    for fig in ("mean_maps", "density_scatter", "quintile_bias_true", "zonal_means",
                "seasonal_cycles", "annual_totals", "uncertainty_siftml",
                "sif_reconstruction_moe", "gates_moe"):
        assert f"figures/{fig}.png" in md and (out / "figures" / f"{fig}.png").stat().st_size
    # a rerun skips every finished run
    stamps = {p: p.stat().st_mtime for p in out.glob("runs/*/*/result.json")}
    t0 = time.perf_counter()
    proc = _xgpp("experiment", "--quick", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p: p.stat().st_mtime for p in out.glob("runs/*/*/result.json")} == stamps
    assert time.perf_counter() - t0 < first / 2


def test_a_failed_run_is_reported_not_hidden(tmp_path):
    from xgpp.experiment.plan import Run
    from xgpp.experiment.runner import run_pending
    from xgpp.synthetic import write_world

    write_world(str(tmp_path / "w"), resolution=10.0, start="2019-01-01", end="2019-12-31",
                progress=False)
    cfg = ExperimentConfig.quick_config(train={"strategy": "sideways"}, parallel=1)
    run = Run("w", "siftml", "site-kfold", "site-kfold:k=4,fold=0", 0)
    res = run_pending([run], {"w": str(tmp_path / "w" / "catalog.yaml")}, cfg,
                      tmp_path / "exp", progress=False)
    assert res[0]["status"] == "failed"
    assert "strategy='sideways'" in res[0]["error"]
    assert "Traceback" in res[0]["traceback"]
