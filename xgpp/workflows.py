"""End-to-end jobs behind the CLI: predict from a catalog, and the demo pipeline."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import xarray as xr

from xgpp.errors import InputError

__all__ = ["DEMO_METHODS", "predict_from_catalog", "run_demo", "subset"]


def subset(ds: xr.Dataset, *, start: str | None = None, end: str | None = None,
           bbox: str | tuple[float, float, float, float] | None = None) -> xr.Dataset:
    """Select a time range and a ``lon_min,lat_min,lon_max,lat_max`` box [degree]."""
    if start or end:
        ds = ds.sel(time=slice(start, end))
        if ds.sizes["time"] == 0:
            raise InputError(f"no time steps between start={start!r} and end={end!r}; the cube "
                             f"covers {str(ds.time.min().values)[:10]}..{str(ds.time.max().values)[:10]}.")
    if bbox is not None:
        parts = [float(v) for v in (bbox.split(",") if isinstance(bbox, str) else bbox)]
        if len(parts) != 4 or parts[0] >= parts[2] or parts[1] >= parts[3]:
            raise InputError(f"bbox={bbox!r}: expected lon_min,lat_min,lon_max,lat_max with "
                             "min < max, e.g. -10,35,40,70.")
        box = ds.sel(lon=slice(parts[0], parts[2]), lat=slice(parts[1], parts[3]))
        if box.sizes["lat"] == 0 or box.sizes["lon"] == 0:
            raise InputError(
                f"bbox={bbox!r} holds no grid cell: the cube covers lon "
                f"{float(ds.lon.min()):g}..{float(ds.lon.max()):g}, lat "
                f"{float(ds.lat.min()):g}..{float(ds.lat.max()):g} (order: "
                "lon_min,lat_min,lon_max,lat_max)."
            )
        ds = box
    return ds


@contextlib.contextmanager
def _maybe_cluster(kind: str | None) -> Iterator[Any]:
    if kind in (None, "none", "threads"):
        yield None
        return
    from xgpp.cluster import cluster

    with cluster(kind) as client:
        yield client


def predict_from_catalog(catalog: str, model: str | list[str] | tuple[str, ...], out: str, *,
                         cluster: str | None = "local",
                         start: str | None = None, end: str | None = None,
                         bbox: str | None = None, device: str = "auto",
                         precision: str = "float32", batch_size: int | None = None,
                         overwrite: bool = False, storage_options: dict | None = None,
                         progress: bool = True, chunks: Mapping[str, int] | None = None) -> str:
    """Predict over the catalog's ``drivers`` to ``OUT/prediction.zarr`` and write ``OUT/catalog.yaml``.

    ``model`` is one bundle path or URL, or a list of them: an ensemble, whose store holds
    each output ``v`` as the member mean and ``v_std`` as the spread (see
    :func:`xgpp.predict.write_prediction`).  ``chunks`` opens the drivers with coarser dask
    chunks (:func:`xgpp.open_cube`); the prediction store is chunked as those.  Re-running
    with the same arguments resumes an interrupted run.
    """
    import os

    from xgpp.catalog import open_cube, write_catalog
    from xgpp.models import load_model
    from xgpp.predict import write_prediction

    if isinstance(model, str | os.PathLike):
        bundle: Any = load_model(model)
        ids: Any = bundle.id
    else:
        paths = list(model)
        if not paths:
            raise InputError("model=[]: give one model bundle path, or a list of them for an "
                             "ensemble (xgpp predict --model A --model B).")
        bundle = [load_model(p) for p in paths]
        ids = [b.id for b in bundle]
    drivers = subset(open_cube("drivers", catalog=catalog, chunks=chunks), start=start, end=end,
                     bbox=bbox)
    url = f"{str(out).rstrip('/')}/prediction.zarr"
    with _maybe_cluster(cluster):
        write_prediction(drivers, bundle, url, device=device, precision=precision,
                         batch_size=batch_size, overwrite=overwrite,
                         storage_options=storage_options, progress=progress)
    write_catalog(out, names=("prediction",), storage_options=storage_options,
                  extra={"model": ids, "catalog": str(catalog)})
    return url


#: methods of the demo: SIFTML, its baselines, and the multi-task MoE
DEMO_METHODS = ("siftml", "ec-only", "sif-only", "pmodel", "moe")


def run_demo(out: str = "xgpp-demo", *, resolution: float = 2.0, years: int = 6,
             cluster: str | None = "local", methods: tuple[str, ...] = DEMO_METHODS,
             config: Any = None) -> dict[str, Any]:
    """The main job: twin world -> SIFTML, baselines and MoE -> global prediction -> report.

    A one-run experiment (:func:`xgpp.experiment.run_experiment`, one seed, one
    leave-site-out fold) on the embedded default world, plus the global SIFTML prediction
    streamed to ``OUT/prediction/prediction.zarr`` on a Dask cluster.  Writes
    ``OUT/report.html``, ``OUT/report.md``, the figures, ``OUT/metrics.{json,csv}`` and
    ``OUT/scores.json``; returns the scores (method -> field and held-out-site scores).
    Rerunning reuses the world and every finished run.
    """
    from rich.console import Console
    from rich.table import Table

    from xgpp.experiment import ExperimentConfig, run_experiment
    from xgpp.synthetic import write_world

    console = Console(stderr=True)
    t0 = time.perf_counter()
    root = Path(out).resolve()
    world_dir, pred_dir = root / "world", root / "prediction"
    for d in (world_dir, pred_dir):
        d.mkdir(parents=True, exist_ok=True)
    end_year = 2020
    start_year = end_year - years + 1
    catalog = world_dir / "catalog.yaml"
    if not catalog.exists():
        console.rule(f"1/3 twin world: {resolution} deg, {start_year}-{end_year}")
        write_world(str(world_dir), resolution=resolution, start=f"{start_year}-01-01",
                    end=f"{end_year}-12-31", chunks={"time": 46, "lat": 90, "lon": 90})
    else:
        console.rule(f"1/3 twin world: reusing {world_dir}")
    cfg = ExperimentConfig(worlds=("default",), resolution=resolution, years=years,
                           seeds=(0,), methods=tuple(methods), splits=("site-kfold:k=5",),
                           variant_splits=(), sif_scales=(1.0,), parallel=2, site_series=4,
                           pairs=50_000, train=config or {})
    console.rule("2/3 SIFTML, baselines and the MoE, each in its own process "
                 "(held-out sites: site-kfold:k=5,fold=0)")
    summary = run_experiment(str(root), config=cfg, catalog=str(catalog), world_name="default")
    rows = [r for r in summary["rows"] if r["kind"] == "site-kfold" and r["split"]]
    by = {r["method"]: r for r in rows}
    console.rule(f"3/3 global prediction with SIFTML on a {cluster or 'threaded'} Dask cluster")
    url = None
    if by.get("siftml", {}).get("status") == "ok":
        from xgpp.experiment.plan import Run

        run = Run("default", "siftml", "site-kfold", by["siftml"]["split"], 0)
        url = predict_from_catalog(str(catalog), str(root / "runs" / run.id / "model"),
                                   str(pred_dir), cluster=cluster)
    scores = {m: {"field": {"r2": r["field_r2"], "rmse": r["field_rmse"],
                            "bias": r["field_bias"], "spatial_r2": r["spatial_r2"]},
                  "held_out_sites": {"r2": r["site_r2"], "rmse": r["site_rmse"],
                                     "bias": r["site_bias"], "slope": r["site_slope"],
                                     "bias_true_q1": r["bias_true_q1"],
                                     "bias_true_q5": r["bias_true_q5"]},
                  "status": r["status"]}
              for m, r in by.items()}
    table = Table(title="GPP scores (held-out sites: site-kfold:k=5,fold=0; truth field)")
    for col in ("method", "field R2", "field RMSE", "spatial R2", "site R2", "site RMSE",
                "bias low GPP", "bias high GPP", "SIF tracks R2"):
        table.add_column(col, justify="right")
    for m, r in by.items():
        if r["status"] != "ok":
            table.add_row(m, f"failed: {r['error'][:60]}", *[""] * 7)
            continue
        sif = r.get("sif_tracks_r2", float("nan"))
        table.add_row(m, f"{r['field_r2']:.3f}", f"{r['field_rmse']:.2f}",
                      f"{r['spatial_r2']:.3f}",
                      "-" if r["site_r2"] != r["site_r2"] else f"{r['site_r2']:.3f}",
                      "-" if r["site_rmse"] != r["site_rmse"] else f"{r['site_rmse']:.2f}",
                      f"{r['bias_true_q1']:+.2f}", f"{r['bias_true_q5']:+.2f}",
                      "-" if sif != sif else f"{sif:.3f}")
    Console().print(table)
    (root / "scores.json").write_text(json.dumps(scores, indent=1))
    console.print(f"outputs in {root}:\n  report     {root / 'report.html'} (and report.md, "
                  f"figures/)\n  world      {world_dir}/catalog.yaml\n"
                  f"  models     {root}/runs/default/*/model\n"
                  f"  prediction {url} (catalog {pred_dir}/catalog.yaml)\n"
                  f"  scores     {root / 'scores.json'}, {root / 'metrics.csv'}\n"
                  f"finished in {time.perf_counter() - t0:.0f} s")
    return scores


def multitask_scores(model: Any, *, drivers: xr.Dataset, sites: xr.Dataset, sif: xr.Dataset,
                     split: str, var: str = "sif", max_soundings: int | None = 200_000
                     ) -> dict[str, Any]:
    """Held-out-track SIF and held-out-site GPP scores of a model (any that predicts them).

    ``split`` is the training split (``"site-kfold:k=5,fold=0;tracks:k=5,fold=0"``): its site
    part names the held-out towers, its ``tracks:`` part the held-out track segments, rebuilt
    exactly as training built them.  SIF is scored on the held-out soundings (physical units,
    up to ``max_soundings``, a seeded subsample), GPP on every held-out tower sample.
    """
    import warnings

    from xgpp.evaluate import pair_scores
    from xgpp.samples import SampleExclusionWarning, site_samples
    from xgpp.splits import parse_split, split_parts
    from xgpp.tracks import MixedSamples, TrackIndex, parse_track_split

    site_spec, track_spec = split_parts(split)
    out: dict[str, Any] = {"model": model.id, "method": model.method}
    cols = list(model.outputs)
    if "gpp" in cols and site_spec is not None:
        splitter, k = parse_split(site_spec)
        test = list(splitter.folds(sites)[k].test)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SampleExclusionWarning)
            cfg = model.provenance.get("config", {})  # the samples the model trained on
            s = site_samples(drivers, sites.sel(site=test), inputs=model.inputs,
                             window=cfg.get("site_window", 1),
                             igbp_from=cfg.get("igbp_from", "site"))
        x, ok = model.features(s, return_mask=True)
        pred = model.predict_numpy(x)[:, cols.index("gpp")]
        out["gpp_sites"] = {**pair_scores(pred, s["gpp"].values[ok]), "n": int(ok.sum()),
                            "n_sites": len(test)}
    if "sif" in cols and track_spec is not None:
        index = TrackIndex.build(sif, drivers, var=var)
        track_splitter, k = parse_track_split(track_spec)
        fold = track_splitter.fold(index, drivers["lat"].values, drivers["lon"].values, k)
        stream = MixedSamples(drivers, sif, model.spec, index, use=fold.test,
                              proportions=(1.0, 0.0, 0.0), var=var, seed=0)
        a = stream.track_arrays(fold.test, max_samples=max_soundings)
        pred = model.predict_numpy(a["x"])[:, cols.index("sif")]
        out["sif_tracks"] = {**pair_scores(pred, a["sif"]), "n": int(len(pred)),
                             "n_held_out": int(fold.n_test)}
    return out


#: the multi-task comparison: the MoE and its single-task baselines
MULTITASK_METHODS = ("moe", "single-task-gpp", "single-task-sif")


def run_multitask_comparison(out: str = "xgpp-multitask", *, resolution: float = 1.0,
                             years: int = 10, seeds: tuple[int, ...] = (0, 1, 2),
                             split: str = "site-kfold:k=5,fold=0;tracks:k=5,fold=0",
                             config: Any = None, progress: bool = True) -> dict[str, Any]:
    """MoE vs single-task networks on a twin world: held-out tracks (SIF), held-out towers (GPP).

    Writes ``OUT/world`` (reused when present), one bundle per (method, seed) (finished ones
    are skipped on a rerun), ``OUT/results.json`` (every run's scores), ``OUT/summary.json``
    (mean and standard deviation over seeds) and two PNGs from the first seed's MoE: the
    reconstructed SIF of a July step beside the tracks and the truth, and the gate use per
    epoch.  Returns the summary.
    """
    import warnings

    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from xgpp.catalog import open_catalog, open_cube
    from xgpp.models import load_model
    from xgpp.plots import plot_gate_use, plot_sif_reconstruction
    from xgpp.synthetic import write_world
    from xgpp.train import train_from_catalog
    from xgpp.train.methods.moe import last_utilisation

    console = Console(stderr=True)
    root = Path(out).resolve()
    catalog = root / "world" / "catalog.yaml"
    if not catalog.exists():
        console.rule(f"twin world: {resolution} deg, {2021 - years}-2020")
        write_world(str(root / "world"), resolution=resolution, start=f"{2021 - years}-01-01",
                    end="2020-12-31")
    cat = open_catalog(str(catalog))
    drivers, sif = open_cube("drivers", catalog=cat), open_cube("sif_oco2", catalog=cat)
    sites = open_cube("sites", catalog=cat).compute()
    results = []
    for seed in seeds:
        for method in MULTITASK_METHODS:
            path = root / f"{method}-seed{seed}"
            console.print(f"[bold]{method}[/bold] seed {seed}")
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # site QC, clipped slopes: recorded
                if (path / "model.json").exists():
                    model = load_model(str(path))
                else:
                    model = train_from_catalog(str(catalog), method=method, split=split,
                                               out=str(path), seed=seed, config=config,
                                               progress=progress)
                sc = multitask_scores(model, drivers=drivers, sites=sites, sif=sif, split=split)
            hist = model.provenance["history"]
            phase = list(hist)[-1]
            sc.update(seed=seed, seconds=time.perf_counter() - t0, epochs=len(hist[phase]),
                      gates=last_utilisation(hist[phase]))
            results.append(sc)
            (root / "results.json").write_text(json.dumps(results, indent=1, default=str))
    summary: dict[str, Any] = {"split": split, "seeds": list(seeds), "methods": {}}
    for method in MULTITASK_METHODS:
        runs = [r for r in results if r["method"] == method]
        row = {}
        for part in ("sif_tracks", "gpp_sites"):
            for k in ("r2", "rmse"):
                v = np.array([r[part][k] for r in runs if part in r])
                if len(v):
                    row[f"{part}.{k}"] = {"mean": float(v.mean()),
                                          "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0}
        summary["methods"][method] = row
    (root / "summary.json").write_text(json.dumps(summary, indent=1))
    moe = load_model(str(root / f"moe-seed{seeds[0]}"))
    step = drivers["time"].sel(time=f"{2020}-07").values[0]
    one = drivers.sel(time=[step])
    rec = one.gpp.predict(moe)["sif"].isel(time=0)
    truth = open_cube("truth", catalog=cat)
    figs = [plot_sif_reconstruction(rec, sif["sif"].sel(time=step), root / "sif_moe.png",
                                    truth=truth["sif"].sel(time=step) if "sif" in truth
                                    else None, title=f"SIF {str(step)[:10]}"),
            plot_gate_use(moe.provenance["history"]["multitask"], root / "gates_moe.png")]
    table = Table(title=f"held-out tracks (SIF) and towers (GPP), {len(seeds)} seeds, {split}")
    for col in ("method", "SIF R2", "SIF RMSE", "GPP R2", "GPP RMSE"):
        table.add_column(col, justify="right")
    for method, row in summary["methods"].items():
        def cell(key: str, fmt: str, row: dict = row) -> str:
            if key not in row:
                return "-"
            return f"{row[key]['mean']:{fmt}} ± {row[key]['std']:{fmt}}"
        table.add_row(method, cell("sif_tracks.r2", ".3f"), cell("sif_tracks.rmse", ".3f"),
                      cell("gpp_sites.r2", ".3f"), cell("gpp_sites.rmse", ".2f"))
    Console().print(table)
    console.print(f"results in {root}: results.json, summary.json, {figs[0].name}, "
                  f"{figs[1].name}")
    return summary
