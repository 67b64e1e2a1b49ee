"""Write a twin world to Zarr v3 at any fsspec URL, one store per product, plus its catalog.

The write is resumable and never leaves a store that looks complete when it is not:

* each store is created with the attributes ``xgpp_complete: false`` and ``xgpp_progress``
  (the folder of its progress markers, relative to the store);
* every time slab (one dask chunk along ``time``) and the static variables (``"static"``)
  are written by their own tasks, each followed by a marker file
  ``URL/.xgpp-progress/<product>/<slab>`` holding the id of the run that wrote it;
* when every slab of a store is written, its marker ``complete`` is written and the two
  attributes are removed (a finished store is exactly the world's dataset);
* ``catalog.yaml`` is written last, then the progress folder is removed: a folder with a
  ``catalog.yaml`` holds a complete world.

Run :func:`write_world` again with the same world after an interruption and only the missing
slabs are computed (the markers of an earlier run are kept); :func:`xgpp.open_cube` refuses an
unfinished store (:class:`xgpp.errors.IncompleteStoreError`) unless ``allow_incomplete=True``.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import dask
import fsspec
import numpy as np
import xarray as xr

from xgpp._progress import compute_with_progress
from xgpp.synthetic.world import PRODUCTS, World, make_world

__all__ = ["write_world"]

#: Folder (under the world's root) holding the progress markers of an unfinished write.
PROGRESS_DIR = ".xgpp-progress"
#: Marker name of a store's static (time-independent) variables.
STATIC_SLAB = "static"
#: Marker name of a finished store.
COMPLETE = "complete"


def write_world(url: str, world: World | None = None, *, storage_options: dict | None = None,
                progress: bool = True, **make_world_kwargs: Any) -> World:
    """Write every product of a world to ``URL/<product>.zarr`` and ``URL/catalog.yaml``.

    All stores are computed in one pass so each chunk of the true state is generated once for
    the driver and truth stores together.  The write is resumable: after an interruption, the
    same call (same world, same URL) computes only the time slabs that no earlier run
    finished.  Until a store is finished it carries ``xgpp_complete: false`` (and
    :func:`xgpp.open_cube` refuses it); the catalog is written last: a folder with a
    ``catalog.yaml`` holds a complete world.  A store of another world at ``URL`` is replaced.

    Parameters
    ----------
    url : str
        Local path or fsspec URL (``s3://bucket/world``, ``memory://world``...).
    world : World, optional
        A world from :func:`make_world`; else one is made from ``make_world_kwargs``.
    storage_options : dict, optional
        fsspec options for the target (endpoint, credentials...).
    progress : bool
        Show a progress bar.

    Returns
    -------
    World
        The world that was written.
    """
    world = world if world is not None else make_world(**make_world_kwargs)
    url = str(url).rstrip("/")
    opts = storage_options or {}
    fs, root = fsspec.core.url_to_fs(url, **opts)
    catalog_path = f"{root}/catalog.yaml"
    config = world.config.to_json()
    if fs.exists(catalog_path):
        if all(_store_config(fs, root, name) == (config, False) for name in PRODUCTS):
            return world  # this very world is already complete here: nothing to compute
        fs.rm(catalog_path)  # the folder is incomplete until the new catalog lands
    fs.makedirs(root, exist_ok=True)
    run = uuid.uuid4().hex
    pending = []
    for name in PRODUCTS:
        pending += _store_tasks(fs, root, url, name, world.datasets[name], config, run, opts)
    compute_with_progress(*pending, progress=progress,
                          label=f"writing twin world {world.config.resolution} deg to {url}")
    for name in PRODUCTS:
        _finish_store(fs, root, url, name, opts)
    from xgpp.catalog import write_catalog

    write_catalog(url, names=PRODUCTS, storage_options=opts or None)
    fs.rm(f"{root}/{PROGRESS_DIR}", recursive=True)
    return world


def _store_config(fs: Any, root: str, name: str) -> tuple[str | None, bool]:
    """(``world_config`` attribute, whether marked unfinished) of ``ROOT/<name>.zarr``.

    (None, True) when there is no readable store.
    """
    try:
        meta = json.loads(fs.cat_file(f"{root}/{name}.zarr/zarr.json"))
    except (FileNotFoundError, ValueError):
        return None, True
    attrs = meta.get("attributes", {})
    return attrs.get("world_config"), "xgpp_complete" in attrs


def _marker(root: str, name: str, slab: str | int) -> str:
    return f"{root}/{PROGRESS_DIR}/{name}/{slab}"


def _slabs(ds: xr.Dataset) -> list[tuple[int, int]]:
    """Time-index ranges ``(start, stop)`` of the dataset's time chunks (its slabs)."""
    chunks = ds.chunks.get("time", ()) if "time" in ds.dims else ()
    edges = np.concatenate([[0], np.cumsum(chunks)]).astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def _store_tasks(fs: Any, root: str, url: str, name: str, ds: xr.Dataset, config: str,
                 run: str, opts: dict) -> list[Any]:
    """Delayed writes of the unfinished slabs of ``<name>.zarr``, each followed by its marker."""
    store = f"{url}/{name}.zarr"
    old_config, _ = _store_config(fs, root, name)
    # finished by an earlier run of this world (its marker outlives the progress attributes)
    if old_config == config and fs.exists(_marker(root, name, COMPLETE)):
        return []
    if old_config == config:  # an earlier run of this world stopped part-way: resume
        done = {p.rsplit("/", 1)[-1] for p in _listing(fs, f"{root}/{PROGRESS_DIR}/{name}")}
    else:
        done = set()
        if fs.exists(f"{root}/{PROGRESS_DIR}/{name}"):
            fs.rm(f"{root}/{PROGRESS_DIR}/{name}", recursive=True)
        init = ds.copy()
        init.attrs.update(xgpp_complete=False, xgpp_progress=f"../{PROGRESS_DIR}/{name}")
        init.to_zarr(store, mode="w", zarr_format=3, consolidated=False, compute=False,
                     storage_options=opts or None)
    fs.makedirs(f"{root}/{PROGRESS_DIR}/{name}", exist_ok=True)
    marker = dask.delayed(_write_marker, pure=False)
    region_opts: dict[str, Any] = {"zarr_format": 3, "consolidated": False, "compute": False,
                   "storage_options": opts or None}
    tasks = []
    timed = [v for v in ds.data_vars if "time" in ds[v].dims]
    for i, (a, b) in enumerate(_slabs(ds)):
        if str(i) in done or b == a or not timed:
            continue
        sub = ds[timed].isel(time=slice(a, b))
        sub = sub.drop_vars([c for c in sub.coords if "time" not in sub[c].dims])
        write = sub.to_zarr(store, region={"time": slice(a, b)}, **region_opts)
        tasks.append(marker(url, opts, _marker(root, name, i), run, write))
    static = [v for v in ds.data_vars if "time" not in ds[v].dims]
    if static and STATIC_SLAB not in done:
        sub = ds[static].drop_vars(list(ds[static].coords))
        write = sub.to_zarr(store, region={str(d): slice(None) for d in sub.dims}, **region_opts)
        tasks.append(marker(url, opts, _marker(root, name, STATIC_SLAB), run, write))
    return tasks


def _listing(fs: Any, path: str) -> list[str]:
    try:
        return list(fs.ls(path, detail=False))
    except FileNotFoundError:
        return []


def _write_marker(url: str, opts: dict, path: str, run: str, _written: Any) -> str:
    """Record that a slab is written (runs after its write task, on whichever worker)."""
    fs, _ = fsspec.core.url_to_fs(url, **opts)
    with fs.open(path, "w") as f:
        f.write(run)
    return path


def _finish_store(fs: Any, root: str, url: str, name: str, opts: dict) -> None:
    """Mark ``<name>.zarr`` finished: its ``complete`` marker, then drop the progress attrs."""
    import zarr

    with fs.open(_marker(root, name, COMPLETE), "w") as f:
        f.write("")
    group = zarr.open_group(f"{url}/{name}.zarr", mode="r+", storage_options=opts or None,
                            zarr_format=3)
    # both dropped in one write of zarr.json (``del attrs[key]`` writes once per key)
    kept = {k: v for k, v in group.attrs.items() if k not in ("xgpp_complete", "xgpp_progress")}
    if len(kept) < len(group.attrs):
        group.attrs.put(kept)
