"""Intake 2 catalogs of xgpp's Zarr cubes, and one opener for names and URLs.

Every cube is a Zarr (v3) store opened lazily with xarray: dask-backed, chunked as stored.

Catalog files
-------------
``write_catalog(root)`` writes ``ROOT/catalog.yaml`` with one entry per store ``ROOT/<name>.zarr``.
Entries point at ``{CATALOG_DIR}/<name>.zarr``, which intake 2 fills in with the folder the YAML
was read from, so a world folder can be moved or copied (to S3, say) without rewriting it.  Their
``storage_options`` are ``{STORAGE_OPTIONS}``: whatever options the catalog was opened with
(credentials are never written into catalogs).

Packaged catalogs are package data, ``xgpp/catalogs/*.yaml``, read through
:mod:`importlib.resources` (so they work from a wheel as from a checkout; the repository's
top-level ``catalogs/`` is a link to that folder, for browsing):

``twin_world``
    The default (``open_catalog()``): the twin world in the local folder ``XGPP_DATA``
    (environment variable; default ``./xgpp-data``, resolved against the working directory when
    the catalog is opened).
``twin_world_s3``
    The same cubes under ``XGPP_S3_ROOT`` (default ``s3://xgpp/twin-world``) with
    ``endpoint_url`` from ``XGPP_S3_ENDPOINT`` (unset: AWS), ``anon`` from ``XGPP_S3_ANON``
    and credentials from the usual AWS environment (``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``...).
``twin_world_gcs``
    The same cubes under ``XGPP_GCS_ROOT`` (default ``gs://xgpp/twin-world``); ``token`` from
    ``XGPP_GCS_TOKEN`` (default ``google_default``; ``anon`` for public buckets).

Catalogs can also list folders of real files (FLUXNET CSVs, TROPOMI or OCO-2 netCDF): build
such entries with :func:`catalog_entry_for_source` and pass them to :func:`build_catalog` or
:func:`write_catalog` (``sources=``); :func:`open_cube` opens them through the matching data
source of :mod:`xgpp.io.sources`.

Every catalog-level parameter (``XGPP_DATA``, ``XGPP_S3_ROOT``, ...) is taken from the
environment variable of the same name when set, and from keyword arguments of
:func:`open_catalog` above all.

Catalogs are data
-----------------
An intake catalog can name Python to run: reader and data classes by import path, functions
through ``{func(module:name)}`` / ``{import(...)}`` templates, pickles through
``{pickle64(...)}``, Python objects through YAML tags (``!!python/object/apply:...``).
:func:`open_catalog` and :func:`open_cube` therefore check every catalog before any of it is
used (:func:`check_catalog`): the YAML is read with ``yaml.safe_load`` (no object tags), each
entry's reader must be one of :data:`ALLOWED_READERS` (xarray over Zarr/netCDF, or xgpp's
file sources through :func:`xgpp.io.sources.open_source`), each data description one of
:data:`ALLOWED_DATATYPES`, user parameters plain intake ones over builtin types, no function,
import or pickle templates, ``env()`` templates only for ``XGPP_*`` variables, and the
opener's ``STORAGE_OPTIONS`` (credentials) only as an entry's whole ``storage_options``.
Anything else raises :class:`CatalogSecurityError` naming the file, the entry and the callable.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xgpp.errors import (
    CorruptChunkError,
    InputError,
    MissingDependencyError,
    NotFoundError,
    UnknownOptionError,
    XgppError,
)

if TYPE_CHECKING:  # pragma: no cover
    import xarray as xr
    from intake.readers.entry import Catalog

__all__ = [
    "ALLOWED_DATATYPES",
    "ALLOWED_READERS",
    "CATALOG_FILE",
    "CatalogSecurityError",
    "IncompleteStoreWarning",
    "PACKAGED_CATALOGS",
    "STORES",
    "build_catalog",
    "catalog_entry_for_source",
    "check_catalog",
    "catalogs_dir",
    "entry_location",
    "list_entries",
    "open_catalog",
    "open_cube",
    "write_catalog",
]

#: File name of a world folder's catalog.
CATALOG_FILE = "catalog.yaml"

#: The twin world's stores (``ROOT/<name>.zarr``) and what each holds.
STORES: dict[str, str] = {
    "drivers": "gridded meteorological drivers, vegetation indices and static fields "
    "(time, lat, lon)",
    "truth": "true gross primary productivity of the twin world (time, lat, lon)",
    "sif_tropomi": "TROPOMI-like SIF, gridded, with retrieval counts (time, lat, lon)",
    "sif_oco2": "OCO-2-like sparse SIF soundings gridded to the cube (time, lat, lon)",
    "sites": "flux-tower sites: eddy-covariance GPP (site, time) with site lat, lon, IGBP",
}

#: Packaged catalog name -> description; the file is ``<name>.yaml`` in :func:`catalogs_dir`.
PACKAGED_CATALOGS: dict[str, str] = {
    "twin_world": "twin world in the local folder XGPP_DATA (default ./xgpp-data)",
    "twin_world_s3": "twin world on S3 under XGPP_S3_ROOT (endpoint XGPP_S3_ENDPOINT)",
    "twin_world_gcs": "twin world on Google Cloud Storage under XGPP_GCS_ROOT",
}

_DEFAULT = "twin_world"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}

#: intake 2 readers a catalog entry may use -> what xgpp lets them do.
ALLOWED_READERS: dict[str, str] = {
    "intake.readers.readers:XArrayDatasetReader":
        "xarray over Zarr or netCDF stores (engine zarr, netcdf4, h5netcdf or scipy)",
    "intake.readers.convert:GenericFunc":
        "xgpp's file sources only (func xgpp.io.sources:open_source, as made by "
        "catalog_entry_for_source)",
}
#: intake 2 data descriptions an entry's data may be.
ALLOWED_DATATYPES: frozenset[str] = frozenset({
    "intake.readers.datatypes:Zarr", "intake.readers.datatypes:NetCDF3",
    "intake.readers.datatypes:HDF5",
})
#: functions a ``GenericFunc`` entry may call (its ``func`` key only).
_ALLOWED_FUNCS = frozenset({"xgpp.io.sources:open_source"})
_ALLOWED_ENGINES = frozenset({"zarr", "netcdf4", "h5netcdf", "scipy"})
_ALLOWED_OUTPUTS = frozenset({None, "xarray:Dataset"})
_ALLOWED_PARAMETERS = frozenset(
    f"intake.readers.user_parameters:{n}" for n in (
        "BaseUserParameter", "SimpleUserParameter", "OptionsUserParameter",
        "MultiOptionUserParameter", "BoundedNumberUserParameter"))
_ALLOWED_DTYPES = frozenset({"str", "int", "float", "bool", "list", "dict", "tuple", "object"})
#: user parameters intake sets when it opens a file (never checked, never shown: credentials)
_RESERVED = frozenset({"CATALOG_DIR", "CATALOG_PATH", "STORAGE_OPTIONS"})


class CatalogSecurityError(InputError):
    """A catalog names Python to run that xgpp does not allow (see :func:`check_catalog`)."""


def catalogs_dir() -> Path:
    """The folder of xgpp's packaged catalogs (package data ``xgpp/catalogs/``).

    Found through :func:`importlib.resources.files`, so it is the installed package's copy
    whether xgpp came from a wheel or an editable checkout.

    Raises
    ------
    FileNotFoundError
        If the installed package has no ``catalogs`` folder on the file system (a wheel built
        without its package data, or xgpp imported from a zip archive).
    """
    from importlib.resources import files

    folder = files("xgpp") / "catalogs"
    path = Path(os.fspath(folder)) if isinstance(folder, os.PathLike) else None
    if path is None or not path.is_dir():
        raise FileNotFoundError(
            f"xgpp's packaged catalogs should be the package data folder {folder}, which is "
            "not a folder on the file system (xgpp built without its package data, or imported "
            "from a zip?). Reinstall xgpp (pip install xgpp, or pip install . from a checkout), "
            "or pass a catalog path or URL to open_catalog()."
        )
    return path


# --------------------------------------------------------------------------- building catalogs


def _entry(location: str, name: str, storage_options: Any, description: str):
    """One ``XArrayDatasetReader`` over a Zarr store ``location/<name>.zarr``."""
    from intake.readers.datatypes import Zarr
    from intake.readers.readers import XArrayDatasetReader

    data = Zarr(url=f"{location}/{name}.zarr", storage_options=storage_options)
    return XArrayDatasetReader(
        data,
        engine="zarr",
        chunks={},
        consolidated=False,
        metadata={"description": description, "store": f"{name}.zarr"},
    )


def build_catalog(
    location: str = "{CATALOG_DIR}",
    names: Iterable[str] = tuple(STORES),
    *,
    storage_options: Any = "{STORAGE_OPTIONS}",
    user_parameters: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    sources: Mapping[str, Any] | None = None,
) -> Catalog:
    """Build an intake 2 catalog with one lazy Zarr entry per store (and file-source entries).

    Parameters
    ----------
    location : str
        Folder (or template such as ``"{CATALOG_DIR}"`` or ``"{XGPP_S3_ROOT}"``) holding the
        ``<name>.zarr`` stores.
    names : iterable of str
        Store names; descriptions come from :data:`STORES` where known.
    storage_options : dict or str
        fsspec options of every entry, or a template (default ``"{STORAGE_OPTIONS}"``: the options
        the catalog is opened with).
    user_parameters : mapping, optional
        Catalog-level intake user parameters (name -> ``BaseUserParameter``).
    metadata : mapping, optional
        Catalog metadata.
    sources : mapping, optional
        Entry name -> entry made by :func:`catalog_entry_for_source` (a FLUXNET, TROPOMI or
        OCO-2 folder...).

    Returns
    -------
    intake.readers.entry.Catalog
        The catalog, not yet written (see :func:`write_catalog`).
    """
    from intake.readers.entry import Catalog

    names, sources = list(names), dict(sources or {})
    if not names and not sources:
        raise InputError("a catalog needs at least one store name or source entry; got none.")
    clash = sorted(set(names) & set(sources))
    if clash:
        raise InputError(f"entry name(s) {clash} are both stores and sources; rename one.")
    for name, reader in sources.items():
        if not _is_source_entry(reader):
            raise TypeError(f"sources[{name!r}] is {type(reader).__name__}, not an entry made by "
                            "xgpp.catalog.catalog_entry_for_source(format, location).")
    xgpp_meta = {"stores": names, **({"sources": list(sources)} if sources else {})}
    cat = Catalog(
        metadata={"xgpp": xgpp_meta, **dict(metadata or {})},
        user_parameters=dict(user_parameters or {}),
    )
    for name in names:
        description = STORES.get(name, f"xgpp cube {name}")
        cat.add_entry(_entry(location, name, storage_options, description), name=name)
    for name, reader in sources.items():
        cat.add_entry(reader, name=name)
    return cat


def catalog_entry_for_source(
    format: str,  # noqa: A002 - the name open_cube uses
    location: str,
    *,
    description: str | None = None,
    reader_options: Mapping[str, Any] | None = None,
):
    """A catalog entry that opens files of a registered data source (FLUXNET, TROPOMI, OCO-2).

    The entry is an intake 2 ``GenericFunc`` reader calling
    :func:`xgpp.io.sources.open_source`, so it survives ``to_yaml_file``/``from_yaml_file``,
    and both ``open_cube(name, catalog=cat)`` and ``cat[name].read()`` open it.

    Parameters
    ----------
    format : str
        A file source of :data:`xgpp.io.sources.SOURCES`: ``"fluxnet"``, ``"tropomi"``,
        ``"oco2"`` (Zarr stores get their entries from :func:`build_catalog`).
    location : str
        Folder, glob, file or URL of the files; templates work, e.g.
        ``"{CATALOG_DIR}/fluxnet"`` (the folder the catalog is read from).
    description : str, optional
        Shown in the entry's metadata.
    reader_options : mapping, optional
        Named keywords of the reader, stored in the entry (plain values only; paths may use
        ``{CATALOG_DIR}``), e.g. ``{"sites": "{CATALOG_DIR}/fluxnet/sites.csv", "freq": "8D"}``.

    Returns
    -------
    intake.readers.convert.GenericFunc
        Pass it to ``build_catalog(..., sources={name: entry})`` or ``cat.add_entry``.
    """
    from intake.readers.convert import GenericFunc

    from xgpp.io.sources import SOURCES, open_source

    source = SOURCES.get(format)
    if source is None or format == "zarr":
        files = sorted(set(SOURCES) - {"zarr"})
        raise InputError(
            f"format {format!r} is not a file source; choose one of {files}. Zarr stores get "
            "their entries from build_catalog(location, names)."
        )
    options = dict(reader_options or {})
    check = getattr(source, "check_options", None)
    if check is not None:
        check(options)
    for key in ("paths", "format", "func", "storage_options"):
        if key in options:
            raise InputError(f"reader option {key!r} is set by the entry itself; remove it.")
    return GenericFunc(
        func=open_source,
        paths=location,
        format=format,
        **options,
        output_instance="xarray:Dataset",
        metadata={"description": description or source.description,
                  "xgpp": {"format": format}},
    )


def _is_source_entry(reader: Any) -> bool:
    """Whether ``reader`` was made by :func:`catalog_entry_for_source`."""
    from xgpp.io.sources import open_source

    return getattr(reader, "kwargs", {}).get("func") is open_source


def write_catalog(
    root_url: str,
    names: Iterable[str] = tuple(STORES),
    storage_options: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    sources: Mapping[str, Any] | None = None,
) -> str:
    """Write ``ROOT/catalog.yaml`` listing the stores ``ROOT/<name>.zarr`` (and file sources).

    Entries refer to ``{CATALOG_DIR}/<name>.zarr``, so the folder can be moved or copied as a
    whole; their storage options are those given to :func:`open_catalog` (none are stored).

    Parameters
    ----------
    root_url : str
        World folder: local path or fsspec URL (``s3://bucket/world``, ``memory://world``).
    names : iterable of str
        Stores to list.
    storage_options : mapping, optional
        fsspec options used to *write* the YAML (e.g. S3 endpoint and credentials).
    extra : mapping, optional
        JSON/YAML-safe metadata recorded in the catalog (e.g. the ``WorldConfig`` as a dict).
    sources : mapping, optional
        Entry name -> :func:`catalog_entry_for_source` entry (e.g. a FLUXNET folder at
        ``"{CATALOG_DIR}/fluxnet"``).

    Returns
    -------
    str
        URL (or local path) of the written ``catalog.yaml``.
    """
    import fsspec
    from fsspec.implementations.local import LocalFileSystem

    root = _strip_slash(root_url)
    options = dict(storage_options or {})
    cat = build_catalog("{CATALOG_DIR}", names, metadata=dict(extra or {}), sources=sources)
    url = f"{root}/{CATALOG_FILE}"
    try:
        fs, path = fsspec.core.url_to_fs(root, **options)
        if isinstance(fs, LocalFileSystem):  # object stores have no folders to create
            fs.makedirs(path, exist_ok=True)
        cat.to_yaml_file(url, **options)
    except Exception as err:  # noqa: BLE001 - yaml/fsspec raise many kinds; re-raise with context
        raise OSError(
            f"could not write the catalog {url} ({type(err).__name__}: {err}). Check that "
            f"{root} is writable with the given storage_options, and that `extra` holds only "
            "plain values (str, numbers, lists, dicts)."
        ) from err
    return url


def _regenerate_packaged_catalogs(folder: Path | None = None) -> list[Path]:
    """(Re)write the YAML files of :data:`PACKAGED_CATALOGS` (kept in sync by a test)."""
    from intake.readers.user_parameters import SimpleUserParameter

    folder = folder or catalogs_dir()
    sup = SimpleUserParameter
    specs: dict[str, tuple[str, Any, dict]] = {
        "twin_world": (
            "{XGPP_DATA}",
            None,
            {"XGPP_DATA": sup(dtype=str, default="./xgpp-data",
                              description="local folder holding the twin world's <name>.zarr")},
        ),
        "twin_world_s3": (
            "{XGPP_S3_ROOT}",
            {"anon": "{XGPP_S3_ANON}", "endpoint_url": "{env(XGPP_S3_ENDPOINT)}"},
            {"XGPP_S3_ROOT": sup(dtype=str, default="s3://xgpp/twin-world",
                                 description="S3 prefix holding the twin world's <name>.zarr"),
             "XGPP_S3_ANON": sup(dtype=bool, default=False,
                                 description="anonymous (unsigned) access to a public bucket")},
        ),
        "twin_world_gcs": (
            "{XGPP_GCS_ROOT}",
            {"token": "{XGPP_GCS_TOKEN}"},
            {"XGPP_GCS_ROOT": sup(dtype=str, default="gs://xgpp/twin-world",
                                  description="GCS prefix holding the twin world's <name>.zarr"),
             "XGPP_GCS_TOKEN": sup(dtype=str, default="google_default",
                                   description="gcsfs token: google_default, anon, cloud, or a "
                                               "service-account JSON path")},
        ),
    }
    written = []
    for name, (location, options, ups) in specs.items():
        cat = build_catalog(location, storage_options=options, user_parameters=ups,
                            metadata={"description": PACKAGED_CATALOGS[name]})
        path = folder / f"{name}.yaml"
        cat.to_yaml_file(str(path))
        written.append(path)
    return written


# --------------------------------------------------------------------------- opening catalogs


def _strip_slash(url: str) -> str:
    url = os.fspath(url)
    return url.rstrip("/") if not url.endswith("://") else url


def _catalog_url(path: str | os.PathLike | None) -> str:
    if path is None:
        path = _DEFAULT
    path = os.fspath(path)
    if path in PACKAGED_CATALOGS:
        return str(catalogs_dir() / f"{path}.yaml")
    if path.endswith((".yaml", ".yml")):
        return path
    return f"{_strip_slash(path)}/{CATALOG_FILE}"  # a world folder


def _coerce_parameter(up: Any, value: Any, name: str) -> Any:
    """Coerce an environment/keyword value to the user parameter's type (strict for bool)."""
    dtype = getattr(up, "dtype", None)
    if dtype == "bool" and isinstance(value, str):
        low = value.strip().lower()
        if low in _TRUE | _FALSE:
            return low in _TRUE
        raise InputError(
            f"catalog parameter {name} must be a boolean; got {value!r}. Use one of "
            f"{sorted(_TRUE)} or {sorted(_FALSE - {''})}."
        )
    coerce = getattr(up, "coerce", None)
    return coerce(value) if coerce is not None else value


def open_catalog(
    path: str | os.PathLike | None = None,
    *,
    storage_options: Mapping[str, Any] | None = None,
    **parameters: Any,
) -> Catalog:
    """Open an intake 2 catalog of xgpp cubes.

    Parameters
    ----------
    path : str or path-like, optional
        ``None`` (the packaged ``twin_world`` catalog, folder ``XGPP_DATA``), a packaged
        catalog name (``"twin_world_s3"``...), a ``catalog.yaml`` path/URL, or a world folder
        (``s3://bucket/world`` means ``s3://bucket/world/catalog.yaml``).
    storage_options : mapping, optional
        fsspec options for reading the YAML; entries written by :func:`write_catalog` use them
        for their stores too.
    **parameters
        Values for catalog-level parameters (e.g. ``XGPP_DATA="/data/world"``); these override
        environment variables of the same name, which override the catalog's defaults.

    Returns
    -------
    intake.readers.entry.Catalog
        ``list(cat.entries)`` names the cubes; see :func:`open_cube`.
    """
    url = _catalog_url(path)
    options = dict(storage_options or {})
    try:
        cat = _read_catalog(url, options)
    except ValueError:  # refused (CatalogSecurityError) or not a catalog: already says which
        raise
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"no catalog at {url}. Write one with xgpp.catalog.write_catalog(root) (done by "
            f"xgpp.write_world), or pass a packaged catalog name: {sorted(PACKAGED_CATALOGS)}."
        ) from err
    except Exception as err:  # noqa: BLE001 - fsspec backends raise their own error types
        raise OSError(
            f"could not read the catalog {url} ({type(err).__name__}: {err}). Check the URL "
            "and storage_options (endpoint_url, credentials, anon)."
        ) from err

    overrides: dict[str, Any] = {}
    for name, up in cat.user_parameters.items():
        if name in ("CATALOG_DIR", "CATALOG_PATH", "STORAGE_OPTIONS"):
            continue
        if name in parameters:
            overrides[name] = _coerce_parameter(up, parameters.pop(name), name)
        elif name in os.environ:
            overrides[name] = _coerce_parameter(up, os.environ[name], name)
    if parameters:
        known = sorted(k for k in cat.user_parameters if not k.startswith(("CATALOG_", "STOR")))
        raise UnknownOptionError(
            f"unknown catalog parameter(s) {sorted(parameters)} for {url}; it takes {known}."
        )
    if "XGPP_DATA" in cat.user_parameters:
        data = overrides.get("XGPP_DATA", cat.user_parameters["XGPP_DATA"].default)
        if "://" not in data:  # a local folder: pin it now, not at each later chdir
            overrides["XGPP_DATA"] = str(Path(data).expanduser().resolve())
    return cat(**overrides) if overrides else cat


