"""Lazy reads that fail with :class:`~xgpp.errors.CorruptChunkError` naming the file and chunk.

A damaged file or Zarr chunk fails only when dask reads it, deep inside a task, with whatever
the decoder raises (``RuntimeError: NetCDF: HDF error``, ``ValueError`` from a codec, a
``zlib.error``...).  :func:`guarded_dataset` builds each variable's dask array over a
:class:`GuardedArray`, whose reads turn any such failure into a ``CorruptChunkError`` that
names the store or file, the variable, the element range and (for Zarr) the chunk key.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Hashable, Mapping
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize

from xgpp.errors import CorruptChunkError, InputError, XgppError
from xgpp.io._chunkread import ChunkReader, chunk_reader

__all__ = ["GuardedArray", "guarded_dataset"]


class GuardedArray:
    """A lazily indexed variable whose read failures raise ``CorruptChunkError``.

    Parameters
    ----------
    var : xarray.Variable
        Lazily indexed (backend-backed, not cached) variable.
    where : str
        The file or store, for messages.
    name : str
        Variable name.
    chunk_shape : tuple of int, optional
        Stored chunk shape (Zarr) to name the chunk key; None for netCDF files.
    zarr_format : int
        2 or 3: spelling of the chunk key (``0.1.0`` or ``c/0/1/0``).
    reader : ChunkReader, optional
        Reads whole stored chunks straight from the store (:mod:`xgpp.io._chunkread`); reads
        it does not serve go through ``var``.
    """

    def __init__(self, var: xr.Variable, where: str, name: str,
                 chunk_shape: tuple[int, ...] | None = None, zarr_format: int = 3,
                 reader: ChunkReader | None = None) -> None:
        self.var = var
        self.where = where
        self.name = name
        self.chunk_shape = chunk_shape
        self.zarr_format = zarr_format
        self.shape = tuple(var.shape)
        self.dtype = var.dtype
        self.ndim = var.ndim
        self.reader = reader

    def __getitem__(self, key: Any) -> np.ndarray:
        try:
            if self.reader is not None:
                got = self.reader.read(key)
                if got is not None:
                    return got
            return np.asarray(self.var[key].values)
        except XgppError:
            raise
        except MemoryError:
            raise
        except Exception as err:  # noqa: BLE001 - decoders raise anything; all mean damage here
            raise CorruptChunkError(
                f"{self.where}: cannot read variable {self.name!r} at {self._region(key)}"
                f"{self._chunk(key)}: {type(err).__name__}: {err}. The file or store is damaged "
                "there (truncated, overwritten or partly downloaded); restore it from a copy or "
                "re-download/re-write it."
            ) from err

    def _starts(self, key: Any) -> list[tuple[int, int]]:
        key = key if isinstance(key, tuple) else (key,)
        out = []
        for k, n in zip(key, self.shape, strict=False):
            if isinstance(k, slice):
                start, stop, _ = k.indices(n)
                out.append((start, stop))
            else:
                out.append((int(k), int(k) + 1))
        return out

    def _region(self, key: Any) -> str:
        dims = self.var.dims
        parts = [f"{d} {a}:{b}" for d, (a, b) in zip(dims, self._starts(key), strict=False)]
        return ", ".join(parts) if parts else "its only element"

    def _chunk(self, key: Any) -> str:
        if not self.chunk_shape or len(self.chunk_shape) != self.ndim:
            return ""
        idx = [str(a // max(int(c), 1)) for (a, _), c in zip(self._starts(key),
                                                              self.chunk_shape, strict=False)]
        if self.reader is not None and idx:  # the store's own key encoding
            return f" (Zarr chunk {self.name}/{self.reader.key_of(tuple(map(int, idx)))})"
        if not idx:
            return f" (Zarr chunk {self.name}/{'c' if self.zarr_format == 3 else '0'})"
        key_text = "c/" + "/".join(idx) if self.zarr_format == 3 else ".".join(idx)
        return f" (Zarr chunk {self.name}/{key_text})"


def _mtime(path: str | None) -> float | None:
    try:
        return os.path.getmtime(path) if path else None
    except OSError:
        return None


def guarded_dataset(lazy: xr.Dataset, where: str, *, local_path: str | None = None,
                    zarr_format: int | None = None, group: Any = None,
                    storage_options: dict[str, Any] | None = None,
                    chunks: Mapping[Any, int] | None = None) -> xr.Dataset:
    """Give every lazily read variable of ``lazy`` a dask array over a :class:`GuardedArray`.

    ``lazy`` must be opened with ``chunks=None, cache=False`` (backend arrays, nothing read);
    dask chunks follow the variables' ``preferred_chunks`` (the stored chunks, as
    ``chunks={}`` would) except along the dimensions ``chunks`` names (a size, or -1 for the
    whole dimension; see :func:`check_chunks`); dask names derive from ``where``, the file's
    modification time, the variable and its dask chunks, so they are deterministic across
    processes.  Index coordinates are read now, as xarray does.  With ``group``, the Zarr
    group ``lazy`` was opened from (at URL ``where``, with ``storage_options``), whole stored
    chunks are read by a :class:`~xgpp.io._chunkread.ChunkReader` wherever it gives xarray's
    values exactly.
    """
    asked = check_chunks(chunks, lazy, where)
    stamp = _mtime(local_path)
    out = {}
    cuts: dict[tuple[str, int, int], list[str]] = {}
    for name, var in lazy.variables.items():
        if name in lazy.indexes:
            continue
        preferred = var.encoding.get("preferred_chunks", {})
        dchunks = tuple(_dask_chunk(asked.get(d), int(preferred.get(d, n)) or 1, n)
                        for d, n in zip(var.dims, var.shape, strict=True))
        for cut in _cuts(var.dims, var.shape, dchunks, preferred, asked):
            cuts.setdefault(cut, []).append(str(name))
        stored = var.encoding.get("chunks") if zarr_format else None
        reader = None
        if group is not None:
            try:
                reader = chunk_reader(group[str(name)], var, where, storage_options)
            except (KeyError, TypeError, ValueError, AttributeError):
                reader = None  # not a plain array of this group: xarray's path reads it
        guard = GuardedArray(var, where, str(name),
                             tuple(int(c) for c in stored) if stored else None,
                             zarr_format or 3, reader)
        token = tokenize(where, stamp, str(name), var.dims, var.shape, str(var.dtype), dchunks)
        arr = da.from_array(guard, chunks=dchunks or (), name=f"xgpp-read-{name}-{token}",
                            asarray=False, fancy=False, meta=np.empty((0,) * var.ndim,
                                                                      dtype=var.dtype))
        out[name] = var.copy(deep=False, data=arr)
    if cuts:  # as xarray warns: such stored chunks are read once per dask chunk they fall in
        text = "; ".join(f"along {d!r} dask chunks of {c} cut the stored chunks of {s} (of "
                         f"{', '.join(sorted(names)[:3])}{' ...' if len(names) > 3 else ''})"
                         for (d, c, s), names in cuts.items())
        warnings.warn(f"{where}: {text}. Each such stored chunk is read and decoded once per "
                      "dask chunk it falls in; ask for multiples of the stored chunks.",
                      UserWarning, stacklevel=3)
    return lazy.assign(_only_vars(out, lazy)).assign_coords(_only_coords(out, lazy))


def check_chunks(chunks: Mapping[Any, int] | None, ds: xr.Dataset,
                 where: str) -> dict[Hashable, int]:
    """``chunks`` (dimension -> dask chunk size, -1 for the whole dimension), checked.

    An unknown dimension of ``ds`` or a size that is not a positive integer or -1 raises an
    :class:`~xgpp.errors.InputError` naming it.
    """
    if chunks is None:
        return {}
    if not isinstance(chunks, Mapping):
        raise InputError(f"chunks must map dimension names to dask chunk sizes, e.g. "
                         f"{{'time': 92, 'lat': 180}} (-1: the whole dimension); got "
                         f"{chunks!r} for {where}.")
    out: dict[Hashable, int] = {}
    for dim, size in chunks.items():
        if dim not in ds.dims:
            raise InputError(f"chunks names dimension {dim!r}, which {where} does not have; "
                             f"its dimensions are {sorted(map(str, ds.dims))}.")
        if isinstance(size, bool) or not isinstance(size, int | np.integer) or not (
                size > 0 or size == -1):
            raise InputError(f"chunks[{dim!r}] must be a positive integer or -1 (the whole "
                             f"dimension, {ds.sizes[dim]}); got {size!r} for {where}.")
        out[dim] = int(size)
    return out


def _dask_chunk(asked: int | None, stored: int, n: int) -> int:
    if asked is None:
        return stored
    return max(n, 1) if asked == -1 else min(asked, max(n, 1))


def _cuts(dims: tuple[Hashable, ...], shape: tuple[int, ...], chunks: tuple[int, ...],
          preferred: Mapping[Hashable, int], asked: Mapping[Hashable, int]
          ) -> list[tuple[str, int, int]]:
    """``(dimension, dask chunk, stored chunk)`` where asked dask chunks cut stored chunks."""
    return [(str(d), c, int(preferred[d]))
            for d, n, c in zip(dims, shape, chunks, strict=True)
            if d in asked and c < n and int(preferred.get(d, 0) or 0) and c % int(preferred[d])]


def _only_vars(out: dict[Hashable, xr.Variable], ds: xr.Dataset) -> dict[Hashable, Any]:
    return {k: v for k, v in out.items() if k in ds.data_vars}


def _only_coords(out: dict[Hashable, xr.Variable], ds: xr.Dataset) -> dict[Hashable, Any]:
    return {k: v for k, v in out.items() if k in ds.coords}
