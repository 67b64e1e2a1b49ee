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
from xgpp.errors import BundleError
from xgpp.models.base import BUNDLE_FORMAT

__all__ = ["FORMAT_NAME", "INTEGRITY_KEY", "KINDS", "METADATA_FILE", "TENSORS_KEY",
           "WEIGHTS_FILE", "BundleFormatError", "read_metadata", "read_weights", "seal_metadata",
           "tensor_record", "verify_metadata", "verify_tensors", "versions", "weights_sha256"]

METADATA_FILE = "model.json"
WEIGHTS_FILE = "weights.safetensors"
FORMAT_NAME = "xgpp-model-bundle"
#: ``model.json`` key holding the sha256 of every other top-level key, written at save
INTEGRITY_KEY = "integrity"
#: ``model.json`` key recording each weight tensor's dtype, shape and sha256
TENSORS_KEY = "tensors"
#: file endings of pickle-based model files (torch.save, joblib...): never read, named in errors
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".bin", ".dill")

#: bundle kinds without a torch module -> "module:Class" that rebuilds them; torch kinds come
#: from :data:`xgpp.models.registry.ARCHITECTURES` and load as :class:`~xgpp.models.TorchModel`.
KINDS: dict[str, str] = {
    "pmodel": "xgpp.models.baselines:PModelBaseline",
}


class BundleFormatError(BundleError):
    """A folder is not an xgpp bundle, one of an incompatible format, or a modified one.

    Raised before anything of the bundle is used: unreadable or tampered ``model.json``,
    weights that are not safetensors (a pickle is never loaded), weights that differ from
    what ``model.json`` records.
    """


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    return t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes()


def weights_sha256(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict: names, dtypes, shapes and bytes in sorted order."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key]
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(_tensor_bytes(t))
    return h.hexdigest()


def tensor_record(state: dict[str, torch.Tensor]) -> dict[str, dict[str, Any]]:
    """Each tensor's ``dtype``, ``shape`` and ``sha256`` of its bytes (``model.json["tensors"]``).

    With it a refused weights file says which tensor differs and how, not just that the
    whole-state digest does.
    """
    return {k: {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape),
                "sha256": hashlib.sha256(_tensor_bytes(t)).hexdigest()}
            for k, t in sorted(state.items())}


def verify_tensors(state: dict[str, torch.Tensor], meta: dict[str, Any], target: str) -> None:
    """Raise :class:`BundleFormatError` naming each tensor of ``state`` that ``meta`` contradicts.

    ``meta[TENSORS_KEY]`` (written since bundles record it) lists every tensor's dtype, shape
    and sha256; bundles without it are checked by the whole-state ``sha256`` alone.
    """
    record = meta.get(TENSORS_KEY)
    if record is None:
        return
    if not isinstance(record, dict):
        raise BundleFormatError(f"{target}: {METADATA_FILE}[{TENSORS_KEY!r}] is "
                                f"{type(record).__name__}, expected a mapping of tensor records.")
    found = tensor_record(state)
    problems = [f"tensor {k!r} is missing from the weights" for k in sorted(set(record) - set(found))]
    problems += [f"tensor {k!r} is in the weights but not in {METADATA_FILE}"
                 for k in sorted(set(found) - set(record))]
    for k in sorted(set(found) & set(record)):
        want, got = record[k], found[k]
        if not isinstance(want, dict):
            problems.append(f"tensor {k!r} has a malformed record {want!r}")
            continue
        for field in ("dtype", "shape"):
            if want.get(field) != got[field]:
                problems.append(f"tensor {k!r} has {field} {got[field]}, {METADATA_FILE} records "
                                f"{want.get(field)}")
                break
        else:
            if want.get("sha256") != got["sha256"]:
                problems.append(f"tensor {k!r} has sha256 {got['sha256'][:16]}..., "
                                f"{METADATA_FILE} records {str(want.get('sha256'))[:16]}...")
    if problems:
        shown = "; ".join(problems[:6]) + (f"; and {len(problems) - 6} more" if
                                            len(problems) > 6 else "")
        raise BundleFormatError(
            f"weights in {target} do not match {METADATA_FILE}: {shown}. The bundle was "
            "modified or damaged, or its files come from different models: restore both files "
            "from the same save, or retrain.")


