"""The ``ds.gpp`` accessor: a thin, stateless front door over plain functions.

Every method is a few lines that call a function in :mod:`xgpp.predict` or :mod:`xgpp.train`;
the same work is possible without the accessor.  Because the accessor is named ``gpp``, a
variable called ``gpp`` is reached with ``ds["gpp"]``, not ``ds.gpp``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import xarray as xr

if TYPE_CHECKING:
    from collections.abc import Sequence

    from xgpp.models.base import Model

__all__ = ["GPPDatasetAccessor"]


@xr.register_dataset_accessor("gpp")
class GPPDatasetAccessor:
    """xgpp methods on an ``xr.Dataset`` (``ds.gpp.*``)."""

    __slots__ = ("_obj",)

    def __init__(self, ds: xr.Dataset) -> None:
        self._obj = ds

    def check(self, model: Model | Sequence[Model]) -> None:
        """Raise a clear error if this dataset cannot feed ``model`` (variables, units, grid).

        ``model`` may be a list of models (an ensemble): every member is checked.
        """
        from xgpp.predict import check_inputs

        check_inputs(self._obj, model)

    def predict(self, model: Model | Sequence[Model], *, batch_size: int | None = None,
                device: str = "auto", outputs: list[str] | None = None,
                precision: str = "float32") -> xr.Dataset:
        """Lazy prediction of every model output on this grid; see :func:`xgpp.predict.predict`.

        ``model`` is a trained model, or a list of them (an ensemble): then each output ``v``
        is the ensemble mean and ``v_std`` the spread (population standard deviation over the
        members), predicted in one pass over the data.
        """
        from xgpp.predict import predict

        return predict(self._obj, model, batch_size=batch_size, device=device, outputs=outputs,
                       precision=precision)

    def to_zarr(self, model: Model | Sequence[Model], url: str, *,
                storage_options: dict | None = None, batch_size: int | None = None,
                device: str = "auto",
                outputs: list[str] | None = None, precision: str = "float32",
                overwrite: bool = False, progress: bool = True) -> str:
        """Predict and stream to a Zarr store, resumably; see :func:`xgpp.predict.write_prediction`.

        ``model`` may be a list of models (an ensemble), as for :meth:`predict`.
        """
        from xgpp.predict import write_prediction

        return write_prediction(self._obj, model, url, storage_options=storage_options,
                                batch_size=batch_size, device=device, outputs=outputs,
                                precision=precision, overwrite=overwrite, progress=progress)

    def train(self, *, sites: xr.Dataset | None = None, sif: xr.Dataset | None = None,
              method: str = "siftml", **options: Any) -> Any:
        """Train a model with this dataset as the driver cube; see :func:`xgpp.train.train`."""
        from xgpp.train import train

        return train(self._obj, sites=sites, sif=sif, method=method, **options)

    def __getattr__(self, name: str) -> Any:
        # only reached for names the accessor does not define: teach instead of a bare error
        if "gpp" in self._obj.data_vars and hasattr(xr.DataArray, name):
            raise AttributeError(
                f"ds.gpp is xgpp's accessor and hides the variable 'gpp': use ds['gpp'].{name}"
            )
        raise AttributeError(f"'ds.gpp' accessor has no attribute {name!r}")