def _read_catalog(url: str, options: dict[str, Any]) -> Catalog:
    """``intake.from_yaml_file`` with safe YAML and :func:`check_catalog` before any use."""
    import fsspec
    from intake.readers.entry import Catalog

    of = fsspec.open(url, mode="rb", **options)
    with of as stream:
        text = stream.read()
    data = _safe_yaml(text, url)
    check_catalog(data, url)
    try:
        cat = Catalog.from_dict(data)
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        raise InputError(f"catalog {url} is not a valid intake 2 catalog ({type(err).__name__}: "
                         f"{err}); write catalogs with xgpp.catalog.write_catalog.") from err
    # what intake.from_yaml_file sets: the templates {CATALOG_DIR} and {STORAGE_OPTIONS}
    cat.user_parameters["CATALOG_PATH"] = url
    cat.user_parameters["CATALOG_DIR"] = of.fs.unstrip_protocol(of.fs._parent(url))
    # the options (credentials) fill {STORAGE_OPTIONS} of the entries; held so that no repr
    # shows their values and a re-saved catalog (cat.to_yaml_file) refuses rather than writes
    cat.user_parameters["STORAGE_OPTIONS"] = _SecretOptions(options) if options else options
    return cat


class _SecretOptions(Mapping):
    """Storage options held by an opened catalog: a mapping whose repr shows the keys only.

    Not a ``dict``: intake's ``to_dict`` copies dicts into plain ones, while this passes
    through and ``yaml.safe_dump`` cannot represent it, so ``cat.to_yaml_file(...)`` of a
    catalog opened with credentials raises instead of writing them.
    """

    def __init__(self, options: Mapping[str, Any]) -> None:
        self._options = dict(options)

    def __getitem__(self, key: str) -> Any:
        return self._options[key]

    def __iter__(self):
        return iter(self._options)

    def __len__(self) -> int:
        return len(self._options)

    def __repr__(self) -> str:
        return "{" + ", ".join(f"{k!r}: '***'" for k in self._options) + "}"

    __str__ = __repr__

    def __reduce__(self):  # sent to dask workers as a plain dict (the values are needed)
        return (dict, (self._options,))


