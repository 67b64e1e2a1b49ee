"""Streaming inference: apply a trained model to a (lazy) driver cube, chunk by chunk.

Layers: :func:`_predict_block` (one model) and :func:`_ensemble_block` (every member of an
ensemble on the same chunk) are the numpy/torch kernels for one chunk; :func:`predict` is the
xarray/dask wrapper returning a lazy Dataset; :func:`write_prediction` streams it to Zarr,
resumably.  ``ds.gpp.predict`` and ``xgpp predict`` are thin front doors over these.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
from zarr.codecs import BloscCodec

from xgpp._progress import active_client
from xgpp._version import __version__
from xgpp.errors import InputError
from xgpp.io._chunkwrite import chunk_writer
from xgpp.models.base import PRECISIONS, Model
from xgpp.variables import VARIABLES

__all__ = ["check_inputs", "predict", "resolve_device", "write_prediction"]

_DIMS = ("time", "lat", "lon")

#: Codec of stored predictions: Blosc LZ4 with byte shuffle.  On a 46 x 90 x 90 float32 GPP
#: chunk it encodes about twice as fast as Zarr's default zstd and decodes faster, at the same
#: size; every Zarr v3 reader has Blosc.
OUTPUT_COMPRESSORS = (BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),)

#: CF ``cell_methods`` of every predicted variable: each value is the mean over its time step
#: (the drivers are step means, and so are the targets the models were trained on).
CELL_METHODS = "time: mean"


def resolve_device(device: str = "auto") -> str:
    """``"auto"`` -> ``"cuda"`` when a GPU is visible to torch, else ``"cpu"``.

    :func:`predict` resolves ``"auto"`` inside each task, on the worker that runs it: a laptop
    client driving a GPU cluster (Dask Gateway, dask-cuda) gets the workers' GPUs.
    """
    if device == "auto":
        return _auto_device()
    if device != "cpu" and not device.startswith("cuda"):
        raise InputError(f"device={device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'.")
    return device


@functools.cache
def _auto_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_inputs(ds: xr.Dataset, model: Model | Sequence[Model]
                 ) -> tuple[list[str], list[str]]:
    """Check ``ds`` against the model before any compute; return (time-varying, static) inputs.

    Raises a clear error for a missing input, wrong units or dims (from ``model.check``), a grid
    that is not xgpp's convention (descending latitude, longitudes in 0..360), or time-varying
    inputs whose dask chunks do not line up.  For an ensemble (a list or tuple of models) every
    member is checked, a failing member's error gains a note naming it (index and id), and the
    union of the members' inputs is returned.
    """
    members = _members(model)
    if members is not None:
        return _check_ensemble(ds, members)
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"predict needs an xarray.Dataset of drivers, got {type(ds).__name__}.")
    model.check(ds)
    for dim in ("lat", "lon"):
        if dim not in ds.dims:
            raise InputError(f"dataset has no {dim!r} dimension; xgpp grids are (time, lat, lon).")
    empty = [d for d in _DIMS if ds.sizes.get(d, 1) == 0]
    if empty:
        raise InputError(
            f"the dataset has no {' and no '.join(empty)} points (sizes {dict(ds.sizes)}): a "
            "time range or bbox outside the cube? Nothing to predict."
        )
    lat, lon = ds["lat"].values, ds["lon"].values
    if lat.size > 1 and not np.all(np.diff(lat) > 0):
        raise InputError(
            "latitude must be ascending (south to north); found "
            f"lat[0]={lat[0]:g}, lat[-1]={lat[-1]:g}. Flip it with ds.sortby('lat') or "
            "xgpp.io.harmonize(ds)."
        )
    if lon.size and (lon.max() > 180.0 or lon.min() < -180.0):
        raise InputError(
            f"longitudes must lie in -180..180; found {lon.min():g}..{lon.max():g} (0..360 "
            "convention?). Convert with xgpp.io.harmonize(ds)."
        )
    varying = [n for n in model.inputs if "time" in ds[n].dims]
    static = [n for n in model.inputs if "time" not in ds[n].dims]
    if not varying:
        raise InputError(f"none of the model inputs {list(model.inputs)} has a time dimension.")
    for n in varying:
        if ds[n].dims != _DIMS:
            raise InputError(f"variable {n!r} has dims {ds[n].dims}, expected {_DIMS}; "
                             f"use ds[{n!r}].transpose('time', 'lat', 'lon').")
    _check_chunks(ds, varying)
    return varying, static


def _check_chunks(ds: xr.Dataset, varying: list[str]) -> None:
    """Every dask-backed time-varying input must share one chunking."""
    chunked = [n for n in varying if ds[n].chunks is not None]
    if chunked:
        ref = ds[chunked[0]].chunks
        for n in chunked[1:]:
            if ds[n].chunks != ref:
                raise InputError(
                    f"inputs {chunked[0]!r} and {n!r} have misaligned chunks "
                    f"({_fmt_chunks(ref)} vs {_fmt_chunks(ds[n].chunks)}); every time-varying "
                    "input must share one chunking. Rechunk with ds.chunk({'time': T, 'lat': Y, "
                    "'lon': X}) or ds.unify_chunks()."
                )


def _fmt_chunks(chunks: tuple) -> str:
    return "x".join(str(c[0]) for c in chunks)


# ----------------------------------------------------------------------------- ensembles
#: What an ensemble member must have to be applied (the :class:`Model` members the kernel uses)
_MODEL_API = ("inputs", "outputs", "id", "sha256", "check", "features", "predict_numpy")


def _members(model: Any) -> list[Model] | None:
    """The members of an ensemble (``model`` a list or tuple of models), or None for one model.

    Raises a ValueError naming the item for an empty ensemble or an item that is not a model.
    """
    if not isinstance(model, list | tuple):
        return None
    if not model:
        raise InputError("the ensemble is empty: predict needs at least one model (pass a "
                         "model, or a list of models such as [xgpp.load_model(p) for p in "
                         "paths]).")
    for i, m in enumerate(model):
        missing = [a for a in _MODEL_API if not hasattr(m, a)]
        if missing:
            raise InputError(
                f"ensemble member {i} is a {type(m).__name__} ({_short(m)}), not an xgpp "
                f"model: it lacks {missing}. Every member must be a trained bundle "
                "(xgpp.load_model(path), or what xgpp.train returns)."
            )
    return list(model)


def _short(obj: Any, n: int = 60) -> str:
    text = repr(obj)
    return text if len(text) <= n else text[:n - 3] + "..."


def _check_ensemble(ds: xr.Dataset, members: list[Model]) -> tuple[list[str], list[str]]:
    """:func:`check_inputs` for every member; return the union of (time-varying, static) inputs.

    A failing member's error keeps its type and message and gains a note naming the member
    (index and id).  The union of the members' time-varying inputs must share one chunking.
    """
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"predict needs an xarray.Dataset of drivers, got {type(ds).__name__}.")
    varying: list[str] = []
    static: list[str] = []
    for i, m in enumerate(members):
        try:
            v, st = check_inputs(ds, m)
        except (KeyError, ValueError, TypeError) as err:
            err.add_note(f"in ensemble member {i} of {len(members)} ({m.id})")
            raise
        varying += [n for n in v if n not in varying]
        static += [n for n in st if n not in static]
    _check_chunks(ds, varying)
    return varying, static


def _ensemble_inputs(members: Sequence[Model]) -> list[str]:
    """The union of the members' inputs, in order of first use."""
    names: list[str] = []
    for m in members:
        names += [n for n in m.inputs if n not in names]
    return names


