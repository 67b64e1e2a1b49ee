"""Figures of xgpp.plots on tiny synthetic data: PNGs of the promised size and content, no leaks."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import xarray as xr  # noqa: E402

from xgpp import plots  # noqa: E402
from xgpp.evaluate import pair_scores  # noqa: E402

LAT = np.arange(-55.0, 80.0, 10.0)
LON = np.arange(-175.0, 180.0, 10.0)


@pytest.fixture(autouse=True)
def _no_figure_leaks():
    plt.close("all")
    yield
    assert plt.get_fignums() == [], "a plot function left a figure open"


def field(values: np.ndarray) -> xr.DataArray:
    return xr.DataArray(values, dims=("lat", "lon"), coords={"lat": LAT, "lon": LON})


@pytest.fixture
def truth() -> xr.DataArray:
    la, lo = np.meshgrid(LAT, LON, indexing="ij")
    gpp = 8 * np.exp(-((la / 25) ** 2)) + np.cos(np.deg2rad(lo)) ** 2
    gpp[(la < 10) & (lo > -20) & (lo < 40)] = np.nan  # a patch without data
    return field(gpp)


def png(path) -> np.ndarray:
    assert path.is_file() and path.stat().st_size > 5_000, path
    return mpimg.imread(path)


def size_px(figsize: tuple[float, float]) -> tuple[int, int]:
    """(height, width) of a PNG written at plots.DPI."""
    return round(figsize[1] * plots.DPI), round(figsize[0] * plots.DPI)


def share(img: np.ndarray, test) -> float:
    """Fraction of the image's pixels for which ``test(r, g, b)`` holds."""
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    return float(test(r, g, b).mean())


def greens(r, g, b):
    return (g > r + 0.15) & (g > b + 0.15)


def reds(r, g, b):
    return (r > g + 0.25) & (r > b + 0.25)


def blues(r, g, b):
    return (b > r + 0.25) & (b > g + 0.05)


def test_mean_maps_grid_colours_and_wrapping(tmp_path, truth):
    rng = np.random.default_rng(1)
    means = {"high": truth + 1.0 + 0.1 * rng.normal(size=truth.shape), "low": truth - 1.0,
             "noisy": truth + rng.normal(size=truth.shape), "same": truth}
    img = png(plots.plot_mean_maps(means, truth, tmp_path / "maps.png", period="2015-2019"))
    # truth + 4 methods = 5 panels: 2 blocks of 3 map columns (+ colour-bar column), each
    # block a row of means above a row of errors
    assert img.shape[:2] == size_px((4.0 * 3 + 1.0, 2 * 4.9))
    assert share(img, greens) > 0.05  # YlGn means
    assert share(img, reds) > 0.01 and share(img, blues) > 0.01  # errors of both signs


