"""From run results to metrics.json/csv, the tables, the figures and the report."""

from __future__ import annotations

import json
import math
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from xgpp.experiment.config import ExperimentConfig
from xgpp.experiment.plan import Run

__all__ = ["flatten", "select_variants", "summarise", "write_outputs"]

#: methods shown in the map, scatter and seasonal figures when present (others: tables only)
HEADLINE = ("pmodel", "ec-only", "sif-only", "siftml", "siftml-selected", "moe")

#: flat metric columns: name -> (path into a result record, format)
COLUMNS: dict[str, tuple[tuple[str | int, ...], str]] = {
    "field_r2": (("field", "overall", "r2"), ".3f"),
    "field_rmse": (("field", "overall", "rmse"), ".2f"),
    "field_bias": (("field", "overall", "bias"), "+.2f"),
    "spatial_r2": (("field", "spatial_r2"), ".3f"),
    "tropics_r2": (("field", "by_region", "tropics", "r2"), ".3f"),
    "temperate_r2": (("field", "by_region", "temperate", "r2"), ".3f"),
    "boreal_r2": (("field", "by_region", "boreal", "r2"), ".3f"),
    "site_r2": (("sites", "r2"), ".3f"),
    "site_rmse": (("sites", "rmse"), ".2f"),
    "site_bias": (("sites", "bias"), "+.2f"),
    "site_slope": (("sites", "slope"), ".2f"),
    "site_intercept": (("sites", "intercept"), "+.2f"),
    "sif_tracks_r2": (("tracks", "r2"), ".3f"),
    "sif_tracks_rmse": (("tracks", "rmse"), ".3f"),
    "sif_field_r2": (("sif_field", "r2"), ".3f"),
}
for _q in range(5):
    COLUMNS[f"bias_obs_q{_q + 1}"] = (("sites", "quintiles_observed", "bias", _q), "+.2f")
    COLUMNS[f"bias_true_q{_q + 1}"] = (("sites", "quintiles_true", "bias", _q), "+.2f")
    COLUMNS[f"bias_truth_obs_q{_q + 1}"] = (("sites", "quintiles_observed_truth", "bias", _q),
                                            "+.2f")


def _get(rec: Any, path: tuple) -> float:
    for p in path:
        if isinstance(rec, dict) and p in rec:
            rec = rec[p]
        elif isinstance(rec, list) and isinstance(p, int) and p < len(rec):
            rec = rec[p]
        else:
            return float("nan")
    try:
        return float(rec)
    except (TypeError, ValueError):
        return float("nan")


def _final_val(res: dict) -> float:
    hist = res.get("history") or {}
    if not hist:
        return float("nan")
    last = hist[list(hist)[-1]]
    v = last.get("best_val_loss")
    return float(v) if v is not None else float("nan")


def flatten(results: list[dict]) -> list[dict]:
    """One flat row per run: identity, status, every :data:`COLUMNS` metric, seconds."""
    rows = []
    for res in results:
        run = res.get("run", {})
        row: dict[str, Any] = {k: run.get(k) for k in ("world", "method", "kind", "split",
                                                       "seed", "sif_scale")}
        row["status"] = res.get("status", "missing")
        row["error"] = res.get("error", "")
        for name, (path, _) in COLUMNS.items():
            row[name] = _get(res, path)
        row["val_loss"] = _final_val(res)
        row["seconds"] = _get(res, ("seconds", "total"))
        row["selected_from"] = res.get("selected_from", "")
        rows.append(row)
    return rows


def select_variants(rows: list[dict], prefix: str = "siftml") -> list[dict]:
    """``siftml-selected`` rows: per (world, split, seed), the best SIFTML variant.

    Best is the lowest validation loss on the validation sites inside the training fold
    (never the test sites).
    Every variant stays in the table; the selected row copies the chosen run's scores and
    names it in ``selected_from``.
    """
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if (r["status"] == "ok" and str(r["method"]).startswith(prefix)
                and r["sif_scale"] == 1.0 and math.isfinite(r["val_loss"])):
            groups[(r["world"], r["split"].split(";")[0], r["seed"])].append(r)
    out = []
    for (_w, _s, _seed), cand in groups.items():
        if len(cand) < 2:
            continue
        best = min(cand, key=lambda r: r["val_loss"])
        out.append({**best, "method": f"{prefix}-selected", "selected_from": best["method"]})
    return out


