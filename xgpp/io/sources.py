"""Data sources: one small protocol for everything :func:`xgpp.open_cube` can open.

A data source turns a path, glob, folder, list of files or URL into one of xgpp's canonical
cubes (docs/data_model.md).  Each source satisfies :class:`DataSource`:

``name``
    Short key used by ``format=`` and catalog entries (``"fluxnet"``, ``"tropomi"``...).
``description``
    What it reads and how its files are named (quoted in error messages).
``matches(files)``
    The files of a listing that this source reads (empty when none): detection is by file name.
``open(paths, *, storage_options=None, **options)``
    The lazy canonical dataset; ``options`` are the reader's named keywords (``grid``,
    ``freq``, ``sites``...), ``storage_options`` the fsspec options of the store.

:data:`SOURCES` holds the registered sources; adding one is writing a file with a class that
satisfies the protocol and calling :func:`register_source`.  :func:`open_source` detects the
source of a path (or obeys ``format=``) and opens it.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from xgpp.errors import InputError, MissingDependencyError, UnknownOptionError
from xgpp.io._paths import _GLOB_CHARS, PathsLike, basename, expand_paths
from xgpp.io.fluxnet import _NAME as _FLUXNET_NAME
from xgpp.io.fluxnet import read_fluxnet
from xgpp.io.oco2 import read_oco2_lite
from xgpp.io.tropomi import read_tropomi

if TYPE_CHECKING:  # pragma: no cover
    import xarray as xr

__all__ = [
    "SOURCES",
    "DataSource",
    "FileSource",
    "ZarrSource",
    "detect_source",
    "open_source",
    "register_source",
]

log = logging.getLogger("xgpp.io")

#: Files that mark the root of a Zarr group (v3, v2 consolidated, v2).
_ZARR_META = ("zarr.json", ".zmetadata", ".zgroup")
#: File names quoted in error messages.
_SHOWN = 5


@runtime_checkable
class DataSource(Protocol):
    """What every data source provides (see the module docstring)."""

    name: str
    description: str

    def matches(self, files: Sequence[str]) -> list[str]:
        """The files among ``files`` (paths or URLs) that this source reads; empty if none."""
        ...

    def open(self, paths: PathsLike, *, storage_options: Mapping[str, Any] | None = None,
             **options: Any) -> xr.Dataset:
        """Open ``paths`` lazily as a canonical cube; ``options`` go to the reader."""
        ...


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class FileSource:
    """Files read by one of :mod:`xgpp.io`'s readers, recognised by a file-name pattern.

    Parameters
    ----------
    name : str
        Source key.
    description : str
        What the files are and how they are named.
    pattern : str
        Regular expression matched (case-insensitively) against each file name.
    reader : callable
        ``reader(paths, **options) -> xr.Dataset``, e.g. :func:`xgpp.io.read_fluxnet`.
    """

    name: str
    description: str
    pattern: str
    reader: Callable[..., xr.Dataset]

    def matches(self, files: Sequence[str]) -> list[str]:
        """The files whose names match :attr:`pattern`."""
        rule = re.compile(self.pattern, re.IGNORECASE)
        return [f for f in files if rule.match(basename(f))]

    @property
    def option_names(self) -> list[str]:
        """Keywords the reader takes besides the paths."""
        params = list(inspect.signature(self.reader).parameters.values())[1:]
        return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]

    def check_options(self, options: Mapping[str, Any]) -> None:
        """Raise ``TypeError`` naming the reader's keywords when ``options`` has others."""
        unknown = sorted(set(options) - set(self.option_names))
        if unknown:
            raise UnknownOptionError(
                f"{self.name} files are read by xgpp.io.{self.reader.__name__}, which takes "
                f"{self.option_names}; got unknown reader option(s) {unknown}. fsspec storage "
                "options (endpoint_url, anon, key...) apply to Zarr stores only"
                + (", and so does chunks=: rechunk the cube this reader returns with "
                   "ds.chunk(...)." if "chunks" in unknown else ".")
            )

    def open(self, paths: PathsLike, *, storage_options: Mapping[str, Any] | None = None,
             **options: Any) -> xr.Dataset:
        """``reader(paths, **options)``; no storage options (the readers use fsspec defaults)."""
        if storage_options:
            raise InputError(
                f"{self.name} files are opened by xgpp.io.{self.reader.__name__} with fsspec's "
                f"default configuration, so storage options {sorted(storage_options)} cannot be "
                "passed. Give credentials through the environment (AWS_PROFILE, "
                "GOOGLE_APPLICATION_CREDENTIALS...) or fsspec's configuration "
                "(fsspec.config.conf['s3'] = {...}), or copy the files to a local folder."
            )
        self.check_options(options)
        return self.reader(paths, **options)


