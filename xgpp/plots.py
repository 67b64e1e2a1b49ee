"""Pictures people would rather look at than numbers: maps, scatter plots, time series (PNG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

__all__ = ["plot_gate_use", "plot_maps", "plot_site_scatter", "plot_sif_reconstruction"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    """Lay out, write the PNG and free the figure."""
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    _plt().close(fig)
    return path


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
        arr.plot(ax=ax, cmap="YlGn", vmin=0, vmax=vmax,
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