def _safe_yaml(text: bytes | str, url: str) -> Any:
    """Parse catalog YAML with ``yaml.safe_load``: tags that build Python objects are refused."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.constructor.ConstructorError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        tag = str(getattr(err, "problem", "")).removeprefix(
            "could not determine a constructor for the tag ")
        raise CatalogSecurityError(
            f"catalog {url} uses the YAML tag {tag}{where}, which would construct a Python "
            "object. xgpp reads catalogs as plain data (yaml.safe_load: mappings, lists, "
            "strings, numbers, booleans); remove the tag."
        ) from err
    except yaml.YAMLError as err:
        raise InputError(f"catalog {url} is not valid YAML: {err}") from err


def _kwargs(desc: dict, where: str) -> dict:
    """A catalog entry's ``kwargs``, refused unless a mapping of plain values."""
    kwargs = desc.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise CatalogSecurityError(f"{where} has kwargs of type {type(kwargs).__name__}; "
                                   "expected a mapping of plain values.")
    return kwargs


def check_catalog(data: Any, source: str = "the catalog") -> None:
    """Refuse a catalog (its ``to_dict()``/YAML form) that names Python xgpp does not run.

    Parameters
    ----------
    data : dict
        The catalog as intake 2 writes it (``version``, ``entries``, ``data``,
        ``user_parameters``, ``aliases``, ``metadata``).
    source : str
        Where it comes from (file or URL), for messages.

    Raises
    ------
    CatalogSecurityError
        An entry's reader is not in :data:`ALLOWED_READERS`, a data description not in
        :data:`ALLOWED_DATATYPES`, a ``GenericFunc`` calls another function than
        ``xgpp.io.sources:open_source``, an xarray engine is not a Zarr/netCDF one, a
        ``{func()}``/``{import()}``/``{pickle64()}`` template or a ``cls`` key appears, a user
        parameter is not a plain intake one over a builtin type, an ``env()`` template reads a
        variable not named ``XGPP_*``, or ``STORAGE_OPTIONS`` is used other than as an entry's
        whole ``storage_options``.  The message names the file, the entry and the callable.
    ValueError
        ``data`` is not an intake 2 catalog (no ``version: 2`` mapping).
    """
    if isinstance(data, dict) and data.get("version") != 2 and isinstance(data.get("sources"), dict):
        drivers = "; ".join(
            f"entry {k!r} driver {(v.get('driver') if isinstance(v, dict) else v)!r}"
            for k, v in data["sources"].items())
        raise CatalogSecurityError(
            f"catalog {source} is an intake 1 catalog ({drivers}); xgpp never imports intake 1 "
            f"drivers. It reads intake 2 catalogs whose readers are {sorted(ALLOWED_READERS)} "
            "(write one with xgpp.catalog.write_catalog).")
    if not isinstance(data, dict) or data.get("version") != 2:
        found = data.get("version") if isinstance(data, dict) else type(data).__name__
        raise InputError(f"catalog {source} is not an intake 2 catalog (version {found!r}, "
                         "expected 2); xgpp reads catalogs written by intake 2 / write_catalog.")
    readers = ", ".join(f"{k} ({v})" for k, v in ALLOWED_READERS.items())
    for name, entry in _mapping(data, "entries", source).items():
        where = f"catalog {source}, entry {name!r}"
        if not isinstance(entry, dict):
            continue  # intake keeps non-mapping entries as given: nothing to import
        reader = entry.get("reader")
        if reader not in ALLOWED_READERS:
            raise CatalogSecurityError(
                f"{where} names the reader {reader!r}, which xgpp does not run: a catalog "
                f"entry may use only {readers}. Open such data with its own reader in code.")
        if entry.get("output_instance") not in _ALLOWED_OUTPUTS:
            raise CatalogSecurityError(
                f"{where} names the output type {entry.get('output_instance')!r}, which intake "
                f"would import; xgpp entries produce {sorted(o for o in _ALLOWED_OUTPUTS if o)}.")
        kwargs = _kwargs(entry, where)
        if reader.endswith(":GenericFunc"):
            func = kwargs.get("func")
            target = _template_target(func, "func")
            if target not in _ALLOWED_FUNCS:
                raise CatalogSecurityError(
                    f"{where} calls the function {target or func!r}, which xgpp does not run: "
                    f"GenericFunc entries may call only {sorted(_ALLOWED_FUNCS)} (entries made "
                    "by xgpp.catalog.catalog_entry_for_source).")
            kwargs = {k: v for k, v in kwargs.items() if k != "func"}
        else:
            engine = kwargs.get("engine")
            if engine is not None and engine not in _ALLOWED_ENGINES:
                raise CatalogSecurityError(
                    f"{where} uses the xarray engine {engine!r}; xgpp opens "
                    f"{sorted(_ALLOWED_ENGINES)} only.")
        _check_values(kwargs, f"{where}, kwargs", storage_ok=False)
        _check_parameters(entry.get("user_parameters"), where)
    datatypes = sorted(ALLOWED_DATATYPES)
    for token, desc in _mapping(data, "data", source).items():
        where = f"catalog {source}, data {token!r}"
        if not isinstance(desc, dict):
            continue
        if desc.get("datatype") not in ALLOWED_DATATYPES:
            raise CatalogSecurityError(
                f"{where} names the data type {desc.get('datatype')!r}, which xgpp does not "
                f"import: data descriptions may be {datatypes}.")
        kwargs = _kwargs(desc, where)
        for key, value in kwargs.items():
            _check_values(value, f"{where}, {key}", storage_ok=key == "storage_options")
        _check_parameters(desc.get("user_parameters"), where)
    _check_parameters(data.get("user_parameters"), f"catalog {source}")
    for key in ("entries", "data", "user_parameters"):
        if "cls" in _mapping(data, key, source):
            raise CatalogSecurityError(f"catalog {source} has a {key} item named 'cls', which "
                                       "intake would import; rename it.")