@dataclass(frozen=True)
class ZarrSource:
    """A Zarr group (xgpp's cubes), opened by :mod:`xgpp.catalog`'s lazy Zarr opener."""

    name: str = "zarr"
    description: str = ("Zarr v2/v3 group: a store named <name>.zarr or a folder holding "
                        "zarr.json / .zgroup (local, s3://, gs://, memory://)")

    def matches(self, files: Sequence[str]) -> list[str]:
        """Store URLs (``*.zarr``) and Zarr metadata files (``zarr.json``, ``.zgroup``...)."""
        return [f for f in files
                if f.rstrip("/").endswith(".zarr") or basename(f) in _ZARR_META]

    def open(self, paths: PathsLike, *, storage_options: Mapping[str, Any] | None = None,
             chunks: Mapping[str, int] | None = None, **options: Any) -> xr.Dataset:
        """Open the store lazily (dask-backed), chunked as stored or as ``chunks`` asks.

        A Zarr cube takes no other reader option.
        """
        from xgpp.catalog import _open_zarr

        if options:
            raise UnknownOptionError(
                f"a Zarr cube takes no reader options but chunks; got {sorted(options)}. "
                "Subset or regrid the opened dataset instead (ds.sel, ds.interp); fsspec "
                "options go in storage_options."
            )
        if not isinstance(paths, str | os.PathLike):
            raise TypeError(f"a Zarr cube is one store URL; got {paths!r}.")
        return _open_zarr(os.fspath(paths), dict(storage_options or {}), chunks)


#: Registered sources by name (see :func:`register_source`).
SOURCES: dict[str, DataSource] = {}


def register_source(source: DataSource, *, replace: bool = False) -> DataSource:
    """Add ``source`` to :data:`SOURCES` so detection, ``format=`` and catalogs know it.

    Raises
    ------
    TypeError
        ``source`` does not satisfy :class:`DataSource`.
    ValueError
        A source of that name is registered already (pass ``replace=True``).
    """
    if not isinstance(source, DataSource):
        raise TypeError(
            f"{source!r} is not a data source: it needs `name`, `description`, "
            "`matches(files)` and `open(paths, *, storage_options=None, **options)` "
            "(see xgpp.io.sources.DataSource)."
        )
    if source.name in SOURCES and not replace:
        raise InputError(f"a data source named {source.name!r} is registered already; pass "
                         "replace=True to replace it.")
    SOURCES[source.name] = source
    return source


register_source(ZarrSource())
register_source(FileSource(
    "fluxnet",
    "FLUXNET2015/ONEFlux/AmeriFlux-FLUXNET site CSVs named "
    "<NET>_<CC-Sss>_FLUXNET[2015]_<FULLSET|SUBSET>_<HH|HR|DD|WW|MM>_*.csv "
    "(FLX_US-Ha1_FLUXNET2015_FULLSET_DD_1991-2012_1-4.csv, AMF_US-Ha1_FLUXNET_SUBSET_HH_...)",
    _FLUXNET_NAME.pattern + r".*\.csv$",
    read_fluxnet,
))
register_source(FileSource(
    "tropomi",
    "TROPOMI SIF netCDF named TROPOSIF_*.nc (TROPOSIF_L2B_2019-07-01.nc)",
    r"^TROPOSIF_.*\.(nc|nc4)$",
    read_tropomi,
))
register_source(FileSource(
    "oco2",
    "OCO-2 SIF Lite files named oco2_LtSIF_*.nc4 (oco2_LtSIF_190701_B11012Ar_200101000000s.nc4)",
    r"^oco2_LtSIF_.*\.(nc4|nc)$",
    read_oco2_lite,
))


# --------------------------------------------------------------------------- detection


def _known() -> str:
    return "; ".join(f"{s.name}: {s.description}" for s in SOURCES.values())


def _shown(files: Sequence[str]) -> str:
    names = [basename(f) for f in files[:_SHOWN]]
    more = f" and {len(files) - _SHOWN} more" if len(files) > _SHOWN else ""
    return f"{names}{more}"


def _zarr_root(url: str, storage_options: Mapping[str, Any]) -> bool:
    """Whether ``url`` is a Zarr store: named ``*.zarr`` (no I/O) or holding root metadata."""
    import fsspec

    if url.rstrip("/").endswith(".zarr"):
        return True
    if any(c in url for c in _GLOB_CHARS):
        return False
    try:
        fs, root = fsspec.core.url_to_fs(url, **storage_options)
        root = root.rstrip("/")
        return fs.isdir(root) and any(fs.exists(f"{root}/{m}") for m in _ZARR_META)
    except ImportError as err:
        raise MissingDependencyError(
            f"opening {url} needs the fsspec backend for its protocol ({err}). Install the cloud "
            "extra: pip install 'xgpp[cloud]' (s3fs, gcsfs)."
        ) from err
    except (ValueError, FileNotFoundError):
        return False  # unknown protocol or nothing there: expand_paths says which
    except Exception as err:  # noqa: BLE001 - backends raise ClientError, OSError, timeouts...
        raise OSError(
            f"cannot reach {url} ({type(err).__name__}: {err}). Check that the endpoint is "
            "reachable and the storage_options (endpoint_url, key/secret, anon, token) are right."
        ) from err


