"""Write a twin world to Zarr v3 at any fsspec URL, one store per product, plus its catalog."""

from __future__ import annotations

from typing import Any

import fsspec

from xgpp._progress import compute_with_progress
from xgpp.synthetic.world import PRODUCTS, World, make_world

__all__ = ["write_world"]


def write_world(url: str, world: World | None = None, *, storage_options: dict | None = None,
                progress: bool = True, **make_world_kwargs: Any) -> World:
    """Write every product of a world to ``URL/<product>.zarr`` and ``URL/catalog.yaml``.

    All stores are computed in one pass so each chunk of the true state is generated once for
    the driver and truth stores together.  The catalog is written last: a folder with a
    ``catalog.yaml`` holds a complete world.

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
    if fs.exists(catalog_path):
        fs.rm(catalog_path)  # the folder is incomplete until the new catalog lands
    fs.makedirs(root, exist_ok=True)
    pending = []
    for name in PRODUCTS:
        pending.append(world.datasets[name].to_zarr(
            f"{url}/{name}.zarr", mode="w", zarr_format=3, consolidated=False, compute=False,
            storage_options=opts or None))
    compute_with_progress(*pending, progress=progress,
                          label=f"writing twin world {world.config.resolution} deg to {url}")
    from xgpp.catalog import write_catalog

    write_catalog(url, names=PRODUCTS, storage_options=opts or None)
    return world
