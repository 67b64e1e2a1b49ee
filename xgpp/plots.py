"""Pictures people would rather look at than numbers: maps, scatter plots, time series (PNG).

The ``plot_*`` functions take small, already-reduced in-memory data (means, zonal profiles,
tables), draw one figure with matplotlib's Agg backend and constrained layout, write it as a PNG
and close it, and return the path written.  Units are those of xgpp's canonical variables: GPP in
gC m-2 d-1, global totals in PgC yr-1, SIF in mW m-2 nm-1 sr-1.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from xgpp.errors import InputError

__all__ = [
    "GPP_UNITS",
    "SIF_UNITS",
    "TOTAL_UNITS",
    "density_annotation",
    "plot_annual_totals",
    "plot_density_scatter",
    "plot_gate_use",
    "plot_learning_curves",
    "plot_maps",
    "plot_mean_maps",
    "plot_quintile_bias",
    "plot_seasonal_cycles",
    "plot_sif_reconstruction",
    "plot_site_scatter",
    "plot_uncertainty",
    "plot_zonal_means",
]

GPP_UNITS = "gC m$^{-2}$ d$^{-1}$"
TOTAL_UNITS = "PgC yr$^{-1}$"
SIF_UNITS = "mW m$^{-2}$ nm$^{-1}$ sr$^{-1}$"

#: Resolution of the PNGs written by the ``plot_*`` functions [dots per inch].
DPI = 130
#: Points drawn in a density panel at most; more are subsampled (seeded) before binning.
MAX_DENSITY_POINTS = 2_000_000

# Readable in a talk: larger than matplotlib's defaults, light grid, no top/right spines.
_RC = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "figure.titlesize": 13,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": False,
    "grid.color": "0.85",
    "grid.linewidth": 0.6,
    "savefig.dpi": DPI,
    "savefig.facecolor": "white",
    "figure.facecolor": "white",
}
# Colours of the methods, in the order they are given (truth is always thick black).
_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
            "#17becf", "#bcbd22", "#7f7f7f")


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path, dpi: int = DPI) -> Path:
    """Lay out (if the figure has no layout engine), write the PNG and free the figure."""
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    _plt().close(fig)
    return path


@contextmanager
def _figure(nrows: int, ncols: int, figsize: tuple[float, float], **kw) -> Iterator:
    """A constrained-layout figure in xgpp's style, closed even when drawing fails."""
    plt = _plt()
    with plt.rc_context(_RC):
        fig, axes = plt.subplots(nrows, ncols, figsize=figsize, layout="constrained",
                                 squeeze=False, **kw)
        try:
            yield fig, axes
        finally:
            plt.close(fig)


def _headline(fig, title: str | None, period: str | None) -> None:
    """Figure title with the period shown on a second line."""
    lines = [t for t in (title, period) if t]
    if lines:
        fig.suptitle("\n".join(lines))


def _colour(i: int) -> str:
    return _COLOURS[i % len(_COLOURS)]


def _grid_shape(n: int, max_cols: int = 4) -> tuple[int, int]:
    """Rows and columns for ``n`` panels, at most ``max_cols`` wide and balanced across rows."""
    rows = math.ceil(n / max_cols)
    return rows, math.ceil(n / rows)


def _require(items: Mapping, what: str) -> None:
    if not items:
        raise InputError(f"{what} is empty; pass at least one entry to plot.")


# ------------------------------------------------------------ figures of the demo workflows

def plot_maps(pred: xr.DataArray, truth: xr.DataArray | None, path: str | Path,
              title: str = "GPP") -> Path:
    """Maps of time-mean GPP [gC m-2 d-1]: estimate, truth and their difference."""
    plt = _plt()
    mean_p = pred.mean("time").compute()
    panels = [("estimate", mean_p, "viridis")]
    if truth is not None:
        mean_t = truth.sel(time=pred.time).mean("time").compute()
        panels += [("truth", mean_t, "viridis"), ("estimate - truth", mean_p - mean_t, "RdBu_r")]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.2), squeeze=False)
    vmax = float(np.nanpercentile(mean_p.values, 99)) or 1.0
    for ax, (name, arr, cmap) in zip(axes[0], panels, strict=True):
        lim = ({"vmin": -vmax / 3, "vmax": vmax / 3} if cmap == "RdBu_r" else {"vmin": 0, "vmax": vmax})
        style: dict[str, Any] = {"cmap": cmap, "cbar_kwargs": {"label": "gC m-2 d-1"}, **lim}
        arr.plot(ax=ax, **style)
        ax.set_title(f"{title}: {name}")
    return _save(fig, path)


