"""Scores of a GPP estimate against the truth field and against EC sites, computed by streaming."""

from __future__ import annotations

import dask
import numpy as np
import xarray as xr

__all__ = ["at_sites", "field_scores", "pair_scores", "scores"]


def pair_scores(pred: np.ndarray, obs: np.ndarray) -> dict[str, float]:
    """Scores of paired estimates and observations.

    R2 (1 - SSE/SST), Pearson r2, RMSE, bias, OLS slope of pred on obs, and the mean error in
    the lowest and highest observed deciles (over-/under-estimation at low/high GPP).  Units of RMSE, bias and decile errors are those of the inputs.
    """
    pred, obs = np.asarray(pred, float).ravel(), np.asarray(obs, float).ravel()
    ok = np.isfinite(pred) & np.isfinite(obs)
    p, o = pred[ok], obs[ok]
    if p.size < 3:
        raise ValueError(f"only {p.size} pairs with finite prediction and observation; "
                         "need at least 3 to score.")
    err = p - o
    lo, hi = np.quantile(o, [0.1, 0.9])
    return {
        "n": int(p.size),
        "r2": float(1 - np.sum(err**2) / np.sum((o - o.mean()) ** 2)),
        "pearson_r2": float(np.corrcoef(p, o)[0, 1] ** 2),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "bias": float(err.mean()),
        "slope": float(np.polyfit(o, p, 1)[0]),
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
        raise ValueError("prediction and truth share fewer than 3 finite pixels.")
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