def _mapping(data: dict, key: str, source: str) -> dict:
    value = data.get(key) or {}
    if not isinstance(value, dict):
        raise InputError(f"catalog {source}: {key!r} is a {type(value).__name__}, expected a "
                         "mapping (an intake 2 catalog).")
    return value


def _template_target(value: Any, kind: str) -> str | None:
    """``module:name`` of a whole-string ``{func(module:name)}`` template, else None."""
    import re

    if not isinstance(value, str):
        return None
    m = re.fullmatch(rf"\{{\s*{kind}\((.+)\)\s*\}}", value.strip())
    return m.group(1).strip() if m else None


def _check_values(value: Any, where: str, *, storage_ok: bool) -> None:
    """Walk kwargs: no ``cls`` keys, no code templates, secrets only where allowed."""
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "cls":
                raise CatalogSecurityError(
                    f"{where} has a 'cls' key ({v!r}): intake would import and build that "
                    "class. xgpp catalogs hold plain values only.")
            _check_values(v, f"{where}.{k}", storage_ok=False)
    elif isinstance(value, list | tuple):
        for v in value:
            _check_values(v, where, storage_ok=False)
    elif isinstance(value, str):
        _check_string(value, where, storage_ok=storage_ok, bare=False)


def _check_string(text: str, where: str, *, storage_ok: bool, bare: bool) -> None:
    """Refuse code templates in ``text``; ``bare``: also without braces (parameter defaults)."""
    import re

    fields = re.findall(r"\{([^{}]*)\}", text)
    if bare:
        fields.append(text)
    for field in fields:
        body = field.strip()
        call = re.match(r"(\w+)\s*\(([^)]*)\)", body)
        if call:
            fn, arg = call.group(1), call.group(2).strip()
            if fn in ("func", "import", "pickle64"):
                shown = arg if fn != "pickle64" else f"{arg[:20]}..."
                raise CatalogSecurityError(
                    f"{where} uses the template {{{fn}({shown})}}, which would "
                    f"{'unpickle data' if fn == 'pickle64' else f'import and call {arg!r}'}. "
                    "xgpp catalogs may not name Python callables; allowed readers: "
                    f"{sorted(ALLOWED_READERS)} (GenericFunc calling "
                    f"{sorted(_ALLOWED_FUNCS)} only, as its func).")
            if fn == "env" and not arg.startswith("XGPP_"):
                raise CatalogSecurityError(
                    f"{where} reads the environment variable {arg!r} through {{env({arg})}}; "
                    "catalog templates may read only XGPP_* variables (others may hold "
                    "credentials).")
            continue
        if bare:
            continue
        if "STORAGE_OPTIONS" in body and not (storage_ok and text.strip() == "{STORAGE_OPTIONS}"):
            raise CatalogSecurityError(
                f"{where} uses {{{body}}}: the storage options the catalog is opened with "
                "(credentials) may appear only as an entry's whole storage_options "
                "('{STORAGE_OPTIONS}').")
        if body and not re.fullmatch(r"\w+", body) and re.match(r"\w+\s*[.\[!]", body):
            raise CatalogSecurityError(
                f"{where} uses the template {{{body}}}: attribute or item access in templates "
                "is not allowed (use a parameter name such as {CATALOG_DIR}).")