def _ensemble_outputs(members: Sequence[Model], outputs: list[str] | None) -> list[str]:
    """The outputs every member predicts (``outputs`` if given); members must agree on units."""
    first = list(members[0].outputs)
    if outputs is None:
        for i, m in enumerate(members[1:], start=1):
            names = list(m.outputs)
            if set(names) != set(first):
                common = [o for o in first if o in names]
                raise InputError(
                    f"ensemble members must predict the same outputs: member 0 "
                    f"({members[0].id}) predicts {first}, member {i} ({m.id}) predicts "
                    f"{names} (lacks {[o for o in first if o not in names]}, has extra "
                    f"{[o for o in names if o not in first]}). Pass outputs={common} to "
                    "predict what every member has, or drop the member."
                )
        wanted = first
    else:
        wanted = list(outputs)
        if not wanted:
            raise InputError(f"outputs={outputs!r} selects nothing; member 0 "
                             f"({members[0].id}) has outputs {first} (leave outputs=None "
                             "for all).")
        for i, m in enumerate(members):
            lacking = [o for o in wanted if o not in m.outputs]
            if lacking:
                raise InputError(f"ensemble member {i} ({m.id}) has outputs "
                                 f"{list(m.outputs)}; {lacking} requested.")
    for o in wanted:
        units = members[0].outputs[o].get("units")
        for i, m in enumerate(members[1:], start=1):
            if m.outputs[o].get("units") != units:
                raise InputError(
                    f"ensemble members disagree on the units of {o!r}: member 0 "
                    f"({members[0].id}) gives {units!r}, member {i} ({m.id}) gives "
                    f"{m.outputs[o].get('units')!r}; an ensemble averages one quantity."
                )
    return wanted


def _feature_groups(members: Sequence[Model]) -> list[int]:
    """Per member, the index of its featurisation (a chunk is featurised once per index).

    Members of one class and one feature spec (seeds of one method, say) share one.
    """
    keys: list[Any] = []
    groups = []
    for i, m in enumerate(members):
        spec = getattr(m, "spec", None)
        if hasattr(spec, "to_dict"):
            key: Any = (type(m).__module__, type(m).__qualname__,
                        json.dumps(spec.to_dict(), sort_keys=True, default=str))
        else:
            key = ("member", i)
        if key not in keys:
            keys.append(key)
        groups.append(keys.index(key))
    return groups


# ----------------------------------------------------------------------------- kernel
_THREADS_LOCK = threading.Lock()
_THREADS_STATE = {"active": 0, "saved": None}


