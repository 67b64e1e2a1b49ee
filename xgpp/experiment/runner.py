"""Run an experiment: worlds, then every planned run in its own process, then the report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from xgpp.errors import InputError
from xgpp.experiment.config import ExperimentConfig
from xgpp.experiment.plan import Run, plan_runs

__all__ = ["prepare_worlds", "reference", "run_experiment", "run_pending"]


def prepare_worlds(cfg: ExperimentConfig, root: Path, *, catalog: str | None = None,
                   console: Any = None, world_name: str = "catalog") -> dict[str, str]:
    """World name -> catalog path: the given catalog, or each variant generated once.

    A world folder with a ``catalog.yaml`` is complete (the writer adds it last), so it is
    reused on a rerun.
    """
    from xgpp.synthetic import write_world

    if catalog is not None:
        return {world_name: str(catalog)}
    out = {}
    start = cfg.end_year - cfg.years + 1
    for name in cfg.worlds:
        d = root / "worlds" / name
        if not (d / "catalog.yaml").exists():
            if console is not None:
                console.print(f"[bold]world[/bold] {name}: {cfg.resolution} deg, "
                              f"{start}-{cfg.end_year}")
            write_world(str(d), resolution=cfg.resolution, start=f"{start}-01-01",
                        end=f"{cfg.end_year}-12-31", variant=name,
                        progress=console is not None)
        out[name] = str(d / "catalog.yaml")
    return out


def reference(name: str, catalog: str, root: Path, *, pairs: int = 0) -> dict[str, Any]:
    """The world's own rows, computed once: truth totals and map, and the driver ceiling.

    ``ceiling`` scores the truth's ``gpp_ceiling`` (GPP of the noise-free drivers without the
    unobserved efficiency field: the best any model of the drivers could do) against ``gpp``.
    Cached in ``OUT/reference/NAME.json`` and ``.nc``.
    """
    import dask
    import numpy as np
    import xarray as xr

    from xgpp.catalog import open_catalog, open_cube
    from xgpp.evaluate import annual_totals, field_report_from_moments, pixel_moments

    d = root / "reference"
    d.mkdir(parents=True, exist_ok=True)
    js, nc = d / f"{name}.json", d / f"{name}.nc"
    if js.exists() and nc.exists():
        return json.loads(js.read_text())
    cat = open_catalog(catalog)
    truth, drivers = open_cube("truth", catalog=cat), open_cube("drivers", catalog=cat)
    gpp = truth["gpp"]
    lazy: dict[str, Any] = {"totals": annual_totals(gpp), "mean": gpp.mean("time")}
    if "gpp_ceiling" in truth:
        lazy["ceiling"] = pixel_moments(truth["gpp_ceiling"], gpp)
        lazy["ceiling_totals"] = annual_totals(truth["gpp_ceiling"])
    got = dict(zip(lazy, dask.compute(*lazy.values()), strict=True))
    out: dict[str, Any] = {"world": name, "catalog": catalog,
                           "attrs": {k: str(v) for k, v in truth.attrs.items()},
                           "totals": got["totals"].values.tolist(),
                           "years": got["totals"]["year"].values.tolist()}
    igbp = drivers["igbp"] if "igbp" in drivers else None
    red = xr.Dataset({"truth_mean": got["mean"].astype("float32"), "annual": got["totals"]})
    if "ceiling" in got:
        out["ceiling"], maps = field_report_from_moments(got["ceiling"], igbp)
        out["ceiling_totals"] = got["ceiling_totals"].values.tolist()
        red["ceiling_mean"] = maps["pred"]
    if igbp is not None:
        red["igbp"] = igbp.astype("int16")
    for v in red.data_vars:
        red[v].attrs = {}
    red.attrs = {}
    red.to_netcdf(nc.with_suffix(".tmp"), engine="h5netcdf")
    os.replace(nc.with_suffix(".tmp"), nc)
    js.write_text(json.dumps(out, indent=1, default=lambda o: np.asarray(o).tolist()))
    return out


def _result(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run_pending(runs: list[Run], worlds: dict[str, str], cfg: ExperimentConfig, root: Path, *,
                progress: bool = True, console: Any = None) -> list[dict]:
    """Run every run without an ``ok`` result, ``cfg.parallel`` processes at a time.

    Each run is ``python -m xgpp.experiment.worker`` in its own process with its own seeded
    generators and ``cores // parallel`` threads; a crash that leaves no result (killed,
    out of memory) is recorded as failed with the tail of its log.  Returns every run's
    result record in plan order.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    threads = max(1, (os.cpu_count() or 1) // cfg.parallel)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "OPENBLAS_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
    todo = []
    for r in runs:
        d = root / "runs" / r.id
        res = _result(d / "result.json")
        if res is None or res.get("status") != "ok":
            todo.append(r)
    # the first split on every world first (the headline comparison), then the other splits
    worlds_order = {w: i for i, w in enumerate(worlds)}
    first_kind = runs[0].kind if runs else None
    todo.sort(key=lambda r: (r.kind != first_kind, r.sif_scale != 1.0, worlds_order[r.world],
                             r.seed))

    def one(r: Run) -> dict:
        d = root / "runs" / r.id
        d.mkdir(parents=True, exist_ok=True)
        (d / "result.json").unlink(missing_ok=True)
        task = {"run": r.to_dict(), "id": r.id, "run_dir": str(d), "catalog": worlds[r.world],
                "train": cfg.train, "pairs": cfg.pairs, "site_series": cfg.site_series,
                "threads": threads, "cache_dir": str(root / "cache")}
        (d / "task.json").write_text(json.dumps(task, indent=1))
        with open(d / "log.txt", "w") as log:
            proc = subprocess.run([sys.executable, "-m", "xgpp.experiment.worker",
                                   str(d / "task.json")], stdout=log, stderr=subprocess.STDOUT,
                                  env=env, check=False)
        res = _result(d / "result.json")
        if res is None:
            tail = (d / "log.txt").read_text()[-2000:]
            res = {"run": r.to_dict(), "id": r.id, "status": "failed",
                   "error": f"worker exited {proc.returncode} without a result", "log": tail}
            (d / "result.json").write_text(json.dumps(res, indent=1))
        return res

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), disable=not progress,
                   console=console)
    with bar:
        job = bar.add_task(f"runs ({len(runs) - len(todo)} done before)", total=len(todo))
        with ThreadPoolExecutor(cfg.parallel) as pool:
            futures = {pool.submit(one, r): r for r in todo}
            for fut in as_completed(futures):
                r = futures[fut]
                res = fut.result()
                if res.get("status") != "ok" and console is not None:
                    console.print(f"[red]failed[/red] {r.id}: {res.get('error')}")
                bar.update(job, advance=1, description=f"runs (last: {r.id})")
    return [_result(root / "runs" / r.id / "result.json") or {} for r in runs]


