"""One experiment run in its own process: train, predict the globe, score, keep what figures need.

``python -m xgpp.experiment.worker TASK.json`` reads a task (the :class:`Run`, the world's
catalog, the training config, where to write) and writes ``RUN_DIR/result.json`` (scores,
history, status ``"ok"``) and ``RUN_DIR/reduced.nc`` (multi-year mean map, annual totals,
series at a few held-out sites, a seeded sample of pixel-steps).  On any error it writes
``result.json`` with status ``"failed"`` and the traceback, so the table shows the failure.
Every random generator is seeded from the run's own seed; nothing reads a global RNG state.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

__all__ = ["execute", "main"]


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=_jsonable))
    os.replace(tmp, path)


def _jsonable(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _history_summary(history: dict) -> dict:
    out = {}
    for phase, rows in history.items():
        if not rows:
            continue
        val = [r.get("val_loss") for r in rows if r.get("val_loss") is not None]
        out[phase] = {"epochs": len(rows), "train_loss": rows[-1].get("train_loss"),
                      "best_val_loss": min(val) if val else None}
    return out


def execute(task: dict) -> dict:
    """Run one task (see the module docstring) and return its result record."""
    import dask
    import numpy as np
    import torch
    import xarray as xr

    from xgpp.catalog import open_catalog, open_cube
    from xgpp.evaluate import (
        annual_totals,
        at_sites,
        field_report_from_moments,
        pixel_moments,
        site_report,
    )
    from xgpp.landcover import code_to_class
    from xgpp.predict import predict
    from xgpp.splits import parse_split, split_parts
    from xgpp.train import METHODS, train

    run, run_dir = task["run"], Path(task["run_dir"])
    threads = int(task.get("threads", 1))
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    record = METHODS[run["method"]]
    cat = open_catalog(task["catalog"])
    drivers = open_cube("drivers", catalog=cat)
    sites = open_cube("sites", catalog=cat).compute()
    truth = open_cube("truth", catalog=cat)
    product = record.sif_product
    sif = open_cube(product, catalog=cat) if product else None
    if sif is not None and run.get("sif_scale", 1.0) != 1.0:
        f = float(run["sif_scale"])
        sif = sif.copy()
        sif["sif"] = sif["sif"] * f
        sif.attrs["product"] = f"{sif.attrs.get('product', product)} x {f:g}"
    kw: dict[str, Any] = {}
    if task.get("cache_dir") and "cache_dir" in inspect.signature(train).parameters:
        kw["cache_dir"] = task["cache_dir"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with dask.config.set(scheduler="threads", num_workers=threads):
            model = train(drivers, sites=sites, sif=sif, method=run["method"],
                          split=run["split"], config=task.get("train") or None,
                          out=str(run_dir / "model"), seed=int(run["seed"]), device="cpu",
                          progress=False, provenance={"experiment_run": run}, **kw)
    t_train = time.perf_counter() - t0
    # held-out sites of the split's site part, rebuilt as training built them
    site_spec, _ = split_parts(run["split"])
    assert site_spec is not None, f"run {run['split']!r} has no site split"  # plan_runs gives one
    splitter, k = parse_split(site_spec)
    fold = splitter.folds(sites)[k]
    test = sites.sel(site=list(fold.test))
    est = predict(drivers, model)
    pred = est["gpp"]
    lazy = {"moments": pixel_moments(pred, truth["gpp"]), "totals": annual_totals(pred),
            "at": at_sites(pred, test), "truth_at": at_sites(truth["gpp"], test),
            "tair_at": at_sites(drivers["tair"], test)}
    if "sif" in est and "sif" in truth:
        lazy["sif_moments"] = pixel_moments(est["sif"], truth["sif"])
    # a seeded sample of land pixel-steps for the density scatter
    rng = np.random.default_rng(int(run["seed"]) + 7919)
    land = np.argwhere(np.asarray(drivers["land_mask"].values) > 0) if "land_mask" in drivers \
        else np.argwhere(np.isfinite(np.asarray(truth["gpp"].isel(time=0).values)))
    n_pairs = int(task.get("pairs", 0))
    if n_pairs and len(land):
        pick = land[rng.integers(0, len(land), n_pairs)]
        ti = rng.integers(0, drivers.sizes["time"], n_pairs)
        idx = dict(time=xr.DataArray(ti, dims="pair"), lat=xr.DataArray(pick[:, 0], dims="pair"),
                   lon=xr.DataArray(pick[:, 1], dims="pair"))
        lazy["pairs_pred"] = pred.isel(idx)
        lazy["pairs_truth"] = truth["gpp"].isel(idx)
    with dask.config.set(scheduler="threads", num_workers=threads):
        got = dict(zip(lazy, dask.compute(*lazy.values()), strict=True))
    t_pred = time.perf_counter() - t0 - t_train
    igbp = drivers["igbp"] if "igbp" in drivers else None
    field, maps = field_report_from_moments(got["moments"], igbp)
    at = got["at"]
    obs = test["gpp"].sel(time=at["time"])
    cls = code_to_class([str(c) for c in test["igbp"].values]) if "igbp" in test.coords or \
        "igbp" in test else None
    sites_scores = site_report(
        at.values, obs.values, truth=got["truth_at"].values, tair=got["tair_at"].values,
        igbp=None if cls is None else np.broadcast_to(np.asarray(cls)[:, None], at.shape))
    result: dict[str, Any] = {
        "run": run, "id": task["id"], "status": "ok", "model": model.id,
        "seconds": {"train": t_train, "score": t_pred, "total": time.perf_counter() - t0},
        "field": field, "sites": sites_scores, "n_test_sites": len(fold.test),
        "history": _history_summary(model.provenance.get("history", {})),
        "warnings": len(caught), "pretrain_cache": model.provenance.get("pretrain_cache"),
    }
    if "sif_moments" in got:
        result["sif_field"] = field_report_from_moments(got["sif_moments"], None)[0]["overall"]
    if record.track_split:
        from xgpp.workflows import multitask_scores

        sif_tracks = open_cube("sif_oco2", catalog=cat)
        with dask.config.set(scheduler="threads", num_workers=threads):
            mt = multitask_scores(model, drivers=drivers, sites=sites, sif=sif_tracks,
                                  split=run["split"])
        result["tracks"] = mt.get("sif_tracks")
        result["gpp_site_samples"] = mt.get("gpp_sites")
    if run["method"] == "moe":
        from xgpp.train.methods.moe import last_utilisation

        hist = model.provenance["history"]
        result["gates"] = last_utilisation(hist[list(hist)[-1]])
    # what the figures need, small
    keep = list(at["site"].values[: int(task.get("site_series", 0))])
    red = xr.Dataset({"mean_pred": maps["pred"], "annual": got["totals"]})
    if keep:
        red["site_pred"] = at.sel(site=keep).astype("float32")
        red["site_obs"] = obs.sel(site=keep).astype("float32")
        red["site_truth"] = got["truth_at"].sel(site=keep).astype("float32")
        red = red.assign_coords(site=[str(s) for s in red["site"].values])
        if "igbp" in test.coords or "igbp" in test:
            red["site_igbp"] = ("site", [str(c) for c in test["igbp"].sel(site=keep).values])
    if "pairs_pred" in got:
        red["pairs_pred"] = ("pair", got["pairs_pred"].values.astype("float32"))
        red["pairs_truth"] = ("pair", got["pairs_truth"].values.astype("float32"))
    for v in red.data_vars:
        red[v].attrs = {}
    red.attrs = {"run": task["id"]}
    tmp = run_dir / "reduced.nc.tmp"
    red.to_netcdf(tmp, engine="h5netcdf")
    os.replace(tmp, run_dir / "reduced.nc")
    return result


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m xgpp.experiment.worker TASK.json``; exit 1 on a failed run."""
    args = sys.argv[1:] if argv is None else argv
    task = json.loads(Path(args[0]).read_text())
    run_dir = Path(task["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        result = execute(task)
    except Exception as err:  # recorded as a failed run, shown in the table
        _write_json(run_dir / "result.json", {
            "run": task["run"], "id": task["id"], "status": "failed",
            "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc(),
            "seconds": {"total": time.perf_counter() - t0}})
        print(traceback.format_exc(), file=sys.stderr)
        return 1
    _write_json(run_dir / "result.json", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
