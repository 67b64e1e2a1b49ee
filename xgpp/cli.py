"""The ``xgpp`` command line: thin wrappers over the library's plain functions."""

from __future__ import annotations

from typing import Annotated

import typer

from xgpp.errors import InputError, XgppError


def _method_help() -> str:
    """``--method`` help, read from the training registry."""
    from xgpp.train.methods import METHODS

    return "Training method: " + "; ".join(f"{m.name} ({m.description})"
                                           for m in METHODS.values()) + "."


app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="xgpp: global GPP from satellite SIF and eddy-covariance towers.")


@app.command()
def world(
    out: Annotated[str, typer.Option(help="Target folder or fsspec URL for the stores.")],
    resolution: Annotated[float, typer.Option(help="Grid spacing [degree]; divides 180.")] = 1.0,
    years: Annotated[int, typer.Option(help="Length of the record [years].")] = 4,
    start: Annotated[int, typer.Option(help="First year of the record.")] = 2017,
    seed: Annotated[int, typer.Option(help="Seed of every random field.")] = 0,
    variant: Annotated[str, typer.Option(help="World variant (default, uniform_slope, ...).")] = "default",
    freq: Annotated[str, typer.Option(help="Time step: 8D, D or MS.")] = "8D",
) -> None:
    """Write a synthetic twin world (drivers, truth, SIF, sites) and its catalog.yaml."""
    from xgpp.synthetic import write_world

    w = write_world(out, resolution=resolution, start=f"{start}-01-01",
                    end=f"{start + years - 1}-12-31", freq=freq, seed=seed, variant=variant)
    typer.echo(f"{w}\nwrote {out}/{{drivers,truth,sif_tropomi,sif_oco2,sites}}.zarr and "
               f"{out}/catalog.yaml")


