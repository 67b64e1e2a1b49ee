"""Scores of a GPP estimate against the truth field and against EC sites, computed by streaming."""

from __future__ import annotations

from typing import cast

import dask
import numpy as np
import xarray as xr

from xgpp.errors import InputError

__all__ = [
    "REGIONS",
    "VEGETATED",
    "annual_totals",
    "at_sites",
    "cell_area",
    "field_report",
    "field_report_from_moments",
    "field_scores",
    "moment_scores",
    "pair_scores",
    "pixel_moments",
    "quintile_bias",
    "scores",
    "site_report",
    "step_days",
]

#: latitude bands [degree] of the regional scores: name -> ``(min abs(lat), max abs(lat))``
REGIONS: dict[str, tuple[float, float]] = {
    "tropics": (0.0, 23.5),
    "temperate": (23.5, 50.0),
    "boreal": (50.0, 90.01),
}

#: IGBP classes counted as vegetated (not water 0, urban 13, snow and ice 15, barren 16)
VEGETATED: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14)


def pair_scores(pred: np.ndarray, obs: np.ndarray) -> dict[str, float]:
    """Scores of paired estimates and observations.

    R2 (1 - SSE/SST), Pearson r2, RMSE, bias, OLS slope and intercept of pred on obs, and the
    mean error in the lowest and highest observed deciles (over-/under-estimation at low/high
    GPP).  Units of RMSE, bias, intercept and decile errors are those of the inputs.
    """
    pred, obs = np.asarray(pred, float).ravel(), np.asarray(obs, float).ravel()
    ok = np.isfinite(pred) & np.isfinite(obs)
    p, o = pred[ok], obs[ok]
    if p.size < 3:
        raise InputError(f"only {p.size} pairs with finite prediction and observation; "
                         "need at least 3 to score.")
    err = p - o
    lo, hi = np.quantile(o, [0.1, 0.9])
    slope, intercept = np.polyfit(o, p, 1)
    return {
        "n": int(p.size),
        "r2": float(1 - np.sum(err**2) / np.sum((o - o.mean()) ** 2)),
        "pearson_r2": float(np.corrcoef(p, o)[0, 1] ** 2),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "bias": float(err.mean()),
        "slope": float(slope),
        "intercept": float(intercept),
        "bias_low_decile": float(err[o <= lo].mean()),
        "bias_high_decile": float(err[o >= hi].mean()),
    }


def _field_sums(pred: xr.DataArray, truth: xr.DataArray) -> tuple:
    """Lazy sums behind :func:`field_scores` (one pass over both arrays)."""
    pred, truth = xr.align(pred, truth, join="inner")
    ok = pred.notnull() & truth.notnull()
    p, o = pred.where(ok), truth.where(ok)
    return (ok.sum(), o.sum(), (o**2).sum(), ((p - o) ** 2).sum(), (p - o).sum(), p.sum(),
            (p**2).sum(), (p * o).sum())


def _field_finish(sums: tuple) -> dict[str, float]:
    n, so, soo, sse, se, sp, spp, spo = (float(s) for s in sums)
    if n < 3:
        raise InputError("prediction and truth share fewer than 3 finite pixels.")
    sst = soo - so**2 / n
    cov = spo - sp * so / n
    var_p = spp - sp**2 / n
    return {"n": int(n), "r2": 1 - sse / sst, "pearson_r2": cov**2 / (var_p * sst),
            "rmse": float(np.sqrt(sse / n)), "bias": se / n}


def field_scores(pred: xr.DataArray, truth: xr.DataArray) -> dict[str, float]:
    """Scores of a gridded estimate against the true field, streamed chunk by chunk.

    Both arrays share (time, lat, lon); only pixels where both are finite count.  Sums are dask
    reductions computed in one pass, so memory does not grow with the record.
    """
    return _field_finish(dask.compute(*_field_sums(pred, truth)))


def scores(pred: xr.DataArray, truth: xr.DataArray, sites: xr.Dataset
           ) -> tuple[dict[str, float], dict[str, float], xr.DataArray]:
    """Field scores, site scores and the estimate at the sites, from one pass over ``pred``.

    Returns ``(field, site, at)`` where ``at`` is ``pred`` at the sites on (site, time).
    """
    sums, at = dask.compute(_field_sums(pred, truth), at_sites(pred, sites))
    obs = sites["gpp"].sel(time=at["time"])
    return _field_finish(sums), pair_scores(at.values, np.asarray(obs.values)), at


