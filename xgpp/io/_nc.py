"""Read netCDF4/HDF5 files, local or through fsspec: as xarray Datasets or variable by variable."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import xarray as xr

from xgpp.errors import CorruptChunkError, MissingDependencyError, NotFoundError, XgppError
from xgpp.io._guard import guarded_dataset
from xgpp.io._paths import basename, local_path, open_binary

__all__ = ["open_dataset", "open_nc", "has_var", "read_var", "list_vars"]


def open_dataset(url: str, **kwargs: Any) -> xr.Dataset:
    """Open a netCDF file with xarray: lazily (dask) if local, read into memory if remote.

    ``kwargs`` go to :func:`xarray.open_dataset` (e.g. ``mask_and_scale=False``).  A file that
    is not netCDF/HDF5, or is truncated, raises :class:`~xgpp.errors.CorruptChunkError` naming
    it; so does a damaged variable when it is read (see :mod:`xgpp.io._guard`).
    """
    path = local_path(url)
    try:
        if path is not None:
            lazy = xr.open_dataset(path, chunks=None, cache=False, **kwargs)
            return guarded_dataset(lazy, basename(url), local_path=path)
        with open_binary(url) as f:
            return xr.open_dataset(f, engine="h5netcdf", **kwargs).load()
    except (FileNotFoundError, XgppError, MemoryError):
        raise
    except Exception as err:  # noqa: BLE001 - damaged bytes make the backends raise anything
        # ValueError (no engine recognises the bytes), OSError (HDF5), OverflowError (time
        # values beyond datetime64), RuntimeError/KeyError/IndexError/TypeError (damaged
        # metadata or attributes)
        raise CorruptChunkError(
            f"cannot read {basename(url)!r} as netCDF4/HDF5 ({type(err).__name__}: {err}); "
            f"it starts with {_head(url)!r}. Check that the file is a complete netCDF file "
            "(not an HTML error page or a partial download); re-download it."
        ) from err


def _head(url: str, n: int = 16) -> bytes:
    """The first ``n`` bytes of a file, for messages (``b''`` when it cannot be read)."""
    try:
        with open_binary(url) as f:
            return f.read(n)
    except OSError:
        return b""


def _netcdf4():
    try:
        import netCDF4
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(
            "reading satellite netCDF files needs the netCDF4 package: pip install netCDF4"
        ) from err
    return netCDF4


@contextmanager
def open_nc(url: str) -> Iterator[Any]:
    """Open a netCDF file; remote files are read into memory one at a time."""
    nc4 = _netcdf4()
    path = local_path(url)
    try:
        if path is not None:
            ds = nc4.Dataset(path, "r")
        else:
            with open_binary(url) as f:
                ds = nc4.Dataset(basename(url), "r", memory=f.read())
    except OSError as err:
        raise CorruptChunkError(
            f"cannot read {url!r} as netCDF4/HDF5: {err}. Check that the file is a complete "
            "netCDF file (not an HTML error page or a partial download)."
        ) from err
    try:
        yield ds
    finally:
        ds.close()


def has_var(ds: Any, path: str) -> bool:
    """Whether ``path`` (``"GROUP/SUB/var"``) exists in the open file."""
    try:
        ds[path]
    except (IndexError, KeyError):
        return False
    return True


def read_var(ds: Any, path: str, *, url: str = "") -> tuple[np.ndarray, dict[str, Any]]:
    """Values (float64, fill values as NaN, CF scale/offset applied) and attributes of ``path``."""
    try:
        var = ds[path]
    except (IndexError, KeyError) as err:
        raise NotFoundError(
            f"{basename(url) or 'file'} has no variable {path!r}; it has {list_vars(ds)}."
        ) from err
    var.set_auto_maskandscale(True)
    values = var[...]
    attrs = {k: var.getncattr(k) for k in var.ncattrs()}
    if np.ma.isMaskedArray(values):
        values = values.astype(float).filled(np.nan)
    return np.asarray(values, dtype=float), attrs


def list_vars(ds: Any, prefix: str = "") -> list[str]:
    """All variable paths in an open file, groups included."""
    out = [f"{prefix}{name}" for name in ds.variables]
    for gname, group in ds.groups.items():
        out.extend(list_vars(group, f"{prefix}{gname}/"))
    return out