@contextlib.contextmanager
def _torch_threads() -> Iterator[int]:
    """Give each dask thread its share of the process's cores for torch while a task runs.

    The process's cores are ``OMP_NUM_THREADS`` when set (``xgpp.cluster("local")`` sets it per
    worker), else the cores this process may use (its CPU affinity); each of the dask threads
    running tasks here gets an equal share, so Dask and Torch together do not oversubscribe the
    machine.  Torch's thread count is process-wide, so the first task to enter sets it and the
    last to leave restores the caller's setting (a user's session keeps its own).
    """
    import torch

    from xgpp.cluster import available_cores

    try:
        from distributed import get_worker

        pool = get_worker().state.nthreads
    except (ImportError, ValueError):
        pool = dask.config.get("num_workers", None) or available_cores()
    cores = int(os.environ.get("OMP_NUM_THREADS") or available_cores())
    n = max(1, cores // max(1, int(pool)))
    with _THREADS_LOCK:
        if _THREADS_STATE["active"] == 0:
            _THREADS_STATE["saved"] = torch.get_num_threads()
            torch.set_num_threads(n)
        _THREADS_STATE["active"] += 1
    try:
        yield n
    finally:
        with _THREADS_LOCK:
            _THREADS_STATE["active"] -= 1
            if _THREADS_STATE["active"] == 0:
                torch.set_num_threads(_THREADS_STATE["saved"])


def _chunk_dataset(arrays: Sequence[np.ndarray], varying: list[str], static: list[str],
                   lat: np.ndarray, lon: np.ndarray, block_info: Any) -> xr.Dataset:
    """One chunk's input arrays as a small in-memory Dataset on its part of the grid."""
    shape = arrays[0].shape
    loc = block_info[0]["array-location"] if block_info else [(0, s) for s in shape]
    (y0, y1), (x0, x1) = loc[1], loc[2]
    nv = len(varying)
    data = {n: (_DIMS, b) for n, b in zip(varying, arrays[:nv], strict=True)}
    data |= {n: (("lat", "lon"), b) for n, b in zip(static, arrays[nv:], strict=True)}
    return xr.Dataset(data, coords={"lat": lat[y0:y1], "lon": lon[x0:x1]})


def _predict_block(*blocks: Any, varying: list[str], static: list[str], columns: list[int],
                   device: str, batch_size: int | None, precision: str, lat: np.ndarray,
                   lon: np.ndarray,
                   block_info: Any = None) -> np.ndarray:
    """Kernel for one chunk.

    ``blocks`` are the time-varying inputs (time, lat, lon), the static ones (lat, lon), and
    last the model.  Returns (output, time, lat, lon) float32, NaN where an input is missing.
    A model whose features are :class:`~xgpp.models.TorchModel`'s own is featurised batch by
    batch (:func:`_predict_rows`); any other goes through ``model.features`` on the chunk.
    """
    device = resolve_device(device)
    *arrays, model = blocks
    shape = arrays[0].shape
    out = np.full((len(columns), *shape), np.nan, dtype=np.float32)
    flat = out.reshape(len(columns), -1)
    if _rowwise(model):
        loc = block_info[0]["array-location"] if block_info else [(0, s) for s in shape]
        (y0, y1), (x0, x1) = loc[1], loc[2]
        _predict_rows(model, arrays, varying, static, lat[y0:y1], lon[x0:x1], flat, columns,
                      device=device, batch_size=batch_size, precision=precision)
        return out
    chunk = _chunk_dataset(arrays, varying, static, lat, lon, block_info)
    x, valid = model.features(chunk, return_mask=True)
    if x.shape[0]:
        with _torch_threads():
            y = model.predict_numpy(x, device=device, batch_size=batch_size,
                                    precision=precision)
        for k, c in enumerate(columns):
            flat[k, valid] = y[:, c]
    return out


def _aligned(shape: tuple[int, int], align: int = 64) -> np.ndarray:
    """An empty float32 array whose data start on an ``align``-byte boundary.

    Torch's CPU matrix kernels can round the last bit differently for small batches at other
    alignments, so a fixed alignment makes each batch's result the same in every process.
    """
    n = int(np.prod(shape))
    raw = np.empty(n + align // 4, np.float32)
    skip = (-raw.ctypes.data % align) // 4
    return raw[skip:skip + n].reshape(shape)


def _rowwise(model: Any) -> bool:
    """Whether ``model`` featurises as :meth:`TorchModel.features` does (not overridden)."""
    from xgpp.models.bundle import TorchModel

    return isinstance(model, TorchModel) and type(model).features is TorchModel.features


def _predict_rows(model: Any, arrays: Sequence[np.ndarray], varying: list[str],
                  static: list[str], lat: np.ndarray, lon: np.ndarray, flat: np.ndarray,
                  columns: list[int], *, device: str, batch_size: int | None,
                  precision: str) -> int:
    """Featurise and predict one chunk's valid rows batch by batch, into ``flat`` in place.

    The same numbers as ``model.features(chunk)`` then ``model.predict_numpy``: the features
    of :meth:`FeatureSpec.transform` on the same rows, and forward passes over the same
    batches, so the features are bit for bit the same and the outputs too, except that
    torch may round the last bit of a small batch differently when its rows start at another
    memory alignment (this path always aligns them to 64 bytes, so it gives the same bits in
    every process).  It works without the chunk-sized intermediates, into one reused,
    cache-sized feature buffer.  The columns that depend on the grid cell only (static
    fields, coordinates, the IGBP encoding) are transformed once per cell of the chunk
    (:func:`_cell_features`) and each batch gathers its rows of them; the time-varying inputs'
    columns are then scaled row by row (:meth:`FeatureSpec.scale_into`).  Where a
    time-varying input is not a scaled column (a land cover that changes over time), or the
    cell table would be larger than the chunk's time-varying inputs (few time steps over a
    large grid), each batch is transformed whole.  ``flat`` is (outputs, pixels), NaN where no input; ``lat``
    and ``lon`` are the chunk's coordinates.  Returns the number of batches.
    """
    from xgpp.models.base import default_batch_size

    spec = model.spec
    shape = arrays[0].shape
    nyx = shape[1] * shape[2]
    nv = len(varying)
    cols = {n: a.reshape(-1) for n, a in zip(varying, arrays[:nv], strict=True)}
    fields = {n: np.asarray(a).reshape(-1) for n, a in zip(static, arrays[nv:], strict=True)}
    full = dict(cols)
    for n, a in fields.items():  # the mask needs every pixel: static fields over time
        full[n] = np.broadcast_to(a, (shape[0], nyx)).reshape(-1)
    rows = np.flatnonzero(spec.valid_mask(full))
    if not rows.size:
        return 0
    # the cell table pays where cells recur over time, and is never larger than the chunk's
    # time-varying inputs (a chunk of one time step over a large grid keeps batch memory)
    by_cell = (all(n in spec.config.scaled for n in cols)
               and nyx * spec.n_features <= shape[0] * nyx * nv)
    cells = _cell_features(spec, fields, lat, lon, list(cols)) if by_cell else None
    scaled = [(n, spec.names.index(n), c) for n, c in cols.items()] if by_cell else []
    lat32, lon32 = np.asarray(lat, np.float32), np.asarray(lon, np.float32)
    bs = int(batch_size or default_batch_size(device))
    buf = _aligned((min(bs, rows.size), spec.n_features))
    n_batches = 0
    with _torch_threads():
        for i in range(0, rows.size, bs):
            r = rows[i:i + bs]
            x = buf[:r.size]
            cell = r % nyx
            if cells is not None:
                np.take(cells, cell, axis=0, out=x)  # columns of static fields and the grid
                for n, j, c in scaled:  # then those of the time-varying inputs
                    spec.scale_into(n, c[r], x[:, j])
            else:
                part = {n: c[r] for n, c in cols.items()}
                part |= {n: f[cell] for n, f in fields.items()}
                part["lat"], part["lon"] = lat32[cell // shape[2]], lon32[cell % shape[2]]
                spec.transform(part, out=x)
            y = model.predict_numpy(x, device=device, batch_size=bs, precision=precision)
            for k, c in enumerate(columns):
                flat[k, r] = y[:, c]
            n_batches += 1
    return n_batches


def _cell_features(spec: Any, fields: dict[str, np.ndarray], lat: np.ndarray, lon: np.ndarray,
                   varying: list[str]) -> np.ndarray:
    """Feature rows of a chunk's grid cells ``(lat * lon, n_features)``, float32.

    Every column that depends on the cell only (static fields, latitude and longitude, the
    IGBP encoding) is :meth:`FeatureSpec.transform` of that cell, so a row gathered from here
    has those columns' bits; the columns of the time-varying inputs (``varying``) hold zeros,
    for the caller to fill row by row (:meth:`FeatureSpec.scale_into`).
    """
    ny, nx = len(lat), len(lon)
    per_cell = dict(fields)
    per_cell["lat"] = np.repeat(np.asarray(lat, np.float32), nx)
    per_cell["lon"] = np.tile(np.asarray(lon, np.float32), ny)
    zero = np.zeros(ny * nx, np.float32)
    per_cell |= {n: zero for n in varying}
    return spec.transform(per_cell, out=_aligned((ny * nx, spec.n_features)))


def _ensemble_block(*blocks: Any, varying: list[str], static: list[str],
                    columns: list[list[int]], groups: list[int], device: str,
                    batch_size: int | None, precision: str, lat: np.ndarray, lon: np.ndarray,
                    block_info: Any = None) -> np.ndarray:
    """Kernel for one chunk of an ensemble: every member on the same loaded chunk.

    ``blocks`` are the time-varying inputs, the static ones, and last the members (one each);
    ``columns[i]`` are member *i*'s columns of the requested outputs and ``groups[i]`` its
    featurisation (members sharing one are featurised once).  Mean and population variance
    over the members accumulate in float64 (Welford), so memory does not grow with the
    ensemble.  Returns (2 * output, time, lat, lon) float32: mean and standard deviation
    (ddof=0) of each output in turn, NaN where any member lacks an input.
    """
    device = resolve_device(device)
    n = len(columns)
    arrays, models = blocks[:-n], blocks[-n:]
    shape = arrays[0].shape
    chunk = _chunk_dataset(arrays, varying, static, lat, lon, block_info)
    n_out, n_pix = len(columns[0]), int(np.prod(shape))
    mean = np.zeros((n_out, n_pix))
    m2 = np.zeros((n_out, n_pix))
    last = {g: i for i, g in enumerate(groups)}  # the last member of each featurisation
    cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    with _torch_threads():
        for i, (model, cols, g) in enumerate(zip(models, columns, groups, strict=True)):
            if g not in cache:
                cache[g] = model.features(chunk, return_mask=True)
            x, valid = cache.pop(g) if last[g] == i else cache[g]
            y = np.full((n_out, n_pix), np.nan)
            if x.shape[0]:
                pred = model.predict_numpy(x, device=device, batch_size=batch_size,
                                           precision=precision)
                y[:, valid] = pred[:, cols].T
            delta = y - mean
            mean += delta / (i + 1)
            m2 += delta * (y - mean)
    out = np.empty((2 * n_out, *shape), dtype=np.float32)
    out[0::2] = mean.reshape(n_out, *shape)
    out[1::2] = np.sqrt(m2 / n).reshape(n_out, *shape)
    return out


def predict(ds: xr.Dataset, model: Model | Sequence[Model], *, batch_size: int | None = None,
            device: str = "auto", outputs: list[str] | None = None,
            precision: str = "float32") -> xr.Dataset:
    """Apply ``model`` (or an ensemble of models) to every (time, lat, lon) pixel of ``ds``, lazily.

    Parameters
    ----------
    ds : xarray.Dataset
        Driver cube with the model's inputs in canonical units (``model.inputs``); dask-backed
        data stay lazy and are streamed chunk by chunk.
    model : Model or list of Model
        A trained model (``xgpp.load_model(path)``), or a list or tuple of them: an ensemble
        (seeds and folds of one method, say), predicted in one pass; see Returns.
    batch_size : int, optional
        Rows per forward pass inside a chunk; default by device
        (:data:`xgpp.models.base.DEFAULT_BATCH_SIZE`: 4096 on a CPU, 2**20 on a GPU).
    device : str
        ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.  On a GPU each chunk's rows
        are pinned and copied to the device on a side stream, overlapped with compute.
    outputs : list of str, optional
        Subset of ``model.outputs`` to return (default: all, e.g. ``gpp`` and ``sif``); for
        an ensemble, outputs every member has.
    precision : {"float32", "bfloat16", "float16"}
        Arithmetic of the forward pass; below float32 it runs under ``torch.autocast`` (mixed
        precision) and is recorded in the output's ``xgpp_precision`` attribute.

    Returns
    -------
    xarray.Dataset
        One float32 variable per output on the input's grid and time axis, NaN where any input
        is missing (ocean costs no model time), with CF attributes and provenance: each
        variable's ``units``, ``long_name``, ``cell_methods`` (``"time: mean"``) and, where CF
        defines one, ``standard_name`` (``gpp``:
        ``gross_primary_productivity_of_biomass_expressed_as_carbon``; SIF has no CF standard
        name, so ``sif`` has none); the dataset's ``history`` starts with a line giving the UTC
        time, xgpp's version and the model id (the input's ``history`` follows).

        For an ensemble of *N* members, each output ``v`` is the ensemble mean
        (``cell_methods`` ``"time: mean realization: mean"``, otherwise the attributes of a
        single model's ``v``) and ``v_std`` the ensemble spread: the population standard
        deviation over the members, ``sqrt(mean_i (v_i - v)**2)`` (ddof=0, so a one-member
        ensemble has spread 0), in the units of ``v``, with ``long_name`` ``"ensemble standard
        deviation of ..."``, ``cell_methods`` ``"time: mean realization: standard_deviation"``
        and no ``standard_name``.  Both are NaN where any member lacks an input.  Every
        variable and the dataset carry ``ensemble_size`` (*N*) and ``xgpp_model_ids``; the
        ``history`` line lists every member's id.  Each chunk is read and featurised once
        (once per distinct feature spec) and every member runs on it in the same task.  The
        members must predict the same outputs in the same units (column order may differ),
        and the cube must hold every member's inputs; members may use different features.
    """
    members = _members(model)
    varying, static = check_inputs(ds, model)
    if members is not None:
        return _build_ensemble(ds, members, varying, static, batch_size=batch_size,
                               device=device, outputs=outputs, precision=precision)
    return _build(ds, model, varying, static, batch_size=batch_size, device=device,
                  outputs=outputs, precision=precision)


def _check_options(precision: str, batch_size: int | None, device: str) -> None:
    if precision not in PRECISIONS:
        raise InputError(f"precision={precision!r}; choose one of {list(PRECISIONS)}.")
    if batch_size is not None and int(batch_size) < 1:
        raise InputError(f"batch_size must be a positive number of rows, got {batch_size}.")
    if device != "auto":
        resolve_device(device)  # a bad name fails here, before any compute


def _block_inputs(ds: xr.Dataset, varying: list[str], static: list[str]
                  ) -> tuple[list[da.Array], list[da.Array], tuple]:
    """The inputs as dask arrays on one chunking: (time-varying, static, chunks)."""
    arrays = [da.asarray(ds[n].data) for n in varying]
    # the first dask-backed input sets the chunks; in-memory inputs (numpy) follow it, and a
    # cube held wholly in memory is one block
    chunked = [a for n, a in zip(varying, arrays, strict=True) if ds[n].chunks is not None]
    target = chunked[0].chunks if chunked else tuple((s,) for s in arrays[0].shape)
    arrays = [a if a.chunks == target else a.rechunk(target) for a in arrays]
    chunks = arrays[0].chunks
    # static (lat, lon) fields: map_blocks broadcasts them along the time blocks
    statics = [da.asarray(ds[n].transpose("lat", "lon").data).rechunk(chunks[1:]) for n in static]
    return arrays, statics, chunks


def _model_key(model: Model) -> tuple[str, Any]:
    """The model as one key of the graph (each worker receives it once), and its token."""
    token = dask.base.tokenize(model.sha256, json.dumps(_model_identity(model),
                                                        sort_keys=True, default=str))
    return token, dask.delayed(model, pure=True, name=f"xgpp-model-{token}")


def _build(ds: xr.Dataset, model: Model, varying: list[str], static: list[str], *,
           batch_size: int | None, device: str, outputs: list[str] | None,
           precision: str) -> xr.Dataset:
    """:func:`predict` after :func:`check_inputs`: validate the options, build the graph."""
    names = list(model.outputs)
    wanted = names if outputs is None else list(outputs)
    if not wanted:
        raise InputError(f"outputs={outputs!r} selects nothing; model {model.id} has outputs "
                         f"{names} (leave outputs=None for all).")
    unknown = [o for o in wanted if o not in names]
    if unknown:
        raise InputError(f"model {model.id} has outputs {names}; {unknown} requested.")
    columns = [names.index(o) for o in wanted]
    _check_options(precision, batch_size, device)
    arrays, statics, chunks = _block_inputs(ds, varying, static)
    model_token, model_key = _model_key(model)
    lat, lon = ds["lat"].values, ds["lon"].values
    out = da.map_blocks(
        _predict_block, *arrays, *statics, model_key,
        varying=varying, static=static, columns=columns, device=device, batch_size=batch_size,
        precision=precision, lat=lat, lon=lon, new_axis=0, chunks=((len(columns),), *chunks),
        dtype=np.float32, meta=np.empty((0, 0, 0, 0), np.float32),
        # the name identifies the inputs (dask names their data deterministically: store path
        # and mtime, selections, or the bytes of in-memory data), the model and the options;
        # it is stable across processes, so it also identifies a resumable store
        name="xgpp-predict-" + dask.base.tokenize(model_token, varying, static, columns,
                                                   precision, device, batch_size, lat, lon,
                                                   [a.name for a in arrays + statics]),
    )
    attrs = {
        "xgpp_model_id": model.id,
        "xgpp_model_sha256": model.sha256,
        "xgpp_model_inputs": json.dumps(list(model.inputs)),
        "xgpp_version": __version__,
        "xgpp_precision": precision,
        "source": f"xgpp.predict with model {model.id}",
        "history": _history(ds, f"model {model.id}"),
    }
    return xr.Dataset(
        {o: (_DIMS, out[k], _output_attrs(o, model)) for k, o in enumerate(wanted)},
        coords={c: ds[c] for c in _DIMS if c in ds.coords},
        attrs={**{k: v for k, v in ds.attrs.items() if k in ("Conventions",)}, **attrs},
    )


def _build_ensemble(ds: xr.Dataset, members: list[Model], varying: list[str],
                    static: list[str], *, batch_size: int | None, device: str,
                    outputs: list[str] | None, precision: str) -> xr.Dataset:
    """:func:`predict` of an ensemble after :func:`check_inputs`: one kernel for all members."""
    wanted = _ensemble_outputs(members, outputs)
    _check_options(precision, batch_size, device)
    arrays, statics, chunks = _block_inputs(ds, varying, static)
    keyed = [_model_key(m) for m in members]
    columns = [[list(m.outputs).index(o) for o in wanted] for m in members]
    groups = _feature_groups(members)
    lat, lon = ds["lat"].values, ds["lon"].values
    out = da.map_blocks(
        _ensemble_block, *arrays, *statics, *(key for _, key in keyed),
        varying=varying, static=static, columns=columns, groups=groups, device=device,
        batch_size=batch_size, precision=precision, lat=lat, lon=lon, new_axis=0,
        chunks=((2 * len(wanted),), *chunks), dtype=np.float32,
        meta=np.empty((0, 0, 0, 0), np.float32),
        # as for one model (see _build): inputs, members (in order) and options
        name="xgpp-predict-ensemble-" + dask.base.tokenize(
            [t for t, _ in keyed], varying, static, columns, precision, device, batch_size, lat,
            lon, [a.name for a in arrays + statics]),
    )
    n = len(members)
    ids = [m.id for m in members]
    attrs = {
        "xgpp_model_ids": json.dumps(ids),
        "xgpp_model_sha256s": json.dumps([m.sha256 for m in members]),
        "xgpp_model_inputs": json.dumps(_ensemble_inputs(members)),
        "ensemble_size": n,
        "xgpp_version": __version__,
        "xgpp_precision": precision,
        "source": f"xgpp.predict with an ensemble of {n} models",
        "history": _history(ds, f"an ensemble of {n} models: {', '.join(ids)}"),
    }
    data = {}
    for k, o in enumerate(wanted):
        data[o] = (_DIMS, out[2 * k], _ensemble_attrs(o, members))
        data[f"{o}_std"] = (_DIMS, out[2 * k + 1], _ensemble_attrs(o, members, spread=True))
    return xr.Dataset(
        data, coords={c: ds[c] for c in _DIMS if c in ds.coords},
        attrs={**{k: v for k, v in ds.attrs.items() if k in ("Conventions",)}, **attrs},
    )


def _output_attrs(name: str, model: Model) -> dict[str, str]:
    """CF attributes of predicted variable ``name``.

    ``units`` and ``long_name`` come from the model (:data:`xgpp.models.base.OUTPUTS`), the CF
    ``standard_name`` from :data:`xgpp.variables.VARIABLES` (the table the twin world's and
    the flux towers' GPP take theirs from), and ``cell_methods`` is :data:`CELL_METHODS`.  SIF
    has no CF standard name, so ``sif`` carries none.
    """
    attrs = dict(model.outputs[name])
    var = VARIABLES.get(name)
    if var is not None and var.standard_name:
        attrs["standard_name"] = var.standard_name
    attrs["cell_methods"] = CELL_METHODS
    attrs["xgpp_model_id"] = model.id
    return attrs


def _ensemble_attrs(name: str, members: list[Model], *, spread: bool = False) -> dict[str, Any]:
    """CF attributes of an ensemble's mean of ``name``, or of its spread (``spread=True``).

    The mean has a single model's attributes (:func:`_output_attrs`) with ``realization:
    mean`` added to ``cell_methods`` (``realization`` is the CF standard name of the ensemble
    member axis).  The spread keeps ``units``, gets ``long_name`` "ensemble standard deviation
    of ...", ``cell_methods`` ``realization: standard_deviation`` and no ``standard_name``.
    """
    n = len(members)
    attrs: dict[str, Any] = _output_attrs(name, members[0])
    del attrs["xgpp_model_id"]
    if spread:
        attrs = {
            "units": attrs["units"],
            "long_name": f"ensemble standard deviation of {attrs['long_name']}",
            "cell_methods": f"{CELL_METHODS} realization: standard_deviation",
            "comment": f"population standard deviation (ddof=0) of {name!r} over the {n} "
                       "ensemble members: sqrt(mean((member - ensemble mean)**2))",
        }
    else:
        attrs["cell_methods"] = f"{CELL_METHODS} realization: mean"
    attrs["ensemble_size"] = n
    attrs["xgpp_model_ids"] = json.dumps([m.id for m in members])
    return attrs


def _history(ds: xr.Dataset, what: str) -> str:
    """The output's CF ``history``: a new line for this run, then the inputs' history.

    The new line gives the UTC time (ISO 8601), xgpp's version, what ran and with which
    model(s) (``what``).
    """
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    line = f"{now}: xgpp {__version__} xgpp.predict with {what}"
    if ds.attrs.get("history"):  # CF: the inputs' history goes on, the newest line first
        line = f"{line}\n{ds.attrs['history']}"
    return line


def _model_identity(model: Model) -> dict:
    """What besides the weights makes a model's outputs (scales, normalisation, features)."""
    meta = model.metadata() if hasattr(model, "metadata") else {}
    return {k: v for k, v in meta.items() if k not in ("provenance", "created")}


# ----------------------------------------------------------------------------- resumable write
def _zarr_regular(ds: xr.Dataset, inputs: list[str], varying: list[str]) -> xr.Dataset:
    """Rechunk the model's ``inputs`` so every output chunk is Zarr-regular.

    Zarr needs equal chunks along a dimension except a shorter last one; a subset of a cube
    (``--start``, ``--bbox``) usually starts mid-chunk.  Each such dimension gets chunks of
    its largest chunk size (tasks then read from up to two source chunks).
    """
    chunks = ds[varying[0]].chunksizes
    fix = {}
    for dim, c in chunks.items():
        if len(c) > 1 and (len(set(c[:-1])) > 1 or c[-1] > c[0]):
            fix[dim] = max(c)
    if not fix:
        return ds
    names = [n for n in inputs if any(d in ds[n].dims for d in fix)]
    return ds.assign({n: ds[n].chunk({d: s for d, s in fix.items() if d in ds[n].dims})
                      for n in names})


def _fingerprint(result: xr.Dataset, model: Model | list[Model], ds: xr.Dataset) -> str:
    """The identity of a prediction store: model(s), outputs, inputs, options, grid, chunks.

    An ensemble's is over every member's weights and identity, in member order; one model's
    is unchanged by ensembles (stores written before them resume).
    """
    import hashlib

    t = result["time"].values
    if isinstance(model, list):
        inputs = _ensemble_inputs(model)
        who: dict[str, Any] = {"model": [m.sha256 for m in model],
                               "model_identity": [_model_identity(m) for m in model]}
    else:
        inputs = list(model.inputs)
        who = {"model": model.sha256, "model_identity": _model_identity(model)}
    desc = {
        **who,
        "outputs": list(result.data_vars),
        # the input data: dask names it deterministically (store path and mtime, selections,
        # rechunking) and hashes in-memory arrays, so this is stable across processes; the
        # device and batch size are left out: resuming on another device, or with a smaller
        # batch after running out of GPU memory, continues the same store
        "inputs_data": dask.base.tokenize(*(ds[n].variable for n in inputs)),
        "inputs": inputs,
        "precision": result.attrs.get("xgpp_precision", "float32"),
        "time": [str(t[0]), str(t[-1]), int(t.size)] if t.size else [],
        "lat": [float(result.lat[0]), float(result.lat[-1]), int(result.lat.size)],
        "lon": [float(result.lon[0]), float(result.lon[-1]), int(result.lon.size)],
        "chunks": {k: list(v) for k, v in result.chunks.items()},
    }
    return hashlib.sha256(json.dumps(desc, sort_keys=True, default=str).encode()).hexdigest()


def write_prediction(ds: xr.Dataset, model: Model | Sequence[Model], url: str, *,
                     storage_options: dict | None = None,
                     batch_size: int | None = None, device: str = "auto",
                     outputs: list[str] | None = None, precision: str = "float32",
                     overwrite: bool = False, progress: bool = True,
                     retries: int = 2) -> str:
    """Predict and stream the result to a Zarr v3 store, resumably.

    The store is written one time slab (one row of chunks) at a time; each finished slab is
    recorded in the store's ``xgpp_done_slabs`` attribute.  Run again with the same arguments
    after an interruption and the finished slabs are skipped; the result is identical to an
    uninterrupted run.  The store's ``xgpp_complete`` attribute turns true only when every chunk
    is written, so a half-written store is never presented as complete.  An ensemble (a list
    of models) writes the mean and spread variables of :func:`predict` in the same one pass per
    chunk; its store's identity covers every member, in order.

    Parameters
    ----------
    ds, model, batch_size, device, outputs, precision
        As for :func:`predict`.
    url : str
        Target store (local path or fsspec URL).
    storage_options : dict, optional
        fsspec options for the target.
    overwrite : bool
        Replace a store written by a different run (other model, grid or chunks).
    progress : bool
        Show a progress bar over slabs.
    retries : int
        Times a failed task is tried again before the write fails: reads from and writes to
        object stores (S3, GCS) meet transient errors (timeouts, throttling, dropped
        connections).  On a distributed cluster these are Dask task retries (each task of the
        write); on the local scheduler a slab that fails with an ``OSError`` is computed
        again.  Tasks lost with a worker that dies are rescheduled by the scheduler itself and
        do not count.  A chunk that cannot be decoded still fails (after its retries) and is
        named by :class:`xgpp._chunks.UnreadableChunkError`.

    Returns
    -------
    str
        ``url``.

    Notes
    -----
    Failure modes and what they leave are in ``docs/reliability.md``: a write killed part-way
    leaves ``xgpp_complete: false`` and the finished slabs in ``xgpp_done_slabs``;
    :func:`xgpp.open_cube` refuses such a store (:class:`xgpp.errors.IncompleteStoreError`)
    until the same call finishes it.
    """
    import fsspec
    import zarr

    members = _members(model)
    varying, static = check_inputs(ds, model)
    inputs = list(model.inputs) if members is None else _ensemble_inputs(members)
    src = _zarr_regular(ds, inputs, varying)
    if members is None:
        result = _build(src, model, varying, static, batch_size=batch_size, device=device,
                        outputs=outputs, precision=precision)
    else:
        result = _build_ensemble(src, members, varying, static, batch_size=batch_size,
                                 device=device, outputs=outputs, precision=precision)
    fp = _fingerprint(result, model if members is None else members, src)
    opts = storage_options or {}
    fs, root = fsspec.core.url_to_fs(url, **opts)
    done: set[int] | None = None
    if fs.exists(f"{root}/zarr.json"):
        attrs = dict(zarr.open_group(url, mode="r", storage_options=opts or None).attrs)
        if attrs.get("xgpp_fingerprint") == fp:
            if attrs.get("xgpp_complete"):
                return url
            # a slab counts as done only with its valid count beside it: a store written
            # before the two were saved in one write may hold a slab without its count
            known = set(attrs.get("xgpp_valid_counts", {}))
            done = {i for i in attrs.get("xgpp_done_slabs", []) if str(i) in known}
        elif not overwrite:
            raise FileExistsError(
                f"{url} already holds a store that is not this prediction (other model, "
                "inputs, grid, chunks or options). Choose another output, or pass "
                "overwrite=True (--overwrite) to replace it."
            )
    if done is None:
        init = result.copy()
        init.attrs.update(xgpp_fingerprint=fp, xgpp_complete=False, xgpp_done_slabs=[])
        init.to_zarr(url, mode="w", compute=False, zarr_format=3, consolidated=False,
                     storage_options=opts or None,
                     encoding={o: {"compressors": OUTPUT_COMPRESSORS} for o in init.data_vars})
        done = set()
    group = zarr.open_group(url, mode="r+", storage_options=opts or None)

    tchunks = result.chunks["time"]
    edges = np.concatenate([[0], np.cumsum(tchunks)]).astype(int)
    todo = [i for i in range(len(tchunks)) if i not in done]
    names = list(result.data_vars)
    # whole chunks encoded and written straight to the store where that writes zarr's bytes
    # (xgpp/io/_chunkwrite.py), else through zarr
    writers = [chunk_writer(group[o], f"{url.rstrip('/')}/{o}", opts) for o in names]
    writes = {}
    for i in todo:
        t = slice(int(edges[i]), int(edges[i + 1]))
        # one task per chunk predicts it, stores every output's part (the store's metadata
        # and coordinates are written above) and returns its count of valid values: the
        # model runs once, and nothing but one integer per chunk leaves the worker (storing
        # with da.store and counting the stored arrays apart made dask move whole chunks
        # between workers and ran 2.8x slower)
        counts_ = da.map_blocks(_store_and_count, *(result[o].data[t] for o in names),
                                targets=[group[o] for o in names], writers=writers,
                                t0=int(edges[i]),
                                dtype=np.int64, chunks=(1,) * result[names[0]].ndim,
                                meta=np.empty((0,) * result[names[0]].ndim, np.int64))
        writes[i] = counts_.sum()
    # valid values per slab, those of slabs finished by an earlier run included
    counts = {int(k): int(v) for k, v in group.attrs.get("xgpp_valid_counts", {}).items()
              if int(k) in done}

    def mark(i: int, n_valid: int) -> None:
        counts[i] = n_valid
        done.add(i)
        # one write of the group's metadata: zarr's ``attrs.update`` is MutableMapping's,
        # one write per key, and a run killed between the two left a slab marked done
        # without its count
        group.update_attributes({"xgpp_done_slabs": sorted(done),
                                 "xgpp_valid_counts": {str(k): v for k, v in counts.items()}})

    def diagnose(i: int, err: BaseException) -> None:
        from xgpp._chunks import naming_unreadable

        with naming_unreadable(src, inputs,
                               {"time": slice(int(edges[i]), int(edges[i + 1]))}):
            raise err

    _run_slabs(writes, mark, progress=progress, total=len(tchunks), skipped=len(done),
               label=f"predicting {', '.join(result.data_vars)} -> {url}", on_error=diagnose,
               retries=retries)
    if sum(counts.values()) == 0:
        raise InputError(_all_missing_message(src, inputs, names[0], url))
    group.update_attributes({"xgpp_complete": True})
    return url


def _store_and_count(*blocks: np.ndarray, targets: list[Any], t0: int,
                     writers: list[Any] | None = None, block_info: Any = None) -> np.ndarray:
    """Store each output's chunk into its Zarr array; return the count of finite values.

    ``blocks`` are the outputs' chunks of one time slab starting at time ``t0``; the count
    comes back as a one-element array of the blocks' rank, one per chunk.  Each output's
    :class:`~xgpp.io._chunkwrite.ChunkWriter` (None: none) writes its chunk if it can, else
    zarr does.
    """
    loc = block_info[0]["array-location"] if block_info else [(0, n) for n in blocks[0].shape]
    region = tuple(slice(a + (t0 if d == 0 else 0), b + (t0 if d == 0 else 0))
                   for d, (a, b) in enumerate(loc))
    n_valid = 0
    for block, target, writer in zip(blocks, targets, writers or [None] * len(targets),
                                     strict=True):
        if writer is None or not writer.write(region, block):
            target[region] = block
        n_valid += int(np.isfinite(block).sum())
    return np.full((1,) * blocks[0].ndim, n_valid, np.int64)


def _all_missing_message(ds: xr.Dataset, inputs: list[str], output: str, url: str) -> str:
    """Why every predicted pixel is NaN: which inputs hold no finite value (first time slab)."""
    first = ds.isel(time=slice(0, 1)) if "time" in ds.dims else ds
    empty = [n for n in inputs if not bool(first[n].notnull().any().compute())]
    which = (f"inputs {empty} have no finite value in the first time step"
             if empty else "no pixel has every input finite at once (e.g. the land mask and "
             "the drivers do not overlap, or a bbox wholly over the ocean)")
    return (f"every pixel of {output!r} is NaN: {which}. A prediction needs all of "
            f"{inputs} finite at a land pixel. {url} is left marked incomplete "
            "(xgpp_complete=false).")


def _run_slabs(writes: dict[int, Any], mark: Any, *, progress: bool, total: int, skipped: int,
               label: str, on_error: Any = None, retries: int = 0) -> None:
    """Compute slab writes (on the active distributed client if any), marking each when done.

    When a slab fails, ``on_error(slab, error)`` may raise a clearer error (the unreadable
    input chunk); otherwise the original error propagates.  Finished slabs stay marked.
    """
    try:
        _compute_slabs(writes, mark, progress=progress, total=total, skipped=skipped,
                       label=label, retries=retries)
    except Exception as err:
        slab = getattr(err, "xgpp_slab", None)
        if on_error is not None and slab is not None:
            on_error(slab, err)
        raise


def _compute_slabs(writes: dict[int, Any], mark: Any, *, progress: bool, total: int,
                   skipped: int, label: str, retries: int = 0) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task(label, total=total, completed=skipped)
        client = active_client()
        if client is not None:
            from distributed import as_completed

            # one submission: the scheduler orders the chunks of all slabs together
            futures = dict(zip(client.compute(list(writes.values()), retries=retries),
                               writes, strict=True))
            try:
                for fut in as_completed(list(futures)):
                    mark(futures[fut], int(_tagged(fut.result, futures[fut])))
                    bar.advance(task)
            finally:
                client.cancel([f for f in futures if not f.done()])
            return
        for i, w in writes.items():
            for attempt in range(retries + 1):
                try:
                    (n_valid,) = _tagged(dask.compute, i, w)
                    break
                except OSError:  # transient I/O (object stores): the slab again, whole
                    if attempt == retries:
                        raise
            mark(i, int(n_valid))
            bar.advance(task)


def _tagged(fn: Any, slab: int, *args: Any) -> Any:
    """Run ``fn``; an error leaving it carries ``xgpp_slab`` (the time slab that failed)."""
    try:
        return fn(*args)
    except Exception as err:
        err.xgpp_slab = slab
        raise


# xgpp.predict(ds, model) works although xgpp.predict is also this module
from xgpp._callable import make_module_callable  # noqa: E402

make_module_callable(__name__, "predict")