def at_sites(field: xr.DataArray, sites: xr.Dataset) -> xr.DataArray:
    """Values of a gridded field at each site's grid cell (nearest cell), on (site, time)."""
    lat = xr.DataArray(sites["lat"].values, dims="site", coords={"site": sites["site"].values})
    lon = xr.DataArray(sites["lon"].values, dims="site", coords={"site": sites["site"].values})
    out = field.sel(lat=lat, lon=lon, method="nearest")
    return out.transpose("site", "time")


# --- the experiment's scores: streamed per-pixel moments, then every score from them ----------
#
# xskillscore's weighted r2/rmse/me are apply_ufunc reductions whose reduced dimensions must sit
# in one chunk, so on a (time, lat, lon) cube they would load the whole record.  The cube is
# therefore reduced chunk by chunk to per-pixel float64 moments over time (a plain dask sum);
# the overall, per-class and per-region scores follow exactly from those, and the map-level
# scores (spatial R2 of multi-year means) use xskillscore on the small (lat, lon) maps.

_MOMENTS = ("n", "sp", "so", "spp", "soo", "spo")


def pixel_moments(pred: xr.DataArray, truth: xr.DataArray) -> xr.Dataset:
    """Lazy per-pixel float64 moments over time of a (time, lat, lon) estimate and truth.

    Only steps where both are finite count.  Returns a Dataset on (lat, lon) with ``n``
    (count), ``sp``/``so`` (sums), ``spp``/``soo``/``spo`` (sums of squares and products);
    computing it streams both arrays chunk by chunk.
    """
    pred, truth = xr.align(pred, truth, join="inner")
    ok = pred.notnull() & truth.notnull()
    p = pred.astype("float64").where(ok, 0.0)
    o = truth.astype("float64").where(ok, 0.0)
    return xr.Dataset({"n": ok.sum("time").astype("float64"), "sp": p.sum("time"),
                       "so": o.sum("time"), "spp": (p * p).sum("time"),
                       "soo": (o * o).sum("time"), "spo": (p * o).sum("time")})


def moment_scores(m: xr.Dataset, weights: xr.DataArray | np.ndarray | None = None,
                  mask: xr.DataArray | np.ndarray | None = None) -> dict[str, float]:
    """R2, Pearson r2, RMSE and bias over all pixel-steps from :func:`pixel_moments` output.

    ``weights`` (lat, lon) weight each pixel's steps (cos latitude for area); ``mask`` selects
    pixels.  Exact in float64: SSE = sum w (spp - 2 spo + soo), SST about the weighted mean.
    Returns NaN scores (and ``n`` 0) when fewer than 3 pixel-steps remain.
    """
    arr = {k: np.asarray(m[k].values, dtype="float64") for k in _MOMENTS}
    w = np.ones_like(arr["n"]) if weights is None else np.broadcast_to(
        np.asarray(weights, dtype="float64"), arr["n"].shape)
    sel = arr["n"] > 0
    if mask is not None:
        sel &= np.broadcast_to(np.asarray(mask, bool), sel.shape)
    n = float(arr["n"][sel].sum())
    if n < 3:
        return {"n": int(n), "r2": float("nan"), "pearson_r2": float("nan"),
                "rmse": float("nan"), "bias": float("nan")}
    ws = w[sel]
    W = float((ws * arr["n"][sel]).sum())
    mp, mo = (ws * arr["sp"][sel]).sum() / W, (ws * arr["so"][sel]).sum() / W
    sse = (ws * (arr["spp"][sel] - 2 * arr["spo"][sel] + arr["soo"][sel])).sum()
    sst = (ws * arr["soo"][sel]).sum() - W * mo**2
    spp = (ws * arr["spp"][sel]).sum() - W * mp**2
    cov = (ws * arr["spo"][sel]).sum() - W * mp * mo
    return {"n": int(n), "r2": float(1 - sse / sst) if sst > 0 else float("nan"),
            "pearson_r2": float(cov**2 / (spp * sst)) if spp > 0 and sst > 0 else float("nan"),
            "rmse": float(np.sqrt(max(sse, 0.0) / W)), "bias": float(mp - mo)}


def _coslat(lat: xr.DataArray) -> xr.DataArray:
    return cast(xr.DataArray, np.cos(np.deg2rad(lat)).clip(0.0, None))


