"""The experiment's figures.

From the runs' reduced fields (small) and, for the ensemble uncertainty map and the SIF
reconstruction, one more streamed pass with the trained bundles.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from xgpp.experiment.config import ExperimentConfig
from xgpp.experiment.plan import Run

__all__ = ["FigureOut", "make_figures"]


@dataclass
class FigureOut:
    """A written figure, keyed for the report section that shows it."""

    key: str
    figure: Any  # xgpp.report.Figure


def _open(path: Path) -> xr.Dataset | None:
    try:
        with xr.open_dataset(path, engine="h5netcdf") as ds:
            return ds.load()
    except (OSError, ValueError):
        return None


def _pick(runs: list[Run], results: list[dict], rows: list[dict], world: str, kind: str,
          seed: int) -> dict[str, tuple[Run, dict]]:
    """Method -> (run, result) of the headline figure runs (one world, split, seed)."""
    from xgpp.experiment.summary import HEADLINE

    ok = {r.id: (r, res) for r, res in zip(runs, results, strict=True)
          if res.get("status") == "ok"}
    out = {}
    for r, res in ok.values():
        if r.world == world and r.kind == kind and r.seed == seed and r.sif_scale == 1.0 \
                and r.method in HEADLINE:
            out[r.method] = (r, res)
    sel = [x for x in rows if x["method"] == "siftml-selected" and x["world"] == world
           and x["kind"] == kind and x["seed"] == seed]
    if sel:
        chosen = sel[0]["selected_from"]
        for r, res in ok.values():
            if r.method == chosen and r.world == world and r.kind == kind and r.seed == seed \
                    and r.sif_scale == 1.0:
                out[f"siftml-selected ({chosen})"] = (r, res)
    return out


def make_figures(root: Path, cfg: ExperimentConfig, runs: list[Run], results: list[dict],
                 refs: dict[str, dict], rows: list[dict], *, console: Any = None
                 ) -> list[FigureOut]:
    """Write every report figure under ``OUT/figures`` and return them in report order."""
    from xgpp import plots
    from xgpp.report import Figure

    figdir = root / "figures"
    figdir.mkdir(exist_ok=True)
    first = next(iter(refs))
    kind = next((r.kind for r in runs if r.world == first), None)
    if kind is None:
        return []
    seed = cfg.seeds[0]
    ref = _open(root / "reference" / f"{first}.nc")
    period = f"{cfg.end_year - cfg.years + 1}-{cfg.end_year}"
    chosen = _pick(runs, results, rows, first, kind, seed)
    opened = {m: _open(root / "runs" / r.id / "reduced.nc") for m, (r, _) in chosen.items()}
    reduced = {m: d for m, d in opened.items() if d is not None}
    out: list[FigureOut] = []

    def add(key: str, path: Path, caption: str) -> None:
        out.append(FigureOut(key, Figure(path=path, caption=caption)))

    if ref is not None and reduced:
        means = {m: d["mean_pred"] for m, d in reduced.items()}
        add("maps", plots.plot_mean_maps(means, ref["truth_mean"], figdir / "mean_maps.png",
                                         period=period),
            f"Multi-year mean GPP: truth, each method (seed {seed}, split {kind}) and its "
            "error (method - truth).")
        zonal = {"truth": ref["truth_mean"].mean("lon", skipna=True)}
        zonal.update({m: d["mean_pred"].mean("lon", skipna=True) for m, d in reduced.items()})
        add("zonal", plots.plot_zonal_means(zonal, figdir / "zonal_means.png", period=period),
            "Zonal means of the multi-year mean GPP over land.")
        totals = {"truth": (np.asarray(refs[first]["years"]), np.asarray(refs[first]["totals"]))}
        for m, d in reduced.items():
            totals[m] = (d["annual"]["year"].values, d["annual"].values)
        add("totals", plots.plot_annual_totals(totals, figdir / "annual_totals.png",
                                               period=period),
            "Global annual GPP [PgC yr-1] per method against the truth and the literature "
            "range.")
    pairs = {m: (d["pairs_pred"].values, d["pairs_truth"].values) for m, d in reduced.items()
             if "pairs_pred" in d}
    if pairs:
        add("scatter", plots.plot_density_scatter(pairs, figdir / "density_scatter.png",
                                                  period=period),
            f"Predicted against true GPP on {cfg.pairs:,} seeded random land pixel-steps per "
            "method.")
    # bias by quintile, mean and sd over seeds (first world and split)
    from xgpp.experiment.summary import HEADLINE, summarise

    s = summarise(rows).get(first, {}).get(kind, {})
    for by in ("observed", "true"):
        key = "obs" if by == "observed" else "true"
        bias, spread = {}, {}
        for m, cells in s.items():
            c = cells.get("1", {})
            if f"bias_{key}_q1" in c and m in HEADLINE:  # the table holds every method
                bias[m] = np.array([c[f"bias_{key}_q{q}"]["mean"] for q in range(1, 6)])
                spread[m] = np.array([c[f"bias_{key}_q{q}"]["sd"] for q in range(1, 6)])
        if by == "observed":
            c = next((cells.get("1") for cells in s.values()
                      if "bias_truth_obs_q1" in cells.get("1", {})), None)
            if c:
                bias["truth itself"] = np.array([c[f"bias_truth_obs_q{q}"]["mean"]
                                                 for q in range(1, 6)])
                spread["truth itself"] = np.zeros(5)
        if bias:
            add("quintiles", plots.plot_quintile_bias(bias, figdir / f"quintile_bias_{by}.png",
                                                      by=by, spread=spread, period=period),
                f"Bias at held-out sites by quintile of {by} GPP (vegetated, non-frozen "
                "samples; mean ± sd over seeds).")
    series: dict[str, dict[str, xr.DataArray]] = {}
    igbp: dict[str, str] = {}
    for m, d in reduced.items():
        if "site_pred" not in d:
            continue
        for site in d["site"].values:
            sv = series.setdefault(str(site), {})
            sv["EC"] = d["site_obs"].sel(site=site)
            sv["truth"] = d["site_truth"].sel(site=site)
            sv[m] = d["site_pred"].sel(site=site)
            if "site_igbp" in d:
                igbp[str(site)] = str(d["site_igbp"].sel(site=site).values)
    if series:
        add("seasonal", plots.plot_seasonal_cycles(series, figdir / "seasonal_cycles.png",
                                                   igbp=igbp, period=period),
            f"GPP at held-out sites (seed {seed}, split {kind}): EC observations, truth and "
            "each method.")
    out += _ensemble(root, cfg, runs, results, refs, first, figdir, period, console)
    out += _multitask(root, cfg, runs, results, refs, first, kind, seed, figdir)
    hist = {}
    from xgpp.models import load_model

    for m in ("siftml", "ec-only", "moe"):
        if m in chosen:
            try:
                bundle = load_model(str(root / "runs" / chosen[m][0].id / "model"))
            except Exception:  # noqa: BLE001 - a figure is skipped, never the report
                continue
            for phase, recs in bundle.provenance.get("history", {}).items():
                hist[f"{m}: {phase}"] = recs
    if hist:
        add("curves", plots.plot_learning_curves(hist, figdir / "learning_curves.png"),
            "Learning curves (training and validation loss per epoch and phase).")
    return out


def _ensemble(root, cfg, runs, results, refs, first, figdir, period, console) -> list:
    """Per-pixel uncertainty from the spread of the trained ensemble (seeds and folds)."""
    from xgpp import plots
    from xgpp.catalog import open_catalog, open_cube
    from xgpp.models import load_model
    from xgpp.predict import predict
    from xgpp.report import Figure

    members = [r for r, res in zip(runs, results, strict=True)
               if res.get("status") == "ok" and r.world == first and r.method == "siftml"
               and r.sif_scale == 1.0]
    if len(members) < 2:
        return []
    bundles = [load_model(str(root / "runs" / r.id / "model")) for r in members]
    drivers = open_cube("drivers", catalog=open_catalog(refs[first]["catalog"]))
    ens = predict(drivers, bundles)
    import dask

    mean, std = dask.compute(ens["gpp"].mean("time"), ens["gpp_std"].mean("time"))
    path = plots.plot_uncertainty(mean, std, figdir / "uncertainty_siftml.png", period=period,
                                  label="SIFTML ensemble",
                                  members=len(bundles))
    return [FigureOut("uncertainty", Figure(
        path=path, caption=f"SIFTML ensemble of {len(bundles)} members (seeds and folds of "
                           "every split): time mean of the per-step ensemble mean and "
                           "standard deviation."))]


def _multitask(root, cfg, runs, results, refs, first, kind, seed, figdir) -> list:
    from xgpp import plots
    from xgpp.catalog import open_catalog, open_cube
    from xgpp.models import load_model
    from xgpp.report import Figure

    moe = next((r for r, res in zip(runs, results, strict=True)
                if res.get("status") == "ok" and r.world == first and r.method == "moe"
                and r.kind == kind and r.seed == seed), None)
    if moe is None:
        return []
    model = load_model(str(root / "runs" / moe.id / "model"))
    cat = open_catalog(refs[first]["catalog"])
    drivers, sif = open_cube("drivers", catalog=cat), open_cube("sif_oco2", catalog=cat)
    truth = open_cube("truth", catalog=cat)
    july = drivers["time"].sel(time=drivers["time"].dt.month == 7)
    step = july.values[len(july) // 2] if len(july) else drivers["time"].values[-1]
    rec = drivers.sel(time=[step]).gpp.predict(model)["sif"].isel(time=0)
    out = [FigureOut("sif", Figure(
        path=plots.plot_sif_reconstruction(
            rec, sif["sif"].sel(time=step), figdir / "sif_reconstruction_moe.png",
            truth=truth["sif"].sel(time=step) if "sif" in truth else None,
            title=f"MoE seamless SIF, {str(step)[:10]}"),
        caption="Seamless SIF reconstructed by the multi-task MoE beside the OCO-2-like "
                "soundings of that step and the true SIF."))]
    hist = model.provenance.get("history", {}).get("multitask")
    if hist:
        out.append(FigureOut("gates", Figure(
            path=plots.plot_gate_use(hist, figdir / "gates_moe.png"),
            caption="Expert utilisation per epoch: mean gate weight per expert and task, "
                    "and its entropy.")))
    return out
