"""Pictures people would rather look at than numbers: maps, scatter plots, time series (PNG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

__all__ = ["plot_maps", "plot_site_scatter"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


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
        arr.plot(ax=ax, cmap=cmap, cbar_kwargs={"label": "gC m-2 d-1"}, **lim)
        ax.set_title(f"{title}: {name}")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


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
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