def field_report(pred: xr.DataArray, truth: xr.DataArray, igbp: xr.DataArray | None = None,
                 ) -> tuple[dict, xr.Dataset]:
    """Every field score of the experiment, from one streamed pass over ``pred`` and ``truth``.

    Parameters
    ----------
    pred, truth : xarray.DataArray
        GPP [gC m-2 d-1] on (time, lat, lon) (lazy is best).
    igbp : xarray.DataArray, optional
        Static IGBP class number on (lat, lon) for the per-class scores.

    Returns
    -------
    (scores, maps)
        ``scores``: ``overall`` (area-weighted R2, Pearson r2, RMSE, bias over every pixel-step),
        ``unweighted``, ``spatial_r2`` (area-weighted R2 of the multi-year mean maps, by
        xskillscore), ``by_igbp`` (class number -> area-weighted scores), ``by_region``
        (:data:`REGIONS` -> scores).  ``maps``: the multi-year means ``pred``/``truth`` and
        the count ``n`` on (lat, lon), for figures.
    """
    return field_report_from_moments(pixel_moments(pred, truth).compute(), igbp)


def field_report_from_moments(m: xr.Dataset, igbp: xr.DataArray | None = None
                              ) -> tuple[dict, xr.Dataset]:
    """:func:`field_report` from computed :func:`pixel_moments` (to share one pass)."""
    import xskillscore as xs

    w = _coslat(m["lat"]).broadcast_like(m["n"])
    out: dict = {"overall": moment_scores(m, w), "unweighted": moment_scores(m)}
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = (m["sp"] / m["n"]).where(m["n"] > 0)
        mean_o = (m["so"] / m["n"]).where(m["n"] > 0)
    ok = mean_p.notnull() & mean_o.notnull()
    out["spatial_r2"] = float(xs.r2(mean_o.where(ok), mean_p.where(ok), dim=["lat", "lon"],
                                    weights=w.where(ok, 0.0), skipna=True))
    if igbp is not None:
        cls = np.asarray(igbp.values).astype(int) if igbp.dims == ("lat", "lon") else \
            np.asarray(igbp.transpose("lat", "lon").values).astype(int)
        out["by_igbp"] = {int(k): moment_scores(m, w, cls == k)
                          for k in np.unique(cls[np.asarray(m["n"].values) > 0])}
    alat = np.abs(m["lat"].values)[:, None] * np.ones(m["n"].shape)
    out["by_region"] = {name: moment_scores(m, w, (alat >= lo) & (alat < hi))
                        for name, (lo, hi) in REGIONS.items()}
    maps = xr.Dataset({"pred": mean_p.astype("float32"), "truth": mean_o.astype("float32"),
                       "n": m["n"]})
    return out, maps


def step_days(time: xr.DataArray | np.ndarray) -> np.ndarray:
    """Days each time step stands for: to the next step, never across 1 January.

    Time stamps are step starts (the xgpp convention); the last step of a year ends on the
    next 1 January, so 8-day MODIS steps give 46 steps summing to the year's length.
    """
    import pandas as pd

    t = pd.DatetimeIndex(np.asarray(time))
    if len(t) == 0:
        return np.zeros(0)
    next_year = pd.DatetimeIndex([pd.Timestamp(year=y + 1, month=1, day=1) for y in t.year])
    nxt = np.append(t[1:].values, next_year[-1:].values)
    days = (np.minimum(nxt, next_year.values) - t.values) / np.timedelta64(1, "D")
    return days.astype("float64")


#: mean Earth radius [m] (IUGG)
EARTH_RADIUS = 6_371_008.8


def cell_area(lat: xr.DataArray, lon: xr.DataArray) -> xr.DataArray:
    """Area [m2] of regular grid cells centred on ``lat``/``lon`` (spherical Earth)."""
    dlat = float(np.abs(np.diff(lat.values)).mean()) if lat.size > 1 else 180.0
    dlon = float(np.abs(np.diff(lon.values)).mean()) if lon.size > 1 else 360.0
    lat1 = np.deg2rad(np.clip(lat.values - dlat / 2, -90, 90))
    lat2 = np.deg2rad(np.clip(lat.values + dlat / 2, -90, 90))
    band = EARTH_RADIUS**2 * np.deg2rad(dlon) * (np.sin(lat2) - np.sin(lat1))
    return xr.DataArray(np.repeat(band[:, None], lon.size, axis=1), dims=("lat", "lon"),
                        coords={"lat": lat.values, "lon": lon.values},
                        attrs={"units": "m2", "long_name": "grid cell area"})


