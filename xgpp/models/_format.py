"""The bundle format without any model: file names, version, hashing, the metadata header.

Both :mod:`xgpp.models.bundle` (torch models) and :mod:`xgpp.models.baselines` (the P-model,
which has no weights) write bundles through this module, so neither imports the other.
"""

from __future__ import annotations

import hashlib
import json
import platform
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch

from xgpp._version import __version__
from xgpp.models.base import BUNDLE_FORMAT

__all__ = ["FORMAT_NAME", "KINDS", "METADATA_FILE", "WEIGHTS_FILE", "BundleFormatError",
           "read_metadata", "versions", "weights_sha256"]

METADATA_FILE = "model.json"
WEIGHTS_FILE = "weights.safetensors"
FORMAT_NAME = "xgpp-model-bundle"

#: bundle kinds without a torch module -> "module:Class" that rebuilds them; torch kinds come
#: from :data:`xgpp.models.registry.ARCHITECTURES` and load as :class:`~xgpp.models.TorchModel`.
KINDS: dict[str, str] = {
    "pmodel": "xgpp.models.baselines:PModelBaseline",
}


class BundleFormatError(ValueError):
    """A folder is not an xgpp bundle, or one written in an incompatible format version."""


def weights_sha256(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict: names, dtypes, shapes and bytes in sorted order."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def versions() -> dict[str, str]:
    """Versions of the packages that shape a trained model."""
    import importlib.metadata as md

    out = {"xgpp": __version__, "python": platform.python_version()}
    for pkg in ("torch", "numpy", "xarray", "dask", "zarr", "xbatcher", "pyrealm", "safetensors"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:  # pragma: no cover - optional
            pass
    return out


def _fs(path: str, storage_options: dict | None):
    import fsspec

    return fsspec.core.url_to_fs(str(path), **(storage_options or {}))


def _metadata_header(model: Any) -> dict[str, Any]:
    """The ``model.json`` fields every bundle kind shares (format, identity, inputs, outputs)."""
    return {
        "format": FORMAT_NAME,
        "format_version": BUNDLE_FORMAT,
        "kind": model.kind,
        "method": model.method,
        "id": model.id,
        "sha256": model.sha256,
        "xgpp_version": model.xgpp_version,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "inputs": list(model.inputs),
        "input_units": model.input_units,
        "outputs": model.outputs,
        # model.json is written with sorted keys: the column order is kept here
        "output_names": list(model.outputs),
    }


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, tuple | set):
        return list(obj)
    return str(obj)


def ordered_outputs(meta: dict[str, Any]) -> dict[str, dict]:
    """The bundle's outputs in column order (``output_names``; sorted JSON loses it)."""
    names = meta.get("output_names") or list(meta["outputs"])
    return {n: meta["outputs"][n] for n in names}


def read_metadata(path: str, *, storage_options: dict | None = None) -> dict[str, Any]:
    """Read and validate ``model.json`` of the bundle at ``path``."""
    fs, root = _fs(path, storage_options)
    target = f"{root}/{METADATA_FILE}"
    try:
        with fs.open(target, "r") as f:
            meta = json.load(f)
    except FileNotFoundError as err:
        raise BundleFormatError(
            f"{path} is not an xgpp model bundle: it has no {METADATA_FILE}. Point "
            "xgpp.load_model at the folder written by model.save() or `xgpp train --out`."
        ) from err
    except json.JSONDecodeError as err:
        raise BundleFormatError(f"{target} is not valid JSON: {err}") from err
    if meta.get("format") != FORMAT_NAME:
        raise BundleFormatError(f"{target} has format {meta.get('format')!r}, expected "
                                f"{FORMAT_NAME!r}.")
    version = meta.get("format_version")
    if version != BUNDLE_FORMAT:
        raise BundleFormatError(
            f"bundle {path} has format version {version!r}, but this xgpp "
            f"({__version__}) reads version {BUNDLE_FORMAT} only. Load it with the xgpp "
            f"version that wrote it ({meta.get('xgpp_version', 'unknown')}) or retrain."
        )
    return meta