def _check_parameters(params: Any, where: str) -> None:
    """User parameters: plain intake classes over builtin types; defaults without templates."""
    if not params:
        return
    if not isinstance(params, dict):
        raise CatalogSecurityError(f"{where} has user_parameters of type "
                                   f"{type(params).__name__}; expected a mapping.")
    for name, up in params.items():
        if name in _RESERVED or not isinstance(up, dict):
            continue
        at = f"{where}, user parameter {name!r}"
        cls = up.get("cls")
        if cls is not None and cls not in _ALLOWED_PARAMETERS:
            raise CatalogSecurityError(
                f"{at} names the class {cls!r}, which xgpp does not import: user parameters "
                f"may be {sorted(_ALLOWED_PARAMETERS)}.")
        dtype = up.get("dtype")
        if dtype is not None and dtype not in _ALLOWED_DTYPES:
            raise CatalogSecurityError(
                f"{at} has dtype {dtype!r}: intake would call builtins.{dtype} on the value "
                f"given for it. Allowed dtypes: {sorted(_ALLOWED_DTYPES)}.")
        for key, value in up.items():
            if key == "cls":
                continue
            _check_values(value, f"{at}.{key}", storage_ok=False)
            if key == "default" and isinstance(value, str):  # intake templates bare defaults
                _check_string(value, f"{at}.{key}", storage_ok=False, bare=True)