def _agg(rows: list[dict], keys: tuple[str, ...]) -> dict[tuple, dict]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[tuple(r[k] for k in keys)].append(r)
    out = {}
    for key, rs in groups.items():
        ok = [r for r in rs if r["status"] == "ok"]
        cell: dict[str, Any] = {"n": len(ok),
                                "failed": sum(r["status"] == "failed" for r in rs),
                                "pending": sum(r["status"] not in ("ok", "failed") for r in rs)}
        for name in COLUMNS:
            v = np.array([r[name] for r in ok], float)
            v = v[np.isfinite(v)]
            if len(v):
                cell[name] = {"mean": float(v.mean()),
                              "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": len(v)}
        out[key] = cell
    return out


def summarise(rows: list[dict]) -> dict[str, Any]:
    """Mean and sd over seeds per (world, split kind, method, SIF scale), as nested dicts."""
    agg = _agg(rows, ("world", "kind", "method", "sif_scale"))
    out: dict[str, Any] = {}
    for (w, kind, m, f), cell in agg.items():
        out.setdefault(w, {}).setdefault(kind, {}).setdefault(m, {})[f"{f:g}"] = cell
    return out


def _cell(cell: dict | None, name: str) -> str:
    if not cell or name not in cell:
        return "-"
    fmt = COLUMNS[name][1]
    c = cell[name]
    return f"{c['mean']:{fmt}} ± {c['sd']:.3f}" if c["n"] > 1 else f"{c['mean']:{fmt}}"


def _methods_order(summary_kind: dict) -> list[str]:
    from xgpp.train import METHODS

    order = [m for m in METHODS if m in summary_kind]
    return order + [m for m in summary_kind if m not in order]


def _claims(summary: dict, first: str, kind: str) -> list[str]:
    """Plain statements of which claims hold on this experiment, with the numbers."""
    s = summary.get(first, {}).get(kind, {})
    lines = []

    def get(m: str, name: str) -> tuple[float, float, int] | None:
        c = s.get(m, {}).get("1", {}).get(name)
        return (c["mean"], c["sd"], c["n"]) if c else None

    def versus(a: str, b: str, name: str, label: str) -> None:
        x, y = get(a, name), get(b, name)
        if not x or not y:
            return
        diff = x[0] - y[0]
        noise = math.hypot(x[1], y[1])
        verdict = ("higher" if diff > 0 else "lower") if abs(diff) > max(noise, 1e-9) else \
            "indistinguishable (difference within the spread over seeds)"
        lines.append(f"{label}: **{a}** {x[0]:.3f} ± {x[1]:.3f} vs **{b}** {y[0]:.3f} ± "
                     f"{y[1]:.3f} (n={x[2]}/{y[2]}): {a} is {verdict}.")

    for base in ("sif-only", "ec-only"):
        for name, label in (("field_r2", "Field R2 (spatial generalisation, truth field)"),
                            ("site_r2", "R2 at held-out sites")):
            versus("siftml", base, name, label)
            if "siftml-selected" in s:
                versus("siftml-selected", base, name, label)
    for q, label in (("bias_true_q5", "bias in the highest true-GPP quintile"),
                     ("bias_true_q1", "bias in the lowest true-GPP quintile")):
        x, y = get("siftml", q), get("ec-only", q)
        if x and y:
            shrink = abs(x[0]) < abs(y[0])
            lines.append(f"{label[0].upper()}{label[1:]} [gC m-2 d-1]: siftml {x[0]:+.2f}, ec-only "
                         f"{y[0]:+.2f}: SIFTML {'shrinks' if shrink else 'does not shrink'} it.")
    versus("moe", "single-task-gpp", "site_r2", "Multi-task GPP at held-out sites")
    versus("moe", "single-task-sif", "sif_tracks_r2", "Multi-task SIF on held-out tracks")
    return lines