def detect_source(paths: PathsLike, *,
                  storage_options: Mapping[str, Any] | None = None
                  ) -> tuple[DataSource, PathsLike]:
    """Find the source that reads ``paths``, and what to hand to its ``open``.

    A single ``*.zarr`` URL, or a folder holding ``zarr.json``/``.zgroup``, is a Zarr store
    (not listed: stores hold many chunk files).  Anything else is expanded (folders searched
    recursively, globs matched) and every registered source is asked which files it reads;
    exactly one source must claim files.  Files no source claims (a site list, a README) are
    left out.

    Returns
    -------
    (DataSource, str or list of str)
        The source, and the store URL (Zarr) or the files it claimed.

    Raises
    ------
    FileNotFoundError
        Nothing exists at ``paths``, or a folder is empty.
    ValueError
        No source, or several, claim the files; the message names the path, shows a few file
        names and lists the known formats.
    """
    options = dict(storage_options or {})
    items = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    items = [os.fspath(i) for i in items]
    where = items[0] if len(items) == 1 else items
    if len(items) == 1 and _zarr_root(items[0], options):
        return SOURCES["zarr"], items[0]
    try:
        files = expand_paths(items, what="input")
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"nothing to open at {where}: {err} xgpp opens these formats: {_known()}."
        ) from err
    claims = {name: found for name, s in SOURCES.items() if (found := s.matches(files))}
    if "zarr" in claims:
        stores = sorted({f[: f.index(".zarr") + 5] for f in claims["zarr"] if ".zarr" in f})
        raise InputError(
            f"{where} holds Zarr store(s) {[basename(s) for s in stores[:_SHOWN]]} rather than "
            "being one; open a store itself (e.g. "
            f"{stores[0] if stores else where + '/<name>.zarr'}) or the folder's catalog "
            "(xgpp.open_catalog(folder))."
        )
    if not claims:
        raise InputError(
            f"cannot tell what {where} holds: none of its {len(files)} file(s) "
            f"({_shown(files)}) is named like a format xgpp knows. Known formats: {_known()}. "
            "Rename the files, or pass format=<name> to read them with that format's reader."
        )
    if len(claims) > 1:
        found = "; ".join(f"{name}: {_shown(f)}" for name, f in claims.items())
        raise InputError(
            f"{where} holds files of several formats ({found}). Point at one format's folder "
            f"or a glob (e.g. '<folder>/TROPOSIF_*.nc'), or pass format= one of {sorted(claims)}."
        )
    (name, chosen), = claims.items()
    left = len(files) - len(chosen)
    if left:
        log.debug("%s: %d file(s) not named like %s files are left out: %s", where, left, name,
                  _shown([f for f in files if f not in set(chosen)]))
    return SOURCES[name], chosen


def open_source(paths: PathsLike, *, format: str | None = None,  # noqa: A002 - user-facing
                storage_options: Mapping[str, Any] | None = None,
                **options: Any) -> xr.Dataset:
    """Open a path, glob, folder, file list or URL as a canonical cube.

    Parameters
    ----------
    paths : str, os.PathLike or list of them
        A Zarr store (local, ``s3://``, ``gs://``, ``memory://``), or files of a registered
        format: a folder (searched recursively), a glob, a file or a list of them.
    format : str, optional
        Name of a registered source (:data:`SOURCES`: ``"zarr"``, ``"fluxnet"``,
        ``"tropomi"``, ``"oco2"``) to skip detection; ``paths`` then goes to that source's
        reader as given (files need not follow the naming rule).
    storage_options : mapping, optional
        fsspec options of a Zarr store (``endpoint_url``, ``anon``, ``key``...).
    **options
        The reader's named keywords, e.g. ``sites=``/``gpp_variable=``/``freq=`` for FLUXNET,
        ``grid=``/``freq=`` for TROPOMI and OCO-2 (see :func:`xgpp.io.read_fluxnet`...).

    Returns
    -------
    xarray.Dataset
        The canonical cube of that source (docs/data_model.md).
    """
    if format is not None:
        if format not in SOURCES:
            raise InputError(f"unknown format {format!r}; registered formats: "
                             f"{sorted(SOURCES)} ({_known()}).")
        source, target = SOURCES[format], paths
    else:
        source, target = detect_source(paths, storage_options=storage_options)
    return source.open(target, storage_options=storage_options, **options)