def list_entries(catalog: Catalog) -> list[str]:
    """Entry names of ``catalog`` (sorted)."""
    return sorted(set(catalog.entries) | set(catalog.aliases))


def entry_location(catalog: Catalog, name: str) -> tuple[str, dict[str, Any]]:
    """Resolved ``(url, storage_options)`` of a catalog entry's Zarr store or file source.

    File-source entries (:func:`catalog_entry_for_source`) give their location (folder, glob
    or URL) and no storage options.
    """
    reader = _reader(catalog, name)
    if _is_source_entry(reader):
        return reader.kwargs["paths"], {}
    data = _reader_data(reader)
    options = {k: v for k, v in dict(data.storage_options or {}).items() if v is not None}
    return data.url, options


def _reader(catalog: Catalog, name: str):
    where = catalog.user_parameters.get("CATALOG_PATH")
    where = getattr(where, "default", where) or "the catalog"
    if name not in catalog.entries and name not in catalog.aliases:
        raise NotFoundError(
            f"no entry {name!r} in {where}; available entries: {list_entries(catalog)}. "
            "Pass one of these, or a path or URL (Zarr store, or a folder/glob of FLUXNET, "
            "TROPOMI or OCO-2 files; write a local folder as './name')."
        )
    # a catalog object may not come from open_catalog (intake.from_yaml_file, built in code)
    check_catalog(catalog.to_dict(), str(where))
    return catalog[name]


def _reader_data(reader):
    from intake.readers.datatypes import FileData

    args = reader.kwargs.get("args", ())
    for value in [*args, reader.kwargs.get("data")]:
        if isinstance(value, FileData):
            return value
    raise TypeError(
        f"catalog entry reader {type(reader).__name__} has no file-based data (kwargs "
        f"{sorted(reader.kwargs)}); xgpp.open_cube opens entries over Zarr stores and entries "
        "made by xgpp.catalog.catalog_entry_for_source."
    )


# --------------------------------------------------------------------------- opening cubes


def _is_url(text: str) -> bool:
    """Entry names are plain words; anything with a path separator, scheme or .zarr is a URL."""
    return "://" in text or "/" in text or os.sep in text or text.rstrip("/").endswith(".zarr")


def _probe_zarr(url: str, storage_options: Mapping[str, Any]) -> bool:
    """Check that ``url`` holds a Zarr group; return whether its metadata is consolidated."""
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(url, **storage_options)
        root = root.rstrip("/")
        try:
            raw = fs.cat_file(f"{root}/zarr.json")
        except FileNotFoundError:
            if fs.exists(f"{root}/.zmetadata"):
                return True
            if fs.exists(f"{root}/.zgroup"):
                return False
            raise
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"no Zarr store at {url}: neither zarr.json (Zarr v3) nor .zgroup (v2) exists there. "
            "Check the path (cubes are ROOT/<name>.zarr) or write the world first with "
            "xgpp.write_world(root, ...)."
        ) from err
    except ImportError as err:
        raise MissingDependencyError(
            f"opening {url} needs the fsspec backend for its protocol ({err}). Install the cloud "
            "extra: pip install 'xgpp[cloud]' (s3fs, gcsfs)."
        ) from err
    except Exception as err:  # noqa: BLE001 - backends raise ClientError, OSError, timeouts...
        raise OSError(
            f"cannot read the Zarr store at {url} ({type(err).__name__}: {err}). Check that the "
            "endpoint is reachable and the storage_options (endpoint_url, key/secret, anon, "
            "token) are right."
        ) from err
    try:
        meta = json.loads(raw)
        if not isinstance(meta, dict):
            raise ValueError(f"a JSON {type(meta).__name__}, not an object")
    except ValueError as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise CorruptChunkError(
            f"the Zarr store at {url} has a damaged zarr.json (group metadata): {err}. "
            "Restore it from a copy or re-write the store."
        ) from err
    if meta.get("node_type") != "group":
        raise InputError(
            f"{url} is a Zarr {meta.get('node_type', 'node')}, not a group; an xgpp cube is a "
            "Zarr group holding one array per variable."
        )
    return meta.get("consolidated_metadata") is not None


def _damaged_array(url: str, storage_options: Mapping[str, Any]) -> str:
    """``"array 'time' (zarr.json or a chunk) is unreadable: "``, or ``""`` when none is found.

    Called after a failed open only: reads each array's metadata, and 1-D arrays (coordinates)
    whole, until one fails.
    """
    import fsspec
    import zarr

    try:
        group = zarr.open_group(url, mode="r", storage_options=dict(storage_options) or None)
        names = sorted(group.array_keys())
    except Exception:  # noqa: BLE001 - a member's metadata is damaged: find which
        try:
            fs, root = fsspec.core.url_to_fs(url, **storage_options)
            for meta in sorted(fs.glob(f"{root.rstrip('/')}/*/zarr.json")):
                try:
                    json.loads(fs.cat_file(meta))
                except ValueError:
                    return f"{meta.rsplit('/', 2)[-2]}/zarr.json is not valid JSON: "
        except Exception:  # noqa: BLE001 - a courtesy: the caller reports the error anyway
            pass
        return ""
    for name in names:
        try:
            arr = group[name]
            if isinstance(arr, zarr.Array) and arr.ndim <= 1:
                arr[...]
        except Exception:  # noqa: BLE001
            return f"array {name!r} ({name}/zarr.json or one of its chunks) is unreadable: "
    return ""


def _check_index_coords(ds: xr.Dataset, url: str) -> None:
    """Refuse a cube whose lat/lon/time axes are not regular, distinct and ordered.

    The index coordinates are in memory already; a damaged coordinate chunk that still
    decodes (Zstd without a checksum) gives such axes, as does a store that is not a cube.
    """
    import numpy as np
    import pandas as pd

    from xgpp.io._grid import check_axis

    for dim in ("lat", "lon"):
        if dim in ds.dims and dim in ds.indexes:
            check_axis(ds[dim].values, dim, f"the Zarr store at {url}")
    if "time" in ds.indexes and np.issubdtype(ds["time"].dtype, np.datetime64):
        t = pd.DatetimeIndex(ds["time"].values)
        if t.hasnans or not t.is_monotonic_increasing or t.has_duplicates:
            raise CorruptChunkError(
                f"the Zarr store at {url} has a time axis that is not increasing (NaT, repeated "
                f"or unordered values: {t[:3].tolist()}...); its 'time' array is damaged. "
                "Restore it from a copy or re-write the store."
            )