def annual_totals(gpp: xr.DataArray) -> xr.DataArray:
    """Global GPP per calendar year [PgC yr-1] of a (time, lat, lon) field, lazily.

    Each step counts for :func:`step_days` days; NaN (ocean, ice) counts as 0.  A year the
    record covers only in part is summed over the steps it has (``attrs["days"]`` says how
    many days each year holds).
    """
    days = xr.DataArray(step_days(gpp["time"]), dims="time", coords={"time": gpp["time"]})
    area = cell_area(gpp["lat"], gpp["lon"])
    per_step = (gpp.astype("float64").fillna(0.0) * area).sum(("lat", "lon")) * days
    total = per_step.groupby("time.year").sum() / 1e15
    total.attrs = {"units": "PgC yr-1", "long_name": "global gross primary productivity",
                   "days": days.groupby("time.year").sum().values.tolist()}
    return total.rename("gpp_total")


def quintile_bias(pred: np.ndarray, obs: np.ndarray, by: np.ndarray) -> dict[str, list]:
    """Mean error ``pred - obs`` in the five quintiles of ``by`` (Q1 lowest).

    Returns ``{"edges": 6 quantiles of by, "bias": 5 means, "n": 5 counts}``.  Binning by the
    observation (``by=obs``) mixes the estimate's error with the observation's own noise
    (regression dilution: even the truth looks biased high at low and low at high observed
    values); binning by the true value isolates the estimate's conditional bias.
    """
    pred, obs, by = (np.asarray(a, float).ravel() for a in (pred, obs, by))
    ok = np.isfinite(pred) & np.isfinite(obs) & np.isfinite(by)
    if ok.sum() < 10:
        return {"edges": [], "bias": [float("nan")] * 5, "n": [0] * 5}
    p, o, b = pred[ok], obs[ok], by[ok]
    edges = np.quantile(b, np.linspace(0, 1, 6))
    q = np.clip(np.searchsorted(edges, b, side="right") - 1, 0, 4)
    err = p - o
    return {"edges": edges.tolist(),
            "bias": [float(err[q == i].mean()) if (q == i).any() else float("nan")
                     for i in range(5)],
            "n": [int((q == i).sum()) for i in range(5)]}


def site_report(pred: np.ndarray, obs: np.ndarray, *, truth: np.ndarray | None = None,
                tair: np.ndarray | None = None, igbp: np.ndarray | None = None
                ) -> dict[str, object]:
    """Scores at held-out sites as the literature reports them.

    Parameters
    ----------
    pred, obs : array
        Estimated and EC-observed GPP [gC m-2 d-1], paired (any shape, flattened).
    truth : array, optional
        True GPP at the same samples (twin world only).
    tair : array, optional
        Air temperature [degC]: quintiles use non-frozen samples (``tair > 0``) only.
    igbp : array, optional
        IGBP class number: quintiles use vegetated samples (:data:`VEGETATED`) only.

    Returns
    -------
    dict
        :func:`pair_scores` of ``pred`` against ``obs``, plus ``quintiles_observed`` (bias by
        quintile of observed GPP) and, with ``truth``, ``quintiles_true`` (bias against the
        truth by quintile of true GPP) and ``quintiles_observed_truth`` (the truth itself
        scored against the observations by quintile of observed GPP: the regression-dilution
        reference any estimate shares).
    """
    pred, obs = np.asarray(pred, float).ravel(), np.asarray(obs, float).ravel()
    out: dict[str, object] = dict(pair_scores(pred, obs))
    keep = np.ones(pred.shape, bool)
    if tair is not None:
        keep &= np.asarray(tair, float).ravel() > 0
    if igbp is not None:
        keep &= np.isin(np.asarray(igbp).ravel().astype(int), VEGETATED)
    out["quintile_samples"] = int((keep & np.isfinite(obs)).sum())
    out["quintiles_observed"] = quintile_bias(pred[keep], obs[keep], obs[keep])
    if truth is not None:
        t = np.asarray(truth, float).ravel()
        out["quintiles_true"] = quintile_bias(pred[keep], t[keep], t[keep])
        out["quintiles_observed_truth"] = quintile_bias(t[keep], obs[keep], obs[keep])
    return out
