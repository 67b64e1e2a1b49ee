"""The model protocol every xgpp model satisfies (MLP, SIFTML, SIF-only, P-model, ...).

Workflows (prediction, evaluation, the CLI) are typed against :class:`Model` only, so a new
model is one new file.  The per-chunk prediction kernel calls exactly::

    x, valid = model.features(chunk_ds, return_mask=True)   # float32 (n_valid, n_features)
    y = model.predict_numpy(x, device="cpu")                # (n_valid, len(model.outputs))

``valid`` is a boolean mask over the stacked ``(time, lat, lon)`` pixels; rows with any NaN
input are not in ``x`` and must be filled with NaN by the caller.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
import xarray as xr

__all__ = ["BUNDLE_FORMAT", "DEFAULT_BATCH_SIZE", "Model", "OUTPUTS", "PRECISIONS",
           "default_batch_size"]

#: Version of the on-disk bundle layout; loading any other version raises.
BUNDLE_FORMAT = 1

#: CF attributes of the outputs models may produce.
OUTPUTS: dict[str, dict[str, str]] = {
    "gpp": {"units": "gC m-2 d-1", "long_name": "gross primary productivity of carbon"},
    "sif": {"units": "mW m-2 nm-1 sr-1",
            "long_name": "solar-induced chlorophyll fluorescence near 740 nm"},
}

#: Rows per forward pass when none is given, by device type.  On a CPU a small batch keeps a
#: 64-wide MLP's activations (4096 x 64 float32 = 1 MiB per layer) in cache and on heap pages
#: the process already owns: measured 4096 rows -> 4.8 M rows/s per core, 262 144 rows -> 1.4
#: (fresh 67 MiB activations every batch).  A GPU wants large batches to fill its cores.
DEFAULT_BATCH_SIZE: dict[str, int] = {"cpu": 4096, "cuda": 1 << 20}

#: Arithmetic precisions of a forward pass (``float32`` is exact; the others run under
#: ``torch.autocast`` and return float32 outputs).
PRECISIONS = ("float32", "bfloat16", "float16")


def default_batch_size(device: str) -> int:
    """Rows per forward pass for ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...)."""
    return DEFAULT_BATCH_SIZE.get(str(device).split(":")[0], DEFAULT_BATCH_SIZE["cuda"])


@runtime_checkable
class Model(Protocol):
    """What every trained xgpp model exposes."""

    #: dataset variables the model reads (static ones such as ``igbp`` included)
    inputs: tuple[str, ...]
    #: canonical unit of each input
    input_units: dict[str, str]
    #: output name -> {"units", "long_name"}, in column order of :meth:`predict_numpy`
    outputs: dict[str, dict[str, str]]
    id: str
    sha256: str
    xgpp_version: str
    provenance: dict[str, Any]

    def features(self, ds: xr.Dataset, *, return_mask: bool = False
                 ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Float32 features of ``ds`` stacked in ``(time, lat, lon)`` order."""
        ...

    def predict_numpy(self, features: np.ndarray, *, device: str = "cpu",
                      batch_size: int | None = None, precision: str = "float32") -> np.ndarray:
        """Outputs ``(n, len(outputs))`` float32 in physical units.

        ``batch_size`` defaults to :func:`default_batch_size` of ``device``; ``precision`` is
        one of :data:`PRECISIONS` (models without a network may ignore both).
        """
        ...

    def check(self, ds: xr.Dataset) -> None:
        """Raise a clear error when ``ds`` does not carry the inputs this model needs."""
        ...

    def save(self, path: str, *, storage_options: dict | None = None) -> str:
        """Write the bundle to a local path or fsspec URL; return the URL."""
        ...