def _scale_lines(summary: dict, first: str, kind: str) -> list[list[str]]:
    s = summary.get(first, {}).get(kind, {})
    rows = []
    for m, by_scale in s.items():
        if len(by_scale) < 2:
            continue
        for f in sorted(by_scale, key=float):
            c = by_scale[f]
            rows.append([m, f, _cell(c, "field_r2"), _cell(c, "site_r2"),
                         _cell(c, "site_rmse"), _cell(c, "bias_true_q5")])
    return rows


def _igbp_table(runs: list[Run], results: list[dict], world: str, kind: str) -> Any:
    from xgpp.landcover import class_to_code
    from xgpp.report import Table

    per: dict[str, dict[int, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for r, res in zip(runs, results, strict=True):
        if res.get("status") != "ok" or r.world != world or r.kind != kind or r.sif_scale != 1:
            continue
        for k, sc in (res.get("field", {}).get("by_igbp") or {}).items():
            per[r.method][int(k)].append((sc.get("r2", float("nan")), sc.get("bias", float("nan"))))
    if not per:
        return None
    classes = sorted({k for m in per.values() for k in m})
    codes = [str(c) for c in class_to_code(np.array(classes))]
    rows = []
    for m, by in per.items():
        cells = []
        for k in classes:
            v = np.array(by.get(k, []), float)
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a class with no finite R2
                cells.append("-" if not len(v) else f"{np.nanmean(v[:, 0]):.2f} / "
                                                     f"{np.nanmean(v[:, 1]):+.2f}")
        rows.append([m, *cells])
    return Table(f"field R2 / bias by IGBP class, world {world}, split {kind}",
                 ["method", *codes], rows)


def write_outputs(root: Path, cfg: ExperimentConfig, runs: list[Run], results: list[dict],
                  refs: dict[str, dict], summary: dict, *, console: Any = None) -> dict:
    """Write ``metrics.json``, ``metrics.csv``, the figures and ``report.md``/``report.html``."""
    import pandas as pd

    rows = flatten(results)
    rows += select_variants(rows)
    # the world's own rows: the driver ceiling
    for w, ref in refs.items():
        if "ceiling" in ref:
            c = ref["ceiling"]
            for kind in {r.kind for r in runs if r.world == w}:
                rows.append({"world": w, "method": "ceiling (drivers, no efficiency)",
                             "kind": kind, "split": "", "seed": None, "sif_scale": 1.0,
                             "status": "ok", "error": "", "val_loss": float("nan"),
                             "seconds": float("nan"), "selected_from": "",
                             **{n: _get({"field": c}, p) for n, (p, _) in COLUMNS.items()}})
    table = summarise(rows)
    pd.DataFrame(rows).to_csv(root / "metrics.csv", index=False)
    summary = {**summary, "summary": table, "rows": rows,
               "failed": [r for r in rows if r["status"] == "failed"],
               "pending": [r["split"] and f"{r['world']}/{r['method']}/{r['split']}/{r['seed']}"
                           for r in rows if r["status"] not in ("ok", "failed")]}
    (root / "metrics.json").write_text(json.dumps(summary, indent=1, default=str))
    from xgpp.experiment.figures import make_figures
    from xgpp.report import Section, Table, write_report

    first = next(iter(refs))
    kinds = list(dict.fromkeys(r.kind for r in runs if r.world == first))
    figs = make_figures(root, cfg, runs, results, refs, rows, console=console)
    sections = []
    claims = _claims(table, first, kinds[0]) if kinds else []
    sections.append(Section(
        "What the twin world says about the study's claims",
        "Scores are mean ± sd over seeds (each seed also a different fold). "
        f"World `{first}`, split `{kinds[0] if kinds else '-'}`.\n\n"
        + "\n".join(f"- {c}" for c in claims), tables=[], figures=[]))
    cols = ["field_r2", "field_rmse", "field_bias", "spatial_r2", "site_r2", "site_rmse",
            "site_bias", "site_slope", "site_intercept"]
    for kind in kinds:
        s = table.get(first, {}).get(kind, {})
        trows = []
        for m in _methods_order(s):
            c = s[m].get("1")
            if c is None:
                continue
            note = ", ".join(f"{c[k]} {k}" for k in ("failed", "pending") if c.get(k))
            trows.append([m, f"{c['n']}" + (f" ({note})" if note else ""),
                          *[_cell(c, n) for n in cols]])
        sections.append(Section(
            f"GPP scores, world `{first}`, split `{kind}`",
            "Field scores against the whole true field (area-weighted by cos latitude; every "
            "land pixel-step), spatial R2 of multi-year mean maps, and scores at the held-out "
            "EC sites (slope and intercept of predicted on observed). RMSE, bias, intercept "
            "in gC m-2 d-1. The ceiling row is the truth's own driver ceiling (GPP without "
            "the unobserved efficiency field): the best a model of the drivers could do.",
            tables=[Table(f"split {kind}: mean ± sd over seeds",
                          ["method", "runs", "field R2", "field RMSE", "field bias",
                           "spatial R2", "site R2", "site RMSE", "site bias", "slope",
                           "intercept"], trows)], figures=[]))
    k0 = kinds[0] if kinds else None
    s0 = table.get(first, {}).get(k0, {})
    reg = [[m, *[_cell(s0[m].get("1"), n) for n in ("tropics_r2", "temperate_r2",
                                                      "boreal_r2")]]
           for m in _methods_order(s0) if s0[m].get("1")]
    quint = [[m, *[_cell(s0[m].get("1"), f"bias_obs_q{q}") for q in range(1, 6)],
              *[_cell(s0[m].get("1"), f"bias_true_q{q}") for q in range(1, 6)]]
             for m in _methods_order(s0) if s0[m].get("1") and not m.startswith("ceiling")]
    truth_q = next((s0[m]["1"] for m in s0 if s0[m].get("1") and
                    "bias_truth_obs_q1" in s0[m]["1"]), None)
    if truth_q:
        quint.append(["truth itself", *[_cell(truth_q, f"bias_truth_obs_q{q}")
                                        for q in range(1, 6)], *["0"] * 5])
    sections.append(Section(
        "Errors by region and by GPP quintile",
        "Quintiles use vegetated, non-frozen held-out site samples. Binning by *observed* "
        "(EC) GPP mixes the estimate's error with the towers' own noise: even the truth "
        "itself looks biased high in the lowest and low in the highest observed quintile "
        "(the 'truth itself' row: regression dilution). Binning by the *true* GPP isolates "
        "each estimate's own conditional bias.",
        tables=[Table("R2 by latitude band (tropics |lat| < 23.5, temperate 23.5-50, boreal "
                      ">= 50)", ["method", "tropics", "temperate", "boreal"], reg),
                Table("bias [gC m-2 d-1] by quintile: Q1..Q5 of observed GPP, then of true GPP",
                      ["method", *[f"obs Q{q}" for q in range(1, 6)],
                       *[f"true Q{q}" for q in range(1, 6)]], quint)],
        figures=[f.figure for f in figs if f.key in ("quintiles", "regions")]))
    igbp_table = _igbp_table(runs, results, first, k0) if k0 else None
    if igbp_table is not None:
        sections.append(Section(
            "Errors by land-cover class",
            "Field R2 / bias [gC m-2 d-1] per IGBP class of the grid (area-weighted, every "
            "pixel-step of the class), mean over seeds. Where a method falls short, this says "
            "where; the `siftml-head` variant (a linear head on the frozen pre-trained "
            "features) shows what the pre-trained features carry about GPP.",
            tables=[igbp_table], figures=[]))
    # worlds
    wrows = []
    wkind = cfg.variant_splits[0] if cfg.variant_splits else None
    if len(refs) > 1 and wkind:
        from xgpp.experiment.plan import _kind
        wk = _kind(wkind)
        ms = _methods_order(table.get(first, {}).get(wk, {}))
        for m in ms:
            wrows.append([m, *[f"{_cell(table.get(w, {}).get(wk, {}).get(m, {}).get('1'), 'field_r2')}"
                               f" / {_cell(table.get(w, {}).get(wk, {}).get(m, {}).get('1'), 'site_r2')}"
                               for w in refs]])
        sections.append(Section(
            "Across twin-world variants",
            "Field R2 / held-out-site R2 (mean ± sd over seeds) on each named variant "
            "(docs/twin_world.md), split " + wk + ".",
            tables=[Table("field R2 / site R2 by world", ["method", *refs], wrows)],
            figures=[]))
    scale = _scale_lines(table, first, kinds[0]) if kinds else []
    if scale:
        sections.append(Section(
            "The scale test", "SIFTML pre-trained on the SIF product multiplied by each factor "
            "(no second SIF product with another retrieval window is present in the twin "
            "world). Insensitive means the fine-tuned scores move less than their spread.",
            tables=[Table("fine-tuned scores by SIF scale factor",
                          ["method", "SIF x", "field R2", "site R2", "site RMSE",
                           "bias true Q5"], scale)], figures=[]))
    mt = [[m, _cell(s0.get(m, {}).get("1"), "sif_tracks_r2"),
           _cell(s0.get(m, {}).get("1"), "sif_tracks_rmse"),
           _cell(s0.get(m, {}).get("1"), "sif_field_r2"),
           _cell(s0.get(m, {}).get("1"), "site_r2"), _cell(s0.get(m, {}).get("1"), "field_r2")]
          for m in ("moe", "single-task-sif", "single-task-gpp") if m in s0]
    if mt:
        sections.append(Section(
            "The multi-task test",
            "SIF on held-out OCO-2-like track segments [mW m-2 nm-1 sr-1] (RMSE in those "
            "units); GPP at held-out sites and over the true field. The SIF-field column is "
            "filled only where the world's truth store holds noise-free SIF (the current twin "
            "world's truth does not, so the seamless field is judged on held-out tracks).",
            tables=[Table("multi-task MoE vs single-task networks",
                          ["method", "SIF tracks R2", "SIF tracks RMSE", "SIF field R2",
                           "GPP site R2", "GPP field R2"], mt)],
            figures=[f.figure for f in figs if f.key in ("sif", "gates")]))
    var = [[r["method"], r["selected_from"] or "", r["world"], r["split"], str(r["seed"]),
            f"{r['val_loss']:.4f}", f"{r['field_r2']:.3f}", f"{r['site_r2']:.3f}"]
           for r in rows if str(r["method"]).startswith("siftml") and r["status"] == "ok"
           and r["sif_scale"] == 1.0]
    if var:
        sections.append(Section(
            "SIFTML variants tried",
            "Every transfer-learning variant run, with its validation loss on the validation "
            "sites inside the training fold (normalised GPP MSE) — the only number the "
            "`siftml-selected` row chooses by — and its test scores.",
            tables=[Table("variants", ["method", "selected", "world", "split", "seed",
                                       "val loss", "field R2", "site R2"], var)], figures=[]))
    sections.append(Section("Figures", "", tables=[],
                            figures=[f.figure for f in figs if f.key not in
                                     ("quintiles", "regions", "sif", "gates")]))
    fails = [[r["world"], r["method"], r["split"], str(r["seed"]), r["error"][:200]]
             for r in rows if r["status"] == "failed"]
    pending = sum(r["status"] not in ("ok", "failed") for r in rows)
    sections.append(Section(
        "Failed runs", ("None." if not fails else "Rerun the same command to retry them.")
        + (f" {pending} planned runs have not run yet (the same command resumes them)."
           if pending else ""),
        tables=[Table("failed runs", ["world", "method", "split", "seed", "error"], fails)]
        if fails else [], figures=[]))
    meta = {"worlds": ", ".join(refs), "resolution": f"{cfg.resolution} degree",
            "record": f"{cfg.end_year - cfg.years + 1}-{cfg.end_year}",
            "seeds": str(list(cfg.seeds)),
            "runs": f"{len(runs)} planned: {len(runs) - len(fails) - pending} finished, "
                    f"{len(fails)} failed, {pending} not run yet",
            "quick": str(cfg.quick)}
    md, html = write_report(root, title="xgpp experiment: SIFTML and the multi-task MoE on "
                                        "the twin world", sections=sections, meta=meta)
    if console is not None:
        console.print(f"report: {html}\n        {md}\nmetrics: {root / 'metrics.json'}, "
                      f"{root / 'metrics.csv'}")
    summary["report"] = {"md": str(md), "html": str(html)}
    (root / "metrics.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary
