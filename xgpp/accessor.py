"""The ``ds.gpp`` accessor: a thin, stateless front door over plain functions."""

from __future__ import annotations

import xarray as xr


@xr.register_dataset_accessor("gpp")
class GPPDatasetAccessor:
    """xgpp methods on an ``xr.Dataset`` (``ds.gpp.*``)."""

    __slots__ = ("_obj",)

    def __init__(self, ds: xr.Dataset) -> None:
        self._obj = ds
