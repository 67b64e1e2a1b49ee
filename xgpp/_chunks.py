"""Name the unreadable chunk when a streamed read fails (a corrupt or missing Zarr chunk).

A failed decode deep inside a dask task says only ``Zstd decompression error``; users need the
variable, the region and the store's chunk key to repair a store.  :func:`find_unreadable` reads
the chunks of a region one by one, after a failure only, and describes the first that fails.
"""

from __future__ import annotations

import contextlib
import itertools
import zlib
from collections.abc import Iterator

import numpy as np
import xarray as xr

__all__ = ["UnreadableChunkError", "find_unreadable", "naming_unreadable"]


class UnreadableChunkError(OSError):
    """A chunk of an input store cannot be read or decoded."""


def _fmt(coord: xr.DataArray) -> str:
    v = coord.values
    if np.issubdtype(v.dtype, np.datetime64):
        return f"{np.datetime_as_string(v[0], unit='D')}..{np.datetime_as_string(v[-1], unit='D')}"
    return f"{v[0]:g}..{v[-1]:g}"


def find_unreadable(ds: xr.Dataset, names: list[str], region: dict[str, slice], *,
                    origin: dict[str, xr.Dataset] | None = None) -> UnreadableChunkError | None:
    """The first chunk of ``names`` inside ``region`` that fails to read, as an error to raise.

    Parameters
    ----------
    ds : xarray.Dataset
        The dask-backed dataset whose computation failed.
    names : list of str
        Variables to probe.
    region : dict of slice
        Integer slices per dimension (e.g. one time slab); other dimensions are probed whole.
    origin : dict, optional
        Variable name -> the opened store's Dataset it was taken from, when ``ds`` is a subset
        or a merge (to report the store and its chunk key); default ``ds`` itself.

    Returns
    -------
    UnreadableChunkError or None
        None when every chunk reads (the failure was elsewhere).
    """
    for name in names:
        store = (origin or {}).get(name, ds)
        source = store.encoding.get("source", "the input store")
        var = ds[name].isel({d: s for d, s in region.items() if d in ds[name].dims})
        if var.chunks is None:
            continue
        edges = [np.concatenate([[0], np.cumsum(c)]).astype(int) for c in var.chunks]
        for idx in itertools.product(*(range(len(c)) for c in var.chunks)):
            sel = {d: slice(int(e[i]), int(e[i + 1])) for d, e, i in zip(var.dims, edges, idx,
                                                                          strict=True)}
            block = var.isel(sel)
            try:
                block.data.compute(scheduler="sync")
            except Exception as err:  # noqa: BLE001 - any failure to read is what we report
                if _not_damage(err):  # e.g. credentials only the workers hold: say nothing
                    return None
                where = ", ".join(f"{d} {_fmt(block[d])}" for d in var.dims if d in block.coords)
                key = _zarr_key(store, name, block)
                return UnreadableChunkError(
                    f"cannot read variable {name!r} at {where}{key} from {source}: "
                    f"{type(err).__name__}: {err}. The store is damaged there; re-write it "
                    "(or restore that chunk from a copy) and run again."
                )
    return None


# failures that say nothing about the stored bytes (access rights, missing credentials on the
# client that probes): they must not be reported as a damaged chunk
_ACCESS_WORDS = ("credential", "accessdenied", "access denied", "forbidden", "unauthori",
                 "expiredtoken", "invalidaccesskeyid", "signaturedoesnotmatch")


def _not_damage(err: BaseException) -> bool:
    text = f"{type(err).__name__} {err}".lower()
    return isinstance(err, PermissionError) or any(w in text for w in _ACCESS_WORDS)


# errors a failed read or decode raises (Blosc, Zstd and LZ4 raise RuntimeError, Zlib and GZip
# zlib.error or EOFError, stores OSError);
# anything else (a bug, MemoryError, a cancelled task) propagates without probing the inputs
READ_ERRORS = (OSError, RuntimeError, ValueError, EOFError, zlib.error)


@contextlib.contextmanager
def naming_unreadable(ds: xr.Dataset, names: list[str], region: dict[str, slice] | None = None,
                      *, origin: dict[str, xr.Dataset] | None = None) -> Iterator[None]:
    """Name the damaged chunk when the ``with`` block fails on unreadable input.

    A read or decode failure inside the block (:data:`READ_ERRORS`) becomes
    :class:`UnreadableChunkError` when a chunk of ``names`` (within ``region``) does not read
    here; other failures, access-rights errors and chunks that read fine here propagate
    unchanged.
    """
    try:
        yield
    except UnreadableChunkError:
        raise
    except READ_ERRORS as err:
        if _not_damage(err):
            raise
        bad = find_unreadable(ds, names, region or {}, origin=origin)
        if bad is not None:
            raise bad from err
        raise


def _zarr_key(store: xr.Dataset, name: str, block: xr.DataArray) -> str:
    """`` (Zarr chunk c/i/j/k)``: the store chunk inside the failed ``block`` that fails, or ``""``.

    Positions come from the store's own coordinate arrays (opened from
    ``store.encoding["source"]``), so the key is right for subsets of the store too; a block
    spanning several store chunks is probed piece by piece.
    """
    shape = store[name].encoding.get("chunks")
    source = store.encoding.get("source")
    if not shape or not source or len(shape) != block.ndim:
        return ""
    try:
        import pandas as pd

        opened = xr.open_zarr(source, consolidated=False, chunks=None)  # decoded coordinates
        positions, ids = [], []
        for dim, size in zip(block.dims, shape, strict=True):
            pos = pd.Index(opened[dim].values).get_indexer(block[dim].values)
            if (pos < 0).any():
                return ""
            positions.append(pos)
            ids.append(pos // int(size))
        for combo in itertools.product(*(np.unique(i) for i in ids)):
            sel = {}
            for dim, pos, i, c in zip(block.dims, positions, ids, combo, strict=True):
                hit = pos[i == c]
                sel[dim] = slice(int(hit.min()), int(hit.max()) + 1)
            try:  # straight from the store: reads exactly one stored chunk
                opened[name].isel(sel).load()
            except Exception:  # noqa: BLE001
                return " (Zarr chunk c/" + "/".join(str(int(c)) for c in combo) + ")"
    except Exception:  # noqa: BLE001 - the key is a courtesy; the region is always reported
        return ""
    return ""