def run_experiment(out: str, *, config: ExperimentConfig | None = None,
                   catalog: str | None = None, progress: bool = True,
                   report: bool = True, run: bool = True,
                   world_name: str = "catalog") -> dict[str, Any]:
    """Run (or resume) an experiment and write its report.

    Parameters
    ----------
    out : str
        Output folder: ``worlds/``, ``runs/<world>/<run>/`` (model bundle, result, reduced
        fields), ``reference/``, ``metrics.json``, ``metrics.csv``, ``report.md``,
        ``report.html`` and the figures.
    config : ExperimentConfig, optional
        What to run; default the full experiment (:class:`ExperimentConfig`).
    catalog : str, optional
        Run on this catalog's cubes instead of generated twin worlds (no truth-field scores
        unless it has a ``truth`` entry).
    progress : bool
        Progress bar over runs.
    report : bool
        Write the metrics and the report at the end.
    run : bool
        Run pending runs (False: only rewrite the report from the finished ones).
    world_name : str
        Name of the world a given ``catalog`` holds, in tables and run folders.

    Returns
    -------
    dict
        The summary written to ``metrics.json``.
    """
    from rich.console import Console

    from xgpp.catalog import open_catalog, open_cube
    from xgpp.train import METHODS

    cfg = config or ExperimentConfig()
    console = Console(stderr=True)
    root = Path(out).resolve()
    root.mkdir(parents=True, exist_ok=True)
    (root / "experiment.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    t0 = time.perf_counter()
    worlds = prepare_worlds(cfg, root, catalog=catalog, console=console,
                            world_name=world_name)
    unknown = [m for m in (cfg.methods or ()) if m not in METHODS]
    if unknown:
        raise InputError(f"unknown method(s) {unknown} in the experiment config; the training "
                         f"registry holds {list(METHODS)}.")
    methods = list(cfg.methods or METHODS)
    sites = {w: open_cube("sites", catalog=open_catalog(c)).compute() for w, c in worlds.items()}
    runs = plan_runs(cfg, sites, methods)
    console.print(f"experiment: {len(runs)} runs over {len(worlds)} world(s), "
                  f"{len(methods)} methods, seeds {list(cfg.seeds)} -> {root}")
    refs = {w: reference(w, c, root) for w, c in worlds.items()}
    if run:
        results = run_pending(runs, worlds, cfg, root, progress=progress, console=console)
    else:
        results = [_result(root / "runs" / r.id / "result.json") or
                   {"run": r.to_dict(), "id": r.id, "status": "not run"} for r in runs]
    summary: dict[str, Any] = {"config": cfg.to_dict(), "worlds": worlds, "runs": len(runs),
                               "seconds": time.perf_counter() - t0}
    if report:
        from xgpp.experiment.summary import write_outputs

        summary = write_outputs(root, cfg, runs, results, refs, summary, console=console)
    return summary
