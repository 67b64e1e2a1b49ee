"""Name the unreadable chunk when a streamed read fails (a corrupt or missing Zarr chunk).

A failed decode deep inside a dask task says only ``Zstd decompression error``; users need the
variable, the region and the store's chunk key to repair a store.  :func:`find_unreadable` reads
the chunks of a region one by one, after a failure only, and describes the first that fails.
"""

from __future__ import annotations

import itertools

import numpy as np
import xarray as xr

__all__ = ["UnreadableChunkError", "find_unreadable"]


class UnreadableChunkError(OSError):
    """A chunk of an input store cannot be read or decoded."""


def _fmt(coord: xr.DataArray) -> str:
    v = coord.values
    if np.issubdtype(v.dtype, np.datetime64):
        return f"{np.datetime_as_string(v[0], unit='D')}..{np.datetime_as_string(v[-1], unit='D')}"
    return f"{v[0]:g}..{v[-1]:g}"


def find_unreadable(ds: xr.Dataset, names: list[str], region: dict[str, slice]
                    ) -> UnreadableChunkError | None:
    """The first chunk of ``names`` inside ``region`` that fails to read, as an error to raise.

    Parameters
    ----------
    ds : xarray.Dataset
        The dask-backed dataset whose computation failed.
    names : list of str
        Variables to probe.
    region : dict of slice
        Integer slices per dimension (e.g. one time slab); other dimensions are probed whole.

    Returns
    -------
    UnreadableChunkError or None
        None when every chunk reads (the failure was elsewhere).
    """
    source = ds.encoding.get("source", "the input store")
    for name in names:
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
                where = ", ".join(f"{d} {_fmt(block[d])}" for d in var.dims if d in block.coords)
                key = _zarr_key(ds[name], block)
                return UnreadableChunkError(
                    f"cannot read variable {name!r} at {where}{key} from {source}: "
                    f"{type(err).__name__}: {err}. The store is damaged there; re-write it "
                    "(or restore that chunk from a copy) and run again."
                )
    return None


def _zarr_key(full: xr.DataArray, block: xr.DataArray) -> str:
    """`` (Zarr chunk c/i/j/k)`` when the variable's on-disk chunking is known."""
    shape = full.encoding.get("chunks")
    if not shape or len(shape) != full.ndim:
        return ""
    starts = []
    for dim, size in zip(full.dims, shape, strict=True):
        idx = full.get_index(dim) if dim in full.indexes else None
        first = block[dim].values[0] if dim in block.coords else None
        if idx is None or first is None:
            return ""
        starts.append(int(idx.get_loc(first)) // int(size))
    return " (Zarr chunk c/" + "/".join(map(str, starts)) + ")"