def _open_zarr(url: str, storage_options: Mapping[str, Any],
               chunks: Mapping[str, int] | None = None) -> xr.Dataset:
    import xarray as xr

    from xgpp.io._guard import guarded_dataset

    options = dict(storage_options)
    consolidated = _probe_zarr(url, options)
    # backend arrays, read nothing (chunks=None, cache=False); guarded_dataset puts dask arrays
    # over them chunked as stored (as chunks={} would), whose read failures raise
    # CorruptChunkError naming the store, the variable and the Zarr chunk key
    kwargs: dict[str, Any] = {"engine": "zarr", "chunks": None, "cache": False,
                              "consolidated": consolidated}
    if options and "://" in url and not url.startswith("file://"):
        kwargs["storage_options"] = options
    try:
        lazy = xr.open_dataset(url, **kwargs)
    except (OSError, ImportError, XgppError):
        raise
    except Exception as err:  # noqa: BLE001 - damaged metadata or coordinate chunks raise anything
        raise CorruptChunkError(
            f"the Zarr store at {url} cannot be opened: {_damaged_array(url, options)}"
            f"{type(err).__name__}: {err}. Its metadata (zarr.json) or a coordinate chunk is "
            "damaged; restore it from a copy or re-write the store."
        ) from err
    _check_index_coords(lazy, url)
    v3 = any("serializer" in v.encoding for v in lazy.variables.values())  # v2 has no serializer
    local = url[len("file://"):] if url.startswith("file://") else (None if "://" in url else url)
    remote = bool(options) and "://" in url and not url.startswith("file://")
    return _plain_strings(guarded_dataset(lazy, url, local_path=local,
                                          zarr_format=3 if v3 else 2,
                                          group=_zarr_group(url, options if remote else {},
                                                            consolidated),
                                          storage_options=options if remote else None,
                                          chunks=chunks))


def _zarr_group(url: str, options: Mapping[str, Any], consolidated: bool | None) -> Any:
    """The store's Zarr group (metadata only) for the direct chunk reader, or None.

    None when zarr cannot open the store as a group: then every read goes through xarray.
    """
    import zarr

    try:
        return zarr.open_group(url, mode="r", storage_options=dict(options) or None,
                               use_consolidated=consolidated)
    except Exception:  # noqa: BLE001 - any failure only means no fast path
        return None


def _plain_strings(ds: xr.Dataset) -> xr.Dataset:
    """Give Zarr v3's variable-length strings (numpy ``StringDType``) as Python objects.

    Much of the stack (``astype(str)``, pandas, older numpy code) rejects ``StringDType``.
    """
    fixes = {name: var.astype(object) for name, var in ds.variables.items()
             if var.dtype.kind == "T"}
    return ds.assign_coords({k: v for k, v in fixes.items() if k in ds.coords}) if fixes else ds


def open_cube(
    name_or_url: str | os.PathLike,
    *,
    catalog: Catalog | str | os.PathLike | None = None,
    format: str | None = None,  # noqa: A002 - user-facing, as in xarray/pandas
    reader_options: Mapping[str, Any] | None = None,
    allow_incomplete: bool = False,
    chunks: Mapping[str, int] | None = None,
    **storage_options: Any,
) -> xr.Dataset:
    """Open a cube lazily: a catalog entry name, a Zarr URL or a folder of real files.

    Parameters
    ----------
    name_or_url : str or path-like
        An entry of ``catalog`` (``"drivers"``, ``"truth"``, ``"sif_tropomi"``, ``"sif_oco2"``,
        ``"sites"``, or a file-source entry) -- entry names are plain words -- or a path/URL:
        a Zarr store (local path, ``s3://``, ``gs://``, ``memory://``), or a folder, glob, file
        or fsspec URL of FLUXNET CSVs, TROPOMI ``TROPOSIF_*.nc`` or OCO-2 ``oco2_LtSIF_*.nc4``
        files, detected by file name (see :mod:`xgpp.io.sources`).  Write a local folder whose
        name is a plain word as ``"./name"``.
    catalog : Catalog or str, optional
        Catalog object or anything :func:`open_catalog` accepts; default the packaged
        ``twin_world`` catalog.  Not used for paths and URLs.
    format : str, optional
        Skip detection and read a path with this registered source (``"zarr"``,
        ``"fluxnet"``, ``"tropomi"``, ``"oco2"``: :data:`xgpp.io.sources.SOURCES`); its files
        then need not follow the naming rule.
    reader_options : mapping, optional
        Named keywords of the file reader: ``sites``, ``gpp_variable``, ``freq``...
        (:func:`xgpp.io.read_fluxnet`), ``grid``, ``freq``, ``variable``...
        (:func:`xgpp.io.read_tropomi`, :func:`xgpp.io.read_oco2_lite`).  For a file-source
        entry they update the options stored in the catalog.  Zarr cubes take none.
    allow_incomplete : bool
        Open a store that its writer has not finished (an interrupted :func:`xgpp.predict`
        write or :func:`xgpp.write_world`: attribute ``xgpp_complete`` false) anyway, with an
        :class:`IncompleteStoreWarning`; its missing slabs read as the store's fill value.
        By default such a store raises :class:`xgpp.errors.IncompleteStoreError`.
    chunks : mapping, optional
        Zarr cubes only: dask chunk sizes along the dimensions named (``-1``: the whole
        dimension), e.g. ``{"time": 92, "lat": 180}``; other dimensions keep the stored
        chunks.  Multiples of the stored chunks give fewer, larger dask tasks, each read from
        the whole stored chunks it spans: on stores of small chunks (a few MB) that cuts the
        scheduler's per-task cost, which bounds streaming prediction on few cores
        (docs/predict.md, "Coarser dask chunks").  Sizes that cut stored chunks warn.
    **storage_options
        fsspec options of a Zarr store: for a URL, those of the store; for an entry, they
        update the entry's (e.g. ``endpoint_url=...``).  File readers open URLs with fsspec's
        default configuration and take none.

    Returns
    -------
    xarray.Dataset
        The canonical cube (docs/data_model.md): Zarr cubes dask-backed, chunked as stored
        (or as ``chunks`` asks), nothing computed; file sources as their reader returns them (FLUXNET ``gpp`` on
        ``(site, time)``; TROPOMI/OCO-2 ``sif``/``sif_count`` on ``(time, lat, lon)``, binned
        lazily).

    Raises
    ------
    KeyError
        Unknown entry (the message lists the catalog's entries).
    FileNotFoundError
        No Zarr store at the URL, or no files at the path.
    ValueError
        The files are of no known format, or of several (the message lists the formats).
    OSError
        The store cannot be reached or read.
    xgpp.errors.IncompleteStoreError
        (a ValueError) The store, or the world folder of the catalog, was left unfinished by
        an interrupted write; the message lists the missing time slabs and how to finish it.
    """
    from xgpp.io.sources import SOURCES, open_source

    target = os.fspath(name_or_url)
    options = dict(reader_options or {})
    if chunks is not None:
        options["chunks"] = chunks
    if _is_url(target):
        ds = open_source(target, format=format, storage_options=storage_options, **options)
        return _check_complete(ds, target, target, storage_options, allow_incomplete)
    if catalog is not None and not hasattr(catalog, "entries"):
        _check_world_folder(catalog, allow_incomplete)
    cat = catalog if hasattr(catalog, "entries") else open_catalog(catalog)
    reader = _reader(cat, target)
    if _is_source_entry(reader):
        stored = {k: v for k, v in reader.kwargs.items() if k not in ("func", "paths", "format")}
        fmt, url = reader.kwargs["format"], reader.kwargs["paths"]
        if format is not None and format != fmt:
            raise InputError(f"catalog entry {target!r} holds {fmt} files; format={format!r} "
                             "applies to paths and URLs only. Drop it, or open the path itself.")
        try:
            return open_source(url, format=fmt, storage_options=storage_options,
                               **{**stored, **options})
        except FileNotFoundError as err:
            raise FileNotFoundError(
                f"catalog entry {target!r} points to {url}, which cannot be opened: {err} "
                f"(available entries: {list_entries(cat)})"
            ) from err
    url, store_options = entry_location(cat, target)
    store_options.update(storage_options)
    try:
        ds = SOURCES["zarr"].open(url, storage_options=store_options, **options)
    except (FileNotFoundError, OSError) as err:
        raise type(err)(
            f"catalog entry {target!r} points to {url}, which cannot be opened: {err} "
            f"(available entries: {list_entries(cat)})"
        ) from err
    return _check_complete(ds, f"catalog entry {target!r} ({url})", url, store_options,
                           allow_incomplete)