@app.command()
def train(
    catalog: Annotated[str, typer.Option(help="Catalog (catalog.yaml, world folder or URL).")],
    out: Annotated[str, typer.Option(help="Model folder (checkpoints and bundle).")],
    method: Annotated[str, typer.Option(help=_method_help())] = "siftml",
    split: Annotated[str | None, typer.Option(
        help="Held-out sites, e.g. site-kfold:k=5,fold=0 | igbp:fold=3 | "
             "blocks:block=10,buffer=2,fold=1; methods on SIF tracks also take held-out "
             "track segments after ';', e.g. 'site-kfold:k=5,fold=0;tracks:k=5,fold=0'. "
             "Methods that use no sites ignore it.")] = None,
    sif_product: Annotated[str | None, typer.Option(
        help="Catalog entry of the SIF cube (sif_tropomi, sif_oco2); default: the method's.")
    ] = None,
    config: Annotated[str | None, typer.Option(help="JSON file with a TrainConfig dict.")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    cache_dir: Annotated[str | None, typer.Option(
        metavar="DIR", help="Pre-training cache folder: runs that share a pre-training (same data, "
             "pre-training config and seed) reuse it; default $XGPP_CACHE_DIR, else none.")
    ] = None,
) -> None:
    """Train a model from a catalog's cubes and save its bundle to OUT."""
    from xgpp.train import train_from_catalog

    model = train_from_catalog(catalog, method=method, split=split, out=out, config=config,
                               seed=seed, device=device, sif_product=sif_product,
                               cache_dir=cache_dir)
    typer.echo(f"{model}\nsaved to {out}; load it with xgpp.load_model({out!r})")


def parse_chunks(text: str | None) -> dict[str, int] | None:
    """``"time=92,lat=180"`` as ``{"time": 92, "lat": 180}``; None for None or ``""``."""
    if not text:
        return None
    out: dict[str, int] = {}
    for part in text.split(","):
        dim, sep, size = part.partition("=")
        try:
            if not sep or not dim.strip():
                raise ValueError(part)
            out[dim.strip()] = int(size)
        except ValueError:
            raise InputError(f"--chunks {text!r}: {part!r} is not DIM=SIZE; write e.g. "
                             "time=92,lat=180 (SIZE an integer, -1 for the whole "
                             "dimension).") from None
    return out


@app.command()
def predict(
    catalog: Annotated[str, typer.Option(help="Catalog holding a 'drivers' entry.")],
    model: Annotated[list[str], typer.Option(
        metavar="PATH", help="Model bundle folder or URL; give it several times for an ensemble (the store "
             "then holds each output's member mean v and spread v_std).")],
    out: Annotated[str, typer.Option(help="Output folder: prediction.zarr + catalog.yaml.")],
    cluster: Annotated[str, typer.Option(
        help="local, cuda, gateway, auto, none (threads) or a scheduler address.")] = "local",
    start: Annotated[str | None, typer.Option(help="First date to predict.")] = None,
    end: Annotated[str | None, typer.Option(help="Last date to predict.")] = None,
    bbox: Annotated[str | None, typer.Option(help="lon_min,lat_min,lon_max,lat_max [degree].")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    precision: Annotated[str, typer.Option(
        help="float32, or bfloat16/float16 for mixed precision (autocast).")] = "float32",
    batch_size: Annotated[int | None, typer.Option(
        help="Rows per forward pass (default: 4096 on a CPU, 2**20 on a GPU).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a store from another run.")] = False,
    chunks: Annotated[str | None, typer.Option(
        help="Dask chunks of the drivers, e.g. time=92,lat=180 (-1: whole dimension); "
             "multiples of the stored chunks make fewer, larger tasks.")] = None,
) -> None:
    """Predict GPP over a catalog's driver cube to Zarr (resumes an interrupted run)."""
    from xgpp.workflows import predict_from_catalog

    url = predict_from_catalog(catalog, model[0] if len(model) == 1 else model, out, cluster=cluster, start=start, end=end,
                               bbox=bbox, device=device, precision=precision,
                               batch_size=batch_size, overwrite=overwrite,
                               chunks=parse_chunks(chunks))
    typer.echo(f"wrote {url}; catalog {out}/catalog.yaml (entry 'prediction')")


@app.command()
def demo(
    out: Annotated[str, typer.Option(help="Folder for the world, model, prediction and plots.")] = "xgpp-demo",
    resolution: Annotated[float, typer.Option(help="Grid spacing [degree].")] = 2.0,
    years: Annotated[int, typer.Option(help="Record length [years], ending 2020.")] = 6,
    cluster: Annotated[str, typer.Option(help="Cluster for prediction.")] = "local",
) -> None:
    """The main job on the embedded default: twin world -> SIFTML -> global prediction -> scores."""
    from xgpp.workflows import run_demo

    run_demo(out, resolution=resolution, years=years, cluster=cluster)


@app.command()
def experiment(
    out: Annotated[str, typer.Option(help="Folder for worlds, runs, metrics and the report.")] = "xgpp-experiment",
    catalog: Annotated[str | None, typer.Option(help="Run on this catalog instead of twin worlds.")] = None,
    config: Annotated[str | None, typer.Option(help="JSON file with ExperimentConfig fields.")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="Every method and split once on a tiny world (minutes).")] = False,
    seeds: Annotated[str | None, typer.Option(help="Comma-separated seeds (default 0,1,2).")] = None,
    worlds: Annotated[str | None, typer.Option(help="Comma-separated world variants.")] = None,
    methods: Annotated[str | None, typer.Option(help="Comma-separated methods (default: the whole registry).")] = None,
    resolution: Annotated[float | None, typer.Option(help="World grid spacing [degree].")] = None,
    years: Annotated[int | None, typer.Option(help="World record length [years], ending 2020.")] = None,
    parallel: Annotated[int | None, typer.Option(help="Runs in flight at once (processes).")] = None,
    report_only: Annotated[bool, typer.Option("--report-only", help="Rewrite the report from finished runs; run nothing.")] = False,
) -> None:
    """Does each method do what the study claims? Every registry method, split, seed and world."""
    from xgpp.experiment import ExperimentConfig, run_experiment

    changes: dict = {}
    if seeds:
        changes["seeds"] = tuple(int(s) for s in seeds.split(","))
    if worlds:
        changes["worlds"] = tuple(w.strip() for w in worlds.split(","))
    if methods:
        changes["methods"] = tuple(m.strip() for m in methods.split(","))
    for key, val in (("resolution", resolution), ("years", years), ("parallel", parallel)):
        if val is not None:
            changes[key] = val
    if config:
        base = ExperimentConfig.from_file(config)
        cfg = base.replace(**changes) if not quick else ExperimentConfig.quick_config(
            **{**base.to_dict(), **changes, "quick": True})
    else:
        cfg = ExperimentConfig.quick_config(**changes) if quick else ExperimentConfig(**changes)
    run_experiment(out, config=cfg, catalog=catalog, run=not report_only)


@app.command("compare-multitask")
def compare_multitask(
    out: Annotated[str, typer.Option(help="Folder for the world, models, results and plots.")] = "xgpp-multitask",
    resolution: Annotated[float, typer.Option(help="Grid spacing [degree].")] = 1.0,
    years: Annotated[int, typer.Option(help="Record length [years], ending 2020.")] = 10,
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds.")] = "0,1,2",
    split: Annotated[str, typer.Option(help="Held-out towers;tracks.")] =
        "site-kfold:k=5,fold=0;tracks:k=5,fold=0",
    config: Annotated[str | None, typer.Option(help="JSON file with a TrainConfig dict.")] = None,
) -> None:
    """The multi-task MoE against its single-task networks on a twin world (several seeds)."""
    import json

    from xgpp.workflows import run_multitask_comparison

    cfg = None
    if config:
        with open(config) as f:
            cfg = json.load(f)
    run_multitask_comparison(out, resolution=resolution, years=years,
                             seeds=tuple(int(s) for s in seeds.split(",")), split=split,
                             config=cfg)


#: Errors that describe bad input, damaged data or an unreachable service: the CLI prints their
#: message (which names the variable, file or address and the fix) as one line instead of a
#: traceback.  :class:`~xgpp.errors.XgppError` is xgpp's own; the built-ins are for third-party
#: libraries (zarr, fsspec, netCDF4...) whose messages say what went wrong.  Anything else
#: (``TypeError``, ``AttributeError``, ``KeyError``, ``AssertionError``...) is a bug and keeps its
#: traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (XgppError, ValueError, OSError, ImportError)

#: Exit status of a run stopped by a user error (typer's usage errors exit 2 as well).
USER_ERROR_EXIT = 2


def _is_user_error(exc: BaseException) -> bool:
    """Whether the CLI reports ``exc`` as one line (a user error) rather than a traceback (a bug).

    ``TypeError``, ``AttributeError``, ``NameError``, ``AssertionError`` and ``KeyError`` raised
    by anything but xgpp (which raises :class:`~xgpp.errors.NotFoundError`) are bugs, also when
    they subclass one of :data:`USER_ERRORS` (``UnicodeDecodeError`` is a ``ValueError``, but a
    decoding failure inside xgpp's readers is reported as :class:`~xgpp.errors.CorruptChunkError`).
    """
    if isinstance(exc, XgppError):
        return True
    if isinstance(exc, (TypeError, AttributeError, NameError, AssertionError, LookupError)):
        return False
    return isinstance(exc, USER_ERRORS)


def _one_line(exc: BaseException) -> str:
    """``xgpp: error: <Type>: <message>`` on one line (newlines in the message folded)."""
    msg = " ".join(str(exc).split())
    return f"xgpp: error: {type(exc).__name__}: {msg} (set XGPP_DEBUG=1 for the traceback)"


def main() -> None:
    """Entry point of the ``xgpp`` console script.

    Bad input (any :class:`~xgpp.errors.XgppError`, or a ``ValueError``/``OSError``/
    ``ImportError`` from a library) ends with one line ``xgpp: error: ...`` on stderr and exit
    status 2; set ``XGPP_DEBUG=1`` for the full traceback.  Genuine bugs (``TypeError``,
    ``AttributeError``...) show their traceback.
    """
    import os
    import sys

    try:
        app()  # usage errors, --help and exit codes are typer's (standalone mode)
    except Exception as err:
        if os.environ.get("XGPP_DEBUG") or not _is_user_error(err):
            raise
        typer.echo(_one_line(err), err=True)
        sys.exit(USER_ERROR_EXIT)


if __name__ == "__main__":
    main()