def read_weights(fs: Any, root: str) -> dict[str, torch.Tensor]:
    """Read ``weights.safetensors`` of the bundle at ``root``: safetensors only, never pickle.

    Raises
    ------
    BundleFormatError
        If the file is missing, not safetensors (a ``torch.save`` pickle or zip is named as
        such and not opened), truncated or otherwise unreadable.
    """
    from safetensors.torch import load as st_load

    target = f"{root}/{WEIGHTS_FILE}"
    try:
        with fs.open(target, "rb") as f:
            blob = f.read()
    except FileNotFoundError as err:
        raise BundleFormatError(
            f"bundle {root} has a {METADATA_FILE} but no {WEIGHTS_FILE}: copy the whole bundle "
            "folder (both files) or re-save the model.") from err
    try:
        return st_load(blob)
    except Exception as err:  # noqa: BLE001 - safetensors raises SafetensorError, OSError...
        kind = ""
        if blob[:4] == b"PK\x03\x04":
            kind = " It is a zip archive (torch.save writes these): a pickle, which xgpp never loads."
        elif blob[:1] == b"\x80" and blob[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
            kind = " It is a Python pickle, which xgpp never loads (unpickling can run code)."
        raise BundleFormatError(
            f"{target} is not a readable safetensors file ({type(err).__name__}: {err}).{kind} "
            "The file is damaged (truncated, bytes changed) or was replaced; restore it from the "
            "bundle's original save or retrain.") from err


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


def _digest(value: Any) -> str:
    """sha256 of ``value``'s canonical JSON (sorted keys, no whitespace)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(text.encode()).hexdigest()


def seal_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    """A JSON-plain copy of ``meta`` with its :data:`INTEGRITY_KEY` record added.

    The record is the sha256 of every other top-level key's canonical JSON;
    :func:`read_metadata` recomputes it and names each key that was changed, added or removed
    since.  It detects damage and edits, not a forger who rewrites the record too (it is not a
    signature): a bundle is still only data, whose kind must be a registered one.
    """
    body = json.loads(json.dumps({k: v for k, v in meta.items() if k != INTEGRITY_KEY},
                                 default=_json_default))
    body[INTEGRITY_KEY] = {"algorithm": "sha256",
                           "keys": {k: _digest(v) for k, v in sorted(body.items())}}
    return body


def write_metadata(fs: Any, root: str, meta: dict[str, Any]) -> None:
    """Write ``meta`` (sealed by :func:`seal_metadata`) as ``ROOT/model.json``."""
    with fs.open(f"{root}/{METADATA_FILE}", "w") as f:
        json.dump(seal_metadata(meta), f, indent=1, sort_keys=True)


def verify_metadata(meta: dict[str, Any], target: str) -> None:
    """Raise :class:`BundleFormatError` if ``meta`` differs from its :data:`INTEGRITY_KEY` record.

    The message names every top-level key whose content changed, every key added (xgpp never
    runs or imports what a key holds, but the file is not the one saved) and every key removed.
    Bundles written before xgpp sealed them carry no record and are not checked here (their
    weights still are, against ``sha256``).
    """
    record = meta.get(INTEGRITY_KEY)
    if record is None:
        return
    keys = record.get("keys") if isinstance(record, dict) else None
    if (not isinstance(keys, dict) or record.get("algorithm") != "sha256"
            or not all(isinstance(v, str) for v in keys.values())):
        raise BundleFormatError(
            f"{target}: its {INTEGRITY_KEY!r} record is malformed ({str(record)[:80]!r}); "
            "expected {'algorithm': 'sha256', 'keys': {key: sha256}} as xgpp writes it. The "
            "bundle was modified or damaged.")
    body = {k: v for k, v in meta.items() if k != INTEGRITY_KEY}
    changed = sorted(k for k in body if k in keys and keys[k] != _digest(body[k]))
    added = sorted(set(body) - set(keys))
    removed = sorted(set(keys) - set(body))
    if changed or added or removed:
        parts = ([f"changed {changed}"] if changed else []) + (
            [f"added {added} (keys xgpp did not write)"] if added else []) + (
            [f"removed {removed}"] if removed else [])
        raise BundleFormatError(
            f"{target} was edited after it was saved: {'; '.join(parts)}, according to the "
            f"sha256 of each key recorded under {INTEGRITY_KEY!r}. The bundle was modified or "
            "damaged: restore the original model.json (bundles are not meant to be edited by "
            "hand), re-save the model, or retrain.")


def check_output_names(meta: dict[str, Any], target: str) -> None:
    """Refuse a multi-output bundle without ``output_names`` (its column order is unknown)."""
    if len(meta.get("outputs") or {}) > 1 and not meta.get("output_names"):
        raise BundleFormatError(
            f"{target} has {len(meta['outputs'])} outputs but no 'output_names': it was written "
            "before xgpp recorded the column order of multi-output bundles, so which column is "
            "which cannot be told. Retrain it.")


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
            f"{path} is not an xgpp model bundle: it has no {METADATA_FILE}"
            f"{_pickles_named(fs, root)}. Point xgpp.load_model at the folder written by "
            "model.save() or `xgpp train --out`."
        ) from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BundleFormatError(f"{target} is not valid JSON: {err}") from err
    if not isinstance(meta, dict):
        raise BundleFormatError(f"{target} holds a JSON {type(meta).__name__}, expected the "
                                "object xgpp writes (format, kind, inputs, ...).")
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
    check_output_names(meta, target)
    verify_metadata(meta, target)
    kind = meta.get("kind")
    if not isinstance(kind, str):
        raise BundleFormatError(f"{target} has kind {kind!r}; expected the name of a registered "
                                "model kind (a string such as 'mlp').")
    return meta


def _pickles_named(fs: Any, root: str) -> str:
    """`` (it holds model.pt, ...)`` when the folder has pickle-like model files, else ``""``."""
    try:
        names = [str(p).rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)]
    except (FileNotFoundError, NotADirectoryError, OSError):
        return ""
    pickles = sorted(n for n in names if n.lower().endswith(PICKLE_SUFFIXES))
    if not pickles:
        return ""
    return (f" (it holds {', '.join(pickles)}: pickle-based files, which xgpp never loads "
            "because unpickling can run arbitrary code; save weights with safetensors)")