# --------------------------------------------------------------------------- unfinished stores
class IncompleteStoreWarning(UserWarning):
    """An unfinished store was opened with ``allow_incomplete=True``."""


def _check_complete(ds: xr.Dataset, where: str, url: str,
                    storage_options: Mapping[str, Any], allow: bool) -> xr.Dataset:
    """Refuse (or, with ``allow``, warn about) a store whose ``xgpp_complete`` is not true.

    Stores without the attribute (other writers' stores, finished worlds) pass.
    """
    import warnings

    from xgpp.errors import IncompleteStoreError

    if "xgpp_complete" not in ds.attrs or ds.attrs["xgpp_complete"] is True:
        return ds
    missing = _missing_slabs(ds, url, storage_options)
    if missing is None:
        which = "which time slabs are missing is not recorded"
    else:
        which = (f"{len(missing)} time slab(s) missing, time indices "
                 f"{_ranges(missing, ds)}")
    if "xgpp_fingerprint" in ds.attrs:
        how = ("re-run the same prediction (the same xgpp predict command or "
               "xgpp.write_prediction call): finished slabs are kept, only the missing ones "
               "are computed")
    else:
        how = ("re-run the same xgpp.write_world call (or xgpp world command) on this folder: "
               "finished slabs are kept, only the missing ones are computed")
    message = (f"{where} is an unfinished store (xgpp_complete is not true: its write was "
               f"interrupted or failed): {which}. To finish it, {how}. To read it as it is, "
               "pass allow_incomplete=True (missing slabs read as NaN / the fill value).")
    if not allow:
        raise IncompleteStoreError(message, url=where, missing=missing)
    warnings.warn(message, IncompleteStoreWarning, stacklevel=3)
    return ds


def _missing_slabs(ds: xr.Dataset, url: str, storage_options: Mapping[str, Any]
                   ) -> list[tuple[int, int]] | None:
    """Time-index ranges ``(start, stop)`` of the slabs not yet written, or None if unknown.

    Slabs are the stored time chunks.  A prediction records its finished slabs in the
    attribute ``xgpp_done_slabs``; a world store in marker files in the folder named by its
    attribute ``xgpp_progress`` (relative to the store).
    """
    import numpy as np

    timed = [v for v in ds.data_vars if "time" in ds[v].dims and ds[v].chunks is not None]
    if not timed:
        return None
    var = ds[timed[0]]
    stored = var.encoding.get("chunks")  # the stored time chunks, whatever the dask chunks
    n = var.sizes["time"]
    if stored and len(stored) == var.ndim:
        step = int(stored[var.dims.index("time")]) or n
        edges = np.append(np.arange(0, n, step), n).astype(int)
    else:
        edges = np.concatenate([[0], np.cumsum(var.chunksizes["time"])]).astype(int)
    if "xgpp_done_slabs" in ds.attrs:
        done = {str(i) for i in ds.attrs["xgpp_done_slabs"]}
    elif "xgpp_progress" in ds.attrs:
        import fsspec

        try:
            fs, root = fsspec.core.url_to_fs(url, **dict(storage_options))
            folder = os.path.normpath(f"{root.rstrip('/')}/{ds.attrs['xgpp_progress']}")
            done = {p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(folder, detail=False)}
        except Exception:  # noqa: BLE001 - no markers readable: say it is unknown
            return None
    else:
        return None
    return [(int(a), int(b)) for i, (a, b) in enumerate(zip(edges[:-1], edges[1:],
                                                            strict=True))
            if str(i) not in done and b > a]


def _ranges(missing: list[tuple[int, int]], ds: xr.Dataset, limit: int = 8) -> str:
    """``[0:12) (2019-01-01..2019-06-10), ...`` for the first ``limit`` ranges."""
    merged: list[list[int]] = []
    for a, b in missing:
        if merged and merged[-1][1] == a:
            merged[-1][1] = b
        else:
            merged.append([a, b])
    parts = []
    for a, b in merged[:limit]:
        text = f"[{a}:{b})"
        if "time" in ds.coords and ds.sizes.get("time", 0) >= b:
            t = ds["time"].values
            text += f" ({str(t[a])[:10]}..{str(t[b - 1])[:10]})"
        parts.append(text)
    more = f" and {len(merged) - limit} more ranges" if len(merged) > limit else ""
    return ", ".join(parts) + more


def _check_world_folder(catalog: str | os.PathLike, allow: bool) -> None:
    """A world folder whose write stopped has progress markers and no ``catalog.yaml``."""
    from xgpp.errors import IncompleteStoreError

    path = os.fspath(catalog)
    if path in PACKAGED_CATALOGS:
        return
    url = _catalog_url(path)
    folder = url.rsplit("/", 1)[0] if "/" in url else "."
    try:
        import fsspec

        fs, root = fsspec.core.url_to_fs(folder)
        unfinished = not fs.exists(f"{root}/{CATALOG_FILE}") and fs.exists(
            f"{root}/.xgpp-progress")
    except Exception:  # noqa: BLE001 - open_catalog reports unreachable folders itself
        return
    if unfinished and not allow:
        raise IncompleteStoreError(
            f"{folder} holds an unfinished twin world: its write was interrupted before "
            f"{CATALOG_FILE} (written last) was written, so there is no catalog to open. "
            "To finish it, re-run the same xgpp.write_world call (or xgpp world command): "
            "finished slabs are kept, only the missing ones are computed. Its stores can be "
            "opened by URL with allow_incomplete=True.", url=folder)