def test_maps_take_0_360_longitudes_and_refuse_other_grids(tmp_path, truth):
    shifted = truth.assign_coords(lon=(truth["lon"] % 360)).sortby("lon")
    back = plots._as_map(shifted, "a")
    xr.testing.assert_identical(back, truth)  # lon back on -180..180, ascending
    coarse = truth.isel(lat=slice(0, None, 2))
    with pytest.raises(ValueError, match=r"mean map 'a' is not on the truth's"):
        plots.plot_mean_maps({"a": coarse}, truth, tmp_path / "bad.png")
    with pytest.raises(ValueError, match=r"'a' must have exactly the dims \(lat, lon\)"):
        plots.plot_mean_maps({"a": truth.expand_dims(time=2)}, truth, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_density_annotation_matches_the_scores():
    rng = np.random.default_rng(0)
    obs = rng.gamma(2.0, 2.0, 500)
    pred = 0.8 * obs + 0.5 + rng.normal(0, 1, obs.size)
    pred[:7] = np.nan  # non-finite pairs are left out of the scores
    text, stats = plots.density_annotation(pred, obs)
    ref = pair_scores(pred, obs)
    assert stats["r2"] == pytest.approx(ref["r2"])
    ok = np.isfinite(pred)
    r2 = 1 - np.sum((pred[ok] - obs[ok]) ** 2) / np.sum((obs[ok] - obs[ok].mean()) ** 2)
    slope, intercept = np.polyfit(obs[ok], pred[ok], 1)
    assert stats["slope"] == pytest.approx(slope) and stats["intercept"] == pytest.approx(intercept)
    lines = text.splitlines()
    assert lines[0] == f"R² = {r2:.3f}"
    assert lines[1] == f"RMSE = {np.sqrt(np.mean((pred[ok] - obs[ok]) ** 2)):.2f}"
    assert lines[2] == f"slope = {slope:.2f}"
    assert lines[3] == "n = 493"


def test_density_scatter_subsamples_and_checks_pairs(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    obs = rng.gamma(2.0, 2.0, 3000)
    pairs = {"good": (obs + rng.normal(0, 0.3, obs.size), obs),
             "biased": (0.6 * obs + 1, obs), "few": (obs[:2], obs[:2])}
    monkeypatch.setattr(plots, "MAX_DENSITY_POINTS", 1000)  # exercise the subsampling path
    img = png(plots.plot_density_scatter(pairs, tmp_path / "d.png", period="2016"))
    assert img.shape[:2] == size_px((3.7 * 3 + 1.0, 3.6 + 0.6))
    assert share(img, lambda r, g, b: (g > 0.5) & (b < 0.3) & (r > 0.3)) > 0  # viridis yellows
    with pytest.raises(ValueError, match=r"pairs\['x'\]: pred has 3 values but obs has 2"):
        plots.plot_density_scatter({"x": (np.ones(3), np.ones(2))}, tmp_path / "bad.png")


def test_quintile_bias_by_observed_and_true(tmp_path):
    bias = {"A": [0.6, 0.2, 0.0, -0.3, -0.8], "B": np.array([0.3, 0.1, 0.0, -0.1, -0.2])}
    spread = {"A": [0.1] * 5}
    obs = png(plots.plot_quintile_bias(bias, tmp_path / "obs.png", by="observed", spread=spread))
    true = png(plots.plot_quintile_bias(bias, tmp_path / "true.png", by="truth"))
    assert obs.shape == true.shape
    assert not np.array_equal(obs, true)  # the title/caption say which variable binned
    assert share(obs, reds) > 0.01 and share(obs, blues) > 0.01  # both methods' bars
    with pytest.raises(ValueError, match="by='sif' is not a binning variable"):
        plots.plot_quintile_bias(bias, tmp_path / "x.png", by="sif")
    with pytest.raises(ValueError, match="same number of bins"):
        plots.plot_quintile_bias({"A": [1, 2, 3, 4, 5], "B": [1, 2]}, tmp_path / "x.png")


def test_zonal_means_and_annual_totals(tmp_path, truth):
    zonal = {"truth": truth.mean("lon"), "A": truth.mean("lon") * 1.1}
    img = png(plots.plot_zonal_means(zonal, tmp_path / "z.png", period="2015-2019"))
    assert img.shape[:2] == size_px((5.2, 5.6))
    assert share(img, lambda r, g, b: (r + g + b) < 0.3) > 0.002  # the thick black truth
    with pytest.raises(ValueError, match="'A' must be on the 'lat' dim"):
        plots.plot_zonal_means({"A": truth.mean("lat")}, tmp_path / "bad.png")

    years = np.arange(2015, 2020)
    totals = {"truth": (years, np.full(5, 140.0)), "A": (years, np.linspace(110, 180, 5))}
    img = png(plots.plot_annual_totals(totals, tmp_path / "t.png", period="2015-2019"))
    assert img.shape[:2] == size_px((9.0, 4.4))
    no_band = png(plots.plot_annual_totals(totals, tmp_path / "t0.png", literature=None))
    grey = share(img, lambda r, g, b: (abs(r - 0.88) < 0.04) & (abs(g - b) < 0.01))
    assert grey > share(no_band, lambda r, g, b: (abs(r - 0.88) < 0.04) & (abs(g - b) < 0.01))
    with pytest.raises(ValueError, match=r"totals\['A'\]: 5 years but 4 totals"):
        plots.plot_annual_totals({"A": (years, np.ones(4))}, tmp_path / "bad.png")


def test_seasonal_cycles_dates_and_day_of_year(tmp_path):
    time = pd.date_range("2015-01-01", "2016-12-31", freq="8D")
    doy = np.arange(1, 366, 8)
    cyc = 5 + 4 * np.sin(2 * np.pi * time.day_of_year.values / 365)

    def da(values, dim="time", coord=time, **attrs):
        return xr.DataArray(values, dims=dim, coords={dim: coord}, attrs=attrs)

    series = {"DE-Hai": {"EC": da(cyc + 0.5), "truth": da(cyc, igbp="DBF"), "A": da(cyc * 0.9)},
              "BR-Sa1": {"EC": da(cyc - 0.5), "truth": da(cyc), "B": da(cyc * 1.1)},
              "FI-Hyy": {"truth": da(np.sin(doy / 58.0), "dayofyear", doy)}}
    img = png(plots.plot_seasonal_cycles(series, tmp_path / "s.png", igbp={"BR-Sa1": "EBF"},
                                         period="2015-2016"))
    assert img.shape[:2] == size_px((3.9 * 3, 2.9 + 0.9))
    with pytest.raises(ValueError, match=r"series\['X'\]\['A'\].* must be 1-D"):
        plots.plot_seasonal_cycles({"X": {"A": xr.DataArray(np.ones((2, 2)))}},
                                   tmp_path / "bad.png")


def test_uncertainty_maps(tmp_path, truth):
    std = (0.1 * truth + 0.05).assign_attrs(members=5)
    img = png(plots.plot_uncertainty(truth, std, tmp_path / "u.png", period="2015-2019"))
    assert img.shape[:2] == size_px((4.6 * 3, 3.3))
    assert share(img, greens) > 0.02  # the mean panel
    with pytest.raises(ValueError, match="ensemble mean and std are on different grids"):
        plots.plot_uncertainty(truth, std.isel(lon=slice(1, None)), tmp_path / "bad.png")


def test_learning_curves_with_and_without_validation(tmp_path):
    hist = {"pretrain": [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e + 0.02 * e,
                          "parts": {"gpp": 0.6 / e, "sif": 0.4 / e}} for e in range(1, 11)],
            "finetune": [{"epoch": e, "train_loss": 0.5 - 0.01 * e, "val_loss": None}
                         for e in range(1, 6)]}
    img = png(plots.plot_learning_curves(hist, tmp_path / "l.png"))
    assert img.shape[:2] == size_px((4.6 * 2, 3.5 + 0.4))
    with pytest.raises(ValueError, match=r"phase 'p' lacks \['train_loss'\]"):
        plots.plot_learning_curves({"p": [{"epoch": 1}]}, tmp_path / "bad.png")  # fig closed


def test_demo_workflow_plots_still_work(tmp_path, truth):
    time = pd.date_range("2015-01-01", periods=3, freq="MS")
    cube = xr.concat([truth] * 3, dim=xr.DataArray(time, dims="time", name="time"))
    png(plots.plot_maps(cube * 1.1, cube, tmp_path / "m.png"))
    obs = np.linspace(0, 10, 50)
    png(plots.plot_site_scatter({"A": (obs * 0.9, obs)}, tmp_path / "s.png"))