def plot_site_scatter(estimates: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path) -> Path:
    """Scatter of estimated vs EC GPP [gC m-2 d-1] at held-out sites, one panel per method."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(estimates), figsize=(4 * len(estimates), 4), squeeze=False)
    for ax, (name, (est, obs)) in zip(axes[0], estimates.items(), strict=True):
        ok = np.isfinite(est) & np.isfinite(obs)
        ax.scatter(obs[ok], est[ok], s=3, alpha=0.3)
        top = float(np.nanmax(obs[ok])) if ok.any() else 1.0
        ax.plot([0, top], [0, top], "k--", lw=1)
        ax.set_xlabel("EC GPP [gC m-2 d-1]")
        ax.set_ylabel("estimated GPP [gC m-2 d-1]")
        ax.set_title(name)
    return _save(fig, path)


def plot_sif_reconstruction(pred: xr.DataArray, tracks: xr.DataArray, path: str | Path, *,
                            truth: xr.DataArray | None = None, title: str = "SIF") -> Path:
    """One step's sparse track SIF, the seamless reconstruction and (twin world) the truth.

    All panels share one colour scale [mW m-2 nm-1 sr-1].
    """
    plt = _plt()
    panels = [("OCO-2-like tracks", tracks), ("reconstructed", pred)]
    if truth is not None:
        panels.append(("truth", truth))
    vmax = float(np.nanpercentile(np.asarray(pred.values), 99)) or 1.0
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.2), squeeze=False)
    for ax, (name, arr) in zip(axes[0], panels, strict=True):
        arr.plot(ax=ax, cmap="YlGn", vmin=0, vmax=vmax,  # type: ignore[call-arg]  # (xarray)
                 cbar_kwargs={"label": "SIF [mW m-2 nm-1 sr-1]"})
        ax.set_title(f"{title}: {name}")
    return _save(fig, path)


def plot_gate_use(history: list[dict], path: str | Path, *, title: str = "MoE gates") -> Path:
    """Expert utilisation per epoch: mean gate weight of each expert, one panel per task.

    ``history`` is a phase's per-epoch records with a ``"gates"`` entry (the MoE's training
    history); the normalised entropy of the mean gate is in each panel's title.
    """
    plt = _plt()
    recs = [r for r in history if r.get("gates")]
    tasks = list(recs[0]["gates"]) if recs else []
    fig, axes = plt.subplots(1, max(1, len(tasks)), figsize=(4.5 * max(1, len(tasks)), 3.2),
                             squeeze=False)
    epochs = [r["epoch"] for r in recs]
    for ax, task in zip(axes[0], tasks, strict=False):
        means = np.array([r["gates"][task]["mean"] for r in recs])
        for e in range(means.shape[1]):
            ax.plot(epochs, means[:, e], marker="o", ms=3, label=f"expert {e}")
        ax.axhline(1.0 / means.shape[1], color="k", lw=0.8, ls=":", label="uniform")
        ent = recs[-1]["gates"][task]["normalised_entropy"]
        ax.set_title(f"{title}: {task} task (entropy {ent:.2f} of 1)")
        ax.set_xlabel("epoch")
        ax.set_ylabel("mean gate weight [1]")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------- maps

def _as_map(da: xr.DataArray, name: str) -> xr.DataArray:
    """``da`` as an in-memory (lat, lon) field, lon in -180..180 and both axes ascending."""
    if not isinstance(da, xr.DataArray):
        raise TypeError(f"map {name!r} must be an xarray.DataArray on (lat, lon); "
                        f"got {type(da).__name__}.")
    da = da.squeeze(drop=True)
    if set(da.dims) != {"lat", "lon"}:
        raise InputError(f"map {name!r} must have exactly the dims (lat, lon); got {da.dims}. "
                         "Reduce over time (e.g. .mean('time')) before plotting.")
    da = da.transpose("lat", "lon")
    lon = da["lon"].values
    if np.nanmax(lon) > 180:
        da = da.assign_coords(lon=((da["lon"] + 180) % 360) - 180)
    return da.sortby("lat").sortby("lon").astype(float).compute()


def _area_mean(da: xr.DataArray) -> float:
    """Area-weighted (cos latitude) mean of the finite cells of a (lat, lon) field."""
    w = np.broadcast_to(np.cos(np.deg2rad(da["lat"].values))[:, None], da.shape)
    v = da.values
    ok = np.isfinite(v)
    return float(np.sum(v[ok] * w[ok]) / np.sum(w[ok])) if ok.any() else float("nan")


def _degrees(v: float, pos: str, neg: str) -> str:
    v = round(float(v))
    return "0°" if v == 0 else f"{abs(v)}°{pos if v > 0 else neg}"


def _draw_map(ax, da: xr.DataArray, *, cmap, norm):
    """One (lat, lon) field as a pcolormesh on equal-aspect lon/lat axes; returns the mesh."""
    from matplotlib.ticker import FuncFormatter, MultipleLocator

    mesh = ax.pcolormesh(da["lon"].values, da["lat"].values, np.ma.masked_invalid(da.values),
                         cmap=cmap, norm=norm, shading="auto", rasterized=True)
    ax.set_facecolor("0.93")  # cells without data (ocean, ice) in light grey
    lat = da["lat"].values
    half = float(np.abs(np.diff(lat)).min()) / 2 if lat.size > 1 else 0.5
    ax.set_xlim(-180, 180)
    ax.set_ylim(max(-90.0, float(lat.min()) - half), min(90.0, float(lat.max()) + half))
    ax.set_aspect("equal")
    ax.xaxis.set_major_locator(MultipleLocator(60))
    ax.yaxis.set_major_locator(MultipleLocator(30))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _degrees(v, "E", "W")))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: _degrees(v, "N", "S")))
    ax.tick_params(labelsize=8)
    for side in ("top", "right"):
        ax.spines[side].set_visible(True)
    return mesh


def _gpp_limit(fields: Sequence[xr.DataArray]) -> float:
    vals = np.concatenate([f.values.ravel() for f in fields])
    vals = vals[np.isfinite(vals)]
    top = float(np.percentile(vals, 99)) if vals.size else 1.0
    return top if top > 0 else 1.0


def _symmetric_limit(fields: Sequence[xr.DataArray]) -> float:
    vals = np.abs(np.concatenate([f.values.ravel() for f in fields]))
    vals = vals[np.isfinite(vals)]
    top = float(np.percentile(vals, 98)) if vals.size else 1.0
    return top if top > 0 else 1.0


def plot_mean_maps(means: Mapping[str, xr.DataArray], truth: xr.DataArray, path: str | Path, *,
                   period: str | None = None, title: str | None = "Multi-year mean GPP",
                   units: str = GPP_UNITS, max_cols: int = 4) -> Path:
    """Maps of multi-year mean GPP: the truth, each method, and each method's error below it.

    Mean maps share one sequential colour scale (``YlGn``, 0 to the 99th percentile of all
    panels); error maps (method - truth) share one diverging scale (``RdBu_r``) symmetric about
    0 at the 98th percentile of ``|error|``.  Each panel title gives the area-weighted (cos latitude)
    mean, each error title the area-weighted bias and RMSE.  Panels wrap after ``max_cols``.

    Parameters
    ----------
    means : mapping of str to xarray.DataArray
        Method name -> mean GPP on (lat, lon) [``units``], 1 to 10 methods.
    truth : xarray.DataArray
        The true mean GPP on the same (lat, lon) grid [``units``].
    path : str or Path
        PNG to write.
    period : str, optional
        Period the means cover (e.g. ``"2015-2019"``), shown under the title.
    title : str, optional
        Figure title.
    units : str
        Unit label of the colour bars (matplotlib mathtext).
    max_cols : int
        Most panels in one row.

    Returns
    -------
    Path
        The PNG written.
    """
    from matplotlib.colors import Normalize

    _require(means, "means")
    plt = _plt()
    truth_map = _as_map(truth, "truth")
    maps, errors = {}, {}
    for name, da in means.items():
        m = _as_map(da, name)
        try:
            m, t = xr.align(m, truth_map, join="exact")
        except ValueError as err:
            raise InputError(f"mean map {name!r} is not on the truth's (lat, lon) grid "
                             f"({m.sizes} vs {truth_map.sizes}); regrid it first.") from err
        maps[name], errors[name] = m, m - t
    panels = [("truth", truth_map), *maps.items()]
    nrow_blocks, ncols = _grid_shape(len(panels), max_cols)
    gpp_norm = Normalize(0, _gpp_limit([truth_map, *maps.values()]))
    lim = _symmetric_limit(list(errors.values()))
    err_norm = Normalize(-lim, lim)
    gpp_cmap, err_cmap = plt.get_cmap("YlGn"), plt.get_cmap("RdBu_r")
    # one extra narrow column holds the colour bars, so every map has the same size
    with _figure(2 * nrow_blocks, ncols + 1, (4.0 * ncols + 1.0, 4.9 * nrow_blocks),
                 gridspec_kw={"width_ratios": [1.0] * ncols + [0.035]}) as (fig, axes):
        for block in range(nrow_blocks):
            row_mean, row_err = axes[2 * block], axes[2 * block + 1]
            chunk = panels[block * ncols:(block + 1) * ncols]
            mean_mesh = err_mesh = None
            for col in range(ncols):
                ax, eax = row_mean[col], row_err[col]
                if col >= len(chunk):
                    ax.axis("off")
                    eax.axis("off")
                    continue
                name, field = chunk[col]
                mean_mesh = _draw_map(ax, field, cmap=gpp_cmap, norm=gpp_norm)
                ax.set_title(f"{name}  (mean {_area_mean(field):.2f})")
                if name == "truth" and block == 0 and col == 0:
                    eax.axis("off")
                    eax.text(0.5, 0.5, "error = method − truth\n(maps in this row)",
                             ha="center", va="center", transform=eax.transAxes, color="0.35")
                    continue
                diff = errors[name]
                err_mesh = _draw_map(eax, diff, cmap=err_cmap, norm=err_norm)
                bias, rmse = _area_mean(diff), math.sqrt(_area_mean(diff**2))
                eax.set_title(f"{name} − truth  (bias {round(bias, 2) + 0.0:+.2f}, "
                              f"RMSE {rmse:.2f})")
            fig.colorbar(mean_mesh, cax=row_mean[-1], extend="max", label=f"GPP [{units}]")
            if err_mesh is not None:
                fig.colorbar(err_mesh, cax=row_err[-1], extend="both",
                             label=f"error [{units}]")
            else:
                row_err[-1].axis("off")
        _headline(fig, title, period)
        return _save(fig, path)


def plot_uncertainty(mean: xr.DataArray, std: xr.DataArray, path: str | Path, *,
                     period: str | None = None, label: str = "ensemble",
                     title: str | None = None, members: int | None = None, cv: bool = True,
                     cv_min_mean: float = 0.5, units: str = GPP_UNITS) -> Path:
    """Maps of an ensemble's mean GPP, its standard deviation and (optionally) its CV.

    Parameters
    ----------
    mean, std : xarray.DataArray
        Ensemble mean and standard deviation of GPP on (lat, lon) [``units``].
    path : str or Path
        PNG to write.
    period : str, optional
        Period covered, shown under the title.
    label : str
        What the ensemble is (e.g. ``"5 seeds"`` or ``"MoE ensemble"``), used in panel titles.
    title : str, optional
        Figure title; default ``"GPP uncertainty across the <label>"``.
    members : int, optional
        Number of ensemble members; default the ``members`` attribute of ``std`` if set.
    cv : bool
        Also draw the coefficient of variation std/mean [%].
    cv_min_mean : float
        The CV is masked where the mean is below this [``units``] (CV blows up near 0).
    units : str
        Unit label of the colour bars.

    Returns
    -------
    Path
        The PNG written.
    """
    from matplotlib.colors import Normalize

    plt = _plt()
    m, s = _as_map(mean, "mean"), _as_map(std, "std")
    try:
        m, s = xr.align(m, s, join="exact")
    except ValueError as err:
        raise InputError(f"ensemble mean and std are on different grids ({m.sizes} vs "
                         f"{s.sizes}).") from err
    members = members if members is not None else std.attrs.get("members")
    panels = [(f"{label} mean", m, plt.get_cmap("YlGn"), Normalize(0, _gpp_limit([m])),
               f"GPP [{units}]", "max"),
              (f"{label} standard deviation", s, plt.get_cmap("magma_r"),
               Normalize(0, _gpp_limit([s])), f"standard deviation [{units}]", "max")]
    if cv:
        ratio = (100 * s / m).where(m >= cv_min_mean)
        top = float(np.nanpercentile(ratio.values, 98)) if np.isfinite(ratio.values).any() else 1
        panels.append((f"coefficient of variation (mean ≥ {cv_min_mean:g})", ratio,
                       plt.get_cmap("viridis"), Normalize(0, top or 1.0), "CV [%]", "max"))
    with _figure(1, len(panels), (4.6 * len(panels), 3.3)) as (fig, axes):
        for ax, (name, field, cmap, norm, cbar, extend) in zip(axes[0], panels, strict=True):
            mesh = _draw_map(ax, field, cmap=cmap, norm=norm)
            ax.set_title(name)
            fig.colorbar(mesh, ax=ax, orientation="horizontal", shrink=0.85, extend=extend,
                         label=cbar, pad=0.02)
        _headline(fig, title or f"GPP uncertainty across the {label}"
                  + (f" ({members} members)" if members is not None else ""), period)
        return _save(fig, path)


# ----------------------------------------------------------------------------- density scatter

def _scatter_stats(pred: np.ndarray, obs: np.ndarray) -> dict[str, float]:
    """:func:`xgpp.evaluate.pair_scores` plus the OLS intercept (pred = slope * obs + b)."""
    from xgpp.evaluate import pair_scores

    p, o = np.asarray(pred, float).ravel(), np.asarray(obs, float).ravel()
    stats = pair_scores(p, o)
    ok = np.isfinite(p) & np.isfinite(o)
    stats["intercept"] = float(p[ok].mean() - stats["slope"] * o[ok].mean())
    return stats


def density_annotation(pred: np.ndarray, obs: np.ndarray) -> tuple[str, dict[str, float]]:
    """The text a density-scatter panel carries, and the scores it was made from.

    Scores are :func:`xgpp.evaluate.pair_scores` over all finite pairs: R2 = 1 - SSE/SST
    (against the 1:1 line), RMSE [units of the inputs] and the OLS slope of pred on obs.

    Returns
    -------
    text : str
        Four lines: ``R² = 0.812``, ``RMSE = 1.23``, ``slope = 0.91``, ``n = 12,345``.
    stats : dict
        The scores (``r2``, ``rmse``, ``slope``, ``intercept``, ``n``, ...).
    """
    stats = _scatter_stats(pred, obs)
    text = (f"R² = {stats['r2']:.3f}\nRMSE = {stats['rmse']:.2f}\n"
            f"slope = {stats['slope']:.2f}\nn = {stats['n']:,}")
    return text, stats


def plot_density_scatter(pairs: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | Path,
                         *, xlabel: str = "true GPP", ylabel: str = "predicted GPP",
                         units: str = GPP_UNITS, title: str | None = "Predicted vs true GPP",
                         period: str | None = None, bins: int = 80, seed: int = 0,
                         max_cols: int = 4) -> Path:
    """Density scatter of predicted vs reference values, one panel per method.

    Each panel is a 2-D histogram (log colour scale, one colour bar "samples" for all panels)
    with the 1:1 line, the OLS fit of pred on obs, and R2, RMSE, slope and n written on it
    (:func:`density_annotation`; scores use all finite pairs).  More than
    :data:`MAX_DENSITY_POINTS` pairs are subsampled (seeded) for the histogram only.

    Parameters
    ----------
    pairs : mapping of str to (ndarray, ndarray)
        Method name -> (pred, obs), same shape [``units``].
    path : str or Path
        PNG to write.
    xlabel, ylabel : str
        Axis quantities; ``[units]`` is appended.
    units : str
        Unit of both axes (matplotlib mathtext).
    title, period : str, optional
        Figure title and period shown under it.
    bins : int
        Histogram bins per axis.
    seed : int
        Seed of the subsampling.
    max_cols : int
        Most panels in one row.

    Returns
    -------
    Path
        The PNG written.
    """
    from matplotlib.colors import LogNorm

    _require(pairs, "pairs")
    plt = _plt()
    clean = {}
    for name, pair in pairs.items():
        try:
            pred, obs = pair
        except (TypeError, ValueError) as err:
            raise InputError(f"pairs[{name!r}] must be a (pred, obs) tuple of arrays.") from err
        pred, obs = np.asarray(pred, float).ravel(), np.asarray(obs, float).ravel()
        if pred.shape != obs.shape:
            raise InputError(f"pairs[{name!r}]: pred has {pred.size} values but obs has "
                             f"{obs.size}; they must pair one to one.")
        ok = np.isfinite(pred) & np.isfinite(obs)
        clean[name] = (pred[ok], obs[ok])
    allv = np.concatenate([np.concatenate(v) for v in clean.values()])
    if allv.size == 0:
        raise InputError("no finite (pred, obs) pairs in any method; nothing to plot.")
    lo, hi = np.percentile(allv, [0.1, 99.9])
    lo, hi = min(0.0, float(lo)), float(hi) if hi > lo else float(lo) + 1
    edges = np.linspace(lo, hi, bins + 1)
    rng = np.random.default_rng(seed)
    hists, notes = {}, {}
    for name, (pred, obs) in clean.items():
        n = pred.size
        if n > MAX_DENSITY_POINTS:
            idx = rng.choice(n, MAX_DENSITY_POINTS, replace=False)
            pred_s, obs_s = pred[idx], obs[idx]
            notes[name] = f"density from {MAX_DENSITY_POINTS:,} of {n:,} pairs"
        else:
            pred_s, obs_s = pred, obs
        hists[name] = np.histogram2d(obs_s, pred_s, bins=[edges, edges])[0].T
    top = max(float(h.max()) for h in hists.values()) or 1.0
    norm = LogNorm(1, max(top, 2.0))
    cmap = plt.get_cmap("viridis").with_extremes(bad="white")
    nrows, ncols = _grid_shape(len(clean), max_cols)
    with _figure(nrows, ncols, (3.7 * ncols + 1.0, 3.6 * nrows + 0.6)) as (fig, axes):
        flat = axes.ravel()
        mesh = None
        for ax, (name, (pred, obs)) in zip(flat, clean.items(), strict=False):
            h = np.ma.masked_less(hists[name], 1)
            mesh = ax.pcolormesh(edges, edges, h, cmap=cmap, norm=norm, rasterized=True)
            ax.plot([lo, hi], [lo, hi], color="k", ls="--", lw=1, label="1:1")
            if pred.size >= 3:
                text, stats = density_annotation(pred, obs)
                xs = np.array([lo, hi])
                ax.plot(xs, stats["slope"] * xs + stats["intercept"], color="#d62728", lw=1.5,
                        label="OLS fit")
            else:
                text = f"n = {pred.size} (too few to score)"
            ax.text(0.03, 0.97, text, transform=ax.transAxes, va="top", ha="left", fontsize=9,
                    bbox={"boxstyle": "round", "fc": "white", "ec": "0.7", "alpha": 0.85})
            if name in notes:
                ax.text(0.98, 0.02, notes[name], transform=ax.transAxes, ha="right",
                        va="bottom", fontsize=7, color="0.35")
            ax.set_xlim(lo, hi)
            ax.set_ylim(lo, hi)
            ax.set_aspect("equal")
            ax.set_title(name)
            ax.set_xlabel(f"{xlabel} [{units}]")
            ax.set_ylabel(f"{ylabel} [{units}]")
            ax.legend(loc="lower right", fontsize=8, frameon=False,
                      bbox_to_anchor=(1.0, 0.06) if name in notes else None)
        for ax in flat[len(clean):]:
            ax.axis("off")
        fig.colorbar(mesh, ax=[a for a in flat if a.axison], shrink=0.8, pad=0.02,
                     label="samples")
        _headline(fig, title, period)
        return _save(fig, path)


# --------------------------------------------------------------------------------- bias by bin

_BY = {"observed": "observed", "obs": "observed", "ec": "observed",
       "true": "true", "truth": "true"}
_BY_TEXT = {
    "observed": ("Bias by quintile of observed (EC) GPP",
                 "Bins are quintiles of the observed (noisy EC) GPP. Noise in the binning "
                 "variable alone (regression dilution) makes the lowest bins look over- and the "
                 "highest under-estimated, even for an unbiased model."),
    "true": ("Bias by quintile of true GPP",
             "Bins are quintiles of the true (noise-free) GPP of the twin world, so the bars are "
             "free of regression dilution: they show the methods' own bias."),
}


def plot_quintile_bias(bias: Mapping[str, np.ndarray], path: str | Path, *,
                       by: str = "observed", spread: Mapping[str, np.ndarray] | None = None,
                       title: str | None = None, period: str | None = None,
                       units: str = GPP_UNITS) -> Path:
    """Grouped bars of the mean bias (pred - obs) in quintile bins of GPP.

    Parameters
    ----------
    bias : mapping of str to ndarray
        Method name -> mean bias in each bin, lowest bin first [``units``]; usually 5 bins
        (Q1 lowest .. Q5 highest), all methods the same number.
    path : str or Path
        PNG to write.
    by : {"observed", "true"}
        Variable the bins were made from: the observed EC GPP (``"observed"``, also ``"obs"``,
        ``"EC"``) or the twin world's true GPP (``"true"``, also ``"truth"``).  The title and
        caption say which, because binning by a noisy observation adds regression dilution.
    spread : mapping of str to ndarray, optional
        Method name -> standard deviation of the bias over seeds [``units``], drawn as error
        bars.
    title, period : str, optional
        Figure title (default from ``by``) and period shown under it.
    units : str
        Unit of the bias axis.

    Returns
    -------
    Path
        The PNG written.
    """
    _require(bias, "bias")
    key = _BY.get(str(by).lower())
    if key is None:
        raise InputError(f"by={by!r} is not a binning variable; use 'observed' (EC GPP) or "
                         "'true' (the twin world's true GPP).")
    values = {k: np.asarray(v, float).ravel() for k, v in bias.items()}
    nbin = {v.size for v in values.values()}
    if len(nbin) != 1:
        raise InputError("every method needs the same number of bins; got "
                         + ", ".join(f"{k}: {v.size}" for k, v in values.items()) + ".")
    k = nbin.pop()
    spread = dict(spread or {})
    for name, s in spread.items():
        if np.asarray(s).size != k:
            raise InputError(f"spread[{name!r}] has {np.asarray(s).size} values; bias has {k} "
                             "bins.")
    default_title, caption = _BY_TEXT[key]
    width = 0.8 / len(values)
    x = np.arange(k)
    with _figure(1, 1, (max(6.5, 1.2 * k + 0.4 * len(values) * k / 2), 4.4)) as (fig, axes):
        ax = axes[0][0]
        for i, (name, v) in enumerate(values.items()):
            err = np.asarray(spread[name], float).ravel() if name in spread else None
            ax.bar(x + (i - (len(values) - 1) / 2) * width, v, width * 0.92, yerr=err,
                   color=_colour(i), label=name, capsize=3 if err is not None else 0,
                   error_kw={"elinewidth": 1, "ecolor": "0.2"})
        ax.axhline(0, color="k", lw=0.8)
        labels = [f"Q{j + 1}" for j in range(k)]
        if k > 1:
            labels[0] += "\n(lowest)"
            labels[-1] += "\n(highest)"
        ax.set_xticks(x, labels)
        what = "observed (EC) GPP" if key == "observed" else "true GPP"
        ax.set_xlabel(f"{'quintile' if k == 5 else 'quantile bin'} of {what}")
        ax.set_ylabel(f"bias, predicted − observed [{units}]" if key == "observed"
                      else f"bias, predicted − true [{units}]")
        ax.yaxis.grid(True)
        ax.set_axisbelow(True)
        ax.legend(ncols=min(len(values), 4), frameon=False,
                  title="error bars: ±1 sd over seeds" if spread else None)
        import textwrap

        fig.supxlabel(textwrap.fill(caption, 110), fontsize=8.5, style="italic", color="0.25")
        _headline(fig, title or default_title, period)
        return _save(fig, path)


# ---------------------------------------------------------------------------------- line plots

def _one_d(da, name: str) -> xr.DataArray:
    if not isinstance(da, xr.DataArray):
        raise TypeError(f"{name!r} must be an xarray.DataArray; got {type(da).__name__}.")
    da = da.squeeze(drop=True)
    if da.ndim != 1:
        raise InputError(f"{name!r} must be 1-D; got dims {da.dims}. Reduce it first.")
    return da.compute()


def plot_zonal_means(zonal: Mapping[str, xr.DataArray], path: str | Path, *,
                     truth_key: str = "truth", title: str | None = "Zonal mean GPP",
                     period: str | None = None, units: str = GPP_UNITS,
                     quantity: str = "GPP") -> Path:
    """Zonal-mean profiles: GPP on x, latitude on y, truth as a thick black line.

    Parameters
    ----------
    zonal : mapping of str to xarray.DataArray
        Name -> zonal mean on the ``lat`` dim [``units``]; the entry ``truth_key`` (if present)
        is drawn thick black, the others as coloured lines.
    path : str or Path
        PNG to write.
    truth_key : str
        Key of the reference profile.
    title, period : str, optional
        Figure title and period shown under it.
    units, quantity : str
        Unit and name of the x axis.

    Returns
    -------
    Path
        The PNG written.
    """
    from matplotlib.ticker import FuncFormatter, MultipleLocator

    _require(zonal, "zonal")
    lines = {}
    for name, da in zonal.items():
        da = _one_d(da, name)
        if da.dims != ("lat",):
            raise InputError(f"zonal profile {name!r} must be on the 'lat' dim; got {da.dims}.")
        lines[name] = da.sortby("lat")
    with _figure(1, 1, (5.2, 5.6)) as (fig, axes):
        ax = axes[0][0]
        lats = []
        for i, (name, da) in enumerate(item for item in lines.items() if item[0] != truth_key):
            ax.plot(da.values, da["lat"].values, color=_colour(i), lw=1.6, label=name)
            lats.append(da["lat"].values)
        if truth_key in lines:
            t = lines[truth_key]
            ax.plot(t.values, t["lat"].values, color="k", lw=3, label=truth_key, zorder=5)
            lats.append(t["lat"].values)
        lat = np.concatenate(lats)
        ax.set_ylim(max(-90.0, float(lat.min()) - 2), min(90.0, float(lat.max()) + 2))
        ax.set_xlim(left=0)
        ax.axhline(0, color="0.6", lw=0.6, ls=":")
        ax.yaxis.set_major_locator(MultipleLocator(30))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: _degrees(v, "N", "S")))
        ax.set_xlabel(f"zonal mean {quantity} [{units}]")
        ax.set_ylabel("latitude [°N]")
        ax.grid(True)
        ax.legend(frameon=False, loc="best")
        _headline(fig, title, period)
        return _save(fig, path)


def plot_seasonal_cycles(series: Mapping[str, Mapping[str, xr.DataArray]], path: str | Path, *,
                         obs_key: str = "EC", truth_key: str = "truth",
                         igbp: Mapping[str, str] | None = None,
                         title: str | None = "GPP at flux-tower sites",
                         period: str | None = None, units: str = GPP_UNITS,
                         max_cols: int = 4) -> Path:
    """Small multiples of GPP through time (or day of year), one panel per site.

    EC observations are dots, the truth a black line, the methods coloured lines (the same
    colour for a method in every panel, one legend for the figure).

    Parameters
    ----------
    series : mapping of str to mapping of str to xarray.DataArray
        Site code -> {name: 1-D GPP on ``time`` (datetime) or ``dayofyear``} [``units``].
    path : str or Path
        PNG to write.
    obs_key, truth_key : str
        Names of the EC observations and of the truth in each site's mapping.
    igbp : mapping of str to str, optional
        Site code -> IGBP land-cover class for the panel titles; default the ``igbp``
        attribute of the site's series, if any.
    title, period : str, optional
        Figure title and period shown under it.
    units : str
        Unit of the y axis.
    max_cols : int
        Most panels in one row.

    Returns
    -------
    Path
        The PNG written.
    """
    import matplotlib.dates as mdates

    _require(series, "series")
    igbp = dict(igbp or {})
    methods: list[str] = []
    for site, named in series.items():
        _require(named, f"series[{site!r}]")
        methods += [k for k in named if k not in (obs_key, truth_key) and k not in methods]
    colour = {m: _colour(i) for i, m in enumerate(methods)}
    nrows, ncols = _grid_shape(len(series), max_cols)
    handles: dict[str, object] = {}
    with _figure(nrows, ncols, (3.9 * ncols, 2.9 * nrows + 0.9), sharey=True) as (fig, axes):
        flat = axes.ravel()
        for ax, (site, named) in zip(flat, series.items(), strict=False):
            dated = False
            order = [k for k in named if k == obs_key] + [k for k in named if k == truth_key]
            order += [k for k in named if k not in order]
            for name in order:
                da = _one_d(named[name], f"series[{site!r}][{name!r}]")
                x, y = da[da.dims[0]].values, da.values
                dated = dated or np.issubdtype(x.dtype, np.datetime64)
                if name == obs_key:
                    (h,) = ax.plot(x, y, "o", ms=2.5, color="0.35", alpha=0.7, label=name,
                                   zorder=1)
                elif name == truth_key:
                    (h,) = ax.plot(x, y, color="k", lw=2.2, label=name, zorder=3)
                else:
                    (h,) = ax.plot(x, y, color=colour[name], lw=1.3, label=name, zorder=4)
                handles.setdefault(name, h)
                cls = igbp.get(site) or da.attrs.get("igbp")
                if cls:
                    igbp.setdefault(site, str(cls))
            ax.set_title(f"{site} ({igbp[site]})" if site in igbp else site)
            dim = _one_d(next(iter(named.values())), site).dims[0]
            if dated:
                loc = mdates.AutoDateLocator(minticks=3, maxticks=7)
                ax.xaxis.set_major_locator(loc)
                ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(loc))
            else:
                ax.set_xlabel("day of year" if dim in ("dayofyear", "doy") else dim)
            ax.grid(True)
        flat[0].autoscale_view()
        flat[0].set_ylim(bottom=min(0.0, flat[0].get_ylim()[0]))  # shared by all panels
        for row in axes:
            row[0].set_ylabel(f"GPP [{units}]")
        for ax in flat[len(series):]:
            ax.axis("off")
        order = [k for k in (obs_key, truth_key) if k in handles] + methods
        fig.legend([handles[k] for k in order], order, loc="outside lower center",
                   ncols=min(len(order), 6), frameon=False, markerscale=2)
        _headline(fig, title, period)
        return _save(fig, path)


LITERATURE_LABEL = "literature range, e.g. Beer et al. 2010; Jung et al. 2020; Badgley et al. 2019"


def plot_annual_totals(totals: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | Path, *,
                       literature: tuple[float, float] | None = (120.0, 170.0),
                       truth_key: str = "truth", title: str | None = "Global annual GPP",
                       period: str | None = None,
                       literature_label: str = LITERATURE_LABEL) -> Path:
    """Global annual GPP per year and method, with the literature range shaded.

    Parameters
    ----------
    totals : mapping of str to (ndarray, ndarray)
        Name -> (years, global totals [PgC yr-1]); ``truth_key`` is drawn thick black.
    path : str or Path
        PNG to write.
    literature : (float, float), optional
        Lower and upper published global GPP [PgC yr-1], shaded; ``None`` leaves it out.
    truth_key : str
        Key of the reference series.
    title, period : str, optional
        Figure title and period shown under it.
    literature_label : str
        Legend text of the shaded range.

    Returns
    -------
    Path
        The PNG written.
    """
    from matplotlib.ticker import MaxNLocator

    _require(totals, "totals")
    clean = {}
    for name, pair in totals.items():
        try:
            years, vals = (np.asarray(a).ravel() for a in pair)
        except (TypeError, ValueError) as err:
            raise InputError(f"totals[{name!r}] must be a (years, totals) tuple.") from err
        if years.size != vals.size:
            raise InputError(f"totals[{name!r}]: {years.size} years but {vals.size} totals.")
        clean[name] = (years.astype(float), vals.astype(float))
    import textwrap

    with _figure(1, 1, (9.0, 4.4)) as (fig, axes):
        ax = axes[0][0]
        if literature is not None:
            lo, hi = literature
            text = f"{literature_label} ({lo:g}–{hi:g} {TOTAL_UNITS})"
            ax.axhspan(lo, hi, color="0.85", alpha=0.7, lw=0, zorder=0,
                       label=textwrap.fill(text, 34))
        i = 0
        for name, (years, vals) in clean.items():
            label = f"{name} (mean {np.nanmean(vals):.0f})" if vals.size else name
            if name == truth_key:
                ax.plot(years, vals, color="k", lw=3, marker="o", ms=5, label=label, zorder=5)
            else:
                ax.plot(years, vals, color=_colour(i), lw=1.6, marker="o", ms=4, label=label,
                        zorder=4)
                i += 1
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("year")
        ax.set_ylabel(f"global GPP [{TOTAL_UNITS}]")
        ax.yaxis.grid(True)
        ax.set_axisbelow(True)
        handles, labels = ax.get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside right upper", frameon=False, fontsize=8.5)
        _headline(fig, title, period)
        return _save(fig, path)


def plot_learning_curves(histories: Mapping[str, Sequence[Mapping]], path: str | Path, *,
                         title: str | None = "Learning curves", period: str | None = None
                         ) -> Path:
    """Training and validation loss per epoch, one panel per training phase.

    The epoch with the lowest validation loss is marked; loss parts (``parts`` /
    ``val_parts`` dicts of the records, when more than one) are thin dashed lines.  The y axis
    is logarithmic when every loss is positive.

    Parameters
    ----------
    histories : mapping of str to sequence of dict
        Phase name -> per-epoch records with ``epoch``, ``train_loss`` and ``val_loss``
        (``None`` without validation), as :func:`xgpp.train.loop` writes them.
    path : str or Path
        PNG to write.
    title, period : str, optional
        Figure title and a subtitle.

    Returns
    -------
    Path
        The PNG written.
    """
    _require(histories, "histories")
    nrows, ncols = _grid_shape(len(histories), 3)
    with _figure(nrows, ncols, (4.6 * ncols, 3.5 * nrows + 0.4)) as (fig, axes):
        flat = axes.ravel()
        for ax, (phase, recs) in zip(flat, histories.items(), strict=False):
            recs = list(recs)
            if not recs:
                ax.text(0.5, 0.5, "no epochs recorded", ha="center", transform=ax.transAxes)
                ax.set_title(phase)
                continue
            missing = [k for k in ("epoch", "train_loss") if k not in recs[0]]
            if missing:
                raise InputError(f"history of phase {phase!r} lacks {missing}; records need "
                                 f"'epoch', 'train_loss' and 'val_loss' (got {sorted(recs[0])}).")
            ep = np.array([r["epoch"] for r in recs], float)
            train = np.array([r["train_loss"] for r in recs], float)
            val = np.array([np.nan if r.get("val_loss") is None else r["val_loss"]
                            for r in recs], float)
            values = [train, val]
            ax.plot(ep, train, color="#1f77b4", lw=1.8, marker="o", ms=3, label="train")
            if np.isfinite(val).any():
                ax.plot(ep, val, color="#d62728", lw=1.8, marker="o", ms=3, label="validation")
                b = int(np.nanargmin(val))
                ax.axvline(ep[b], color="0.5", ls=":", lw=1)
                ax.plot(ep[b], val[b], "*", color="#d62728", ms=11,
                        label=f"best val {val[b]:.3g} (epoch {ep[b]:g})")
            for key, style, colour in (("parts", "--", "#1f77b4"), ("val_parts", ":", "#d62728")):
                names = sorted({n for r in recs for n in (r.get(key) or {})})
                if len(names) < 2:
                    continue
                for j, part in enumerate(names):
                    v = np.array([(r.get(key) or {}).get(part, np.nan) for r in recs], float)
                    values.append(v)
                    ax.plot(ep, v, ls=style, lw=0.9, color=colour, alpha=0.45 + 0.5 * j / len(names),
                            label=f"{'train' if key == 'parts' else 'val'} part: {part}")
            allv = np.concatenate(values)
            allv = allv[np.isfinite(allv)]
            if allv.size and (allv > 0).all():
                ax.set_yscale("log")
            ax.set_title(phase)
            ax.set_xlabel("epoch")
            ax.set_ylabel("loss (training objective)")
            ax.grid(True, which="both")
            ax.legend(fontsize=7.5, frameon=False)
        for ax in flat[len(histories):]:
            ax.axis("off")
        _headline(fig, title, period)
        return _save(fig, path)
