"""Model bundles: weights as safetensors plus a JSON record of how the model was made.

A bundle is a folder (local path or any fsspec URL) holding::

    model.json            format version, kind, inputs, outputs, feature normalisation,
                          architecture, provenance (data, split, seed, versions), sha256
    weights.safetensors   the tensors (no pickle anywhere)

:func:`load_model` reads it back into the class registered for its ``kind``.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import platform
import threading
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn

from xgpp._version import __version__
from xgpp.models.base import BUNDLE_FORMAT, PRECISIONS, default_batch_size
from xgpp.models.features import FeatureSpec, columns_from_dataset
from xgpp.models.mlp import MLP, MLPConfig
from xgpp.variables import VARIABLES

__all__ = [
    "KINDS",
    "BundleFormatError",
    "TorchModel",
    "load_model",
    "read_metadata",
    "versions",
    "weights_sha256",
]

METADATA_FILE = "model.json"
WEIGHTS_FILE = "weights.safetensors"
FORMAT_NAME = "xgpp-model-bundle"


_DEVICE_LOCK = threading.Lock()


def _autocast(device_type: str, precision: str) -> Any:
    if precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=getattr(torch, precision))


def _forward_cpu(module: nn.Module, x: np.ndarray, bs: int, n_out: int,
                 precision: str) -> np.ndarray:
    """Forward pass over ``x`` in batches of ``bs`` rows, results written in place."""
    out = np.empty((x.shape[0], n_out), np.float32)
    with torch.inference_mode(), _autocast("cpu", precision):
        for i in range(0, x.shape[0], bs):
            out[i:i + bs] = module(torch.from_numpy(x[i:i + bs])).float().numpy()
    return out


def _forward_cuda(module: nn.Module, x: np.ndarray, bs: int, n_out: int,
                  precision: str) -> np.ndarray:
    """Forward pass on a GPU with host transfers overlapped with compute.

    The rows are copied once into this thread's page-locked (pinned) staging buffer
    (:func:`_pinned`, reused across calls), so host-to-device copies are asynchronous DMA;
    batch ``i + 1`` is copied on a side stream while batch ``i`` runs on the compute stream,
    and results come back into a pinned buffer without blocking.  Each dask thread has its own
    pair of streams, so chunks of several threads run on the GPU concurrently and each waits
    only for its own work: one synchronisation per call.
    """
    dev = next(module.parameters()).device
    n = x.shape[0]
    src = _pinned("src", x.shape).copy_(torch.from_numpy(x))
    res = _pinned("res", (n, n_out))
    compute, side = _streams(dev)

    def upload(i: int) -> tuple[torch.Tensor, torch.cuda.Event]:
        with torch.cuda.stream(side):
            xb = src[i:i + bs].to(dev, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(side)
        return xb, ready

    with torch.inference_mode(), _autocast("cuda", precision), torch.cuda.stream(compute):
        nxt = upload(0) if n else None
        for i in range(0, n, bs):
            xb, ready = nxt
            compute.wait_event(ready)
            xb.record_stream(compute)  # xb was allocated on the side stream
            if i + bs < n:
                nxt = upload(i + bs)
            res[i:i + bs].copy_(module(xb).float(), non_blocking=True)
    compute.synchronize()
    return res.numpy().copy()  # the staging buffer is reused by this thread's next call


_STAGING = threading.local()


def _streams(dev: torch.device) -> tuple[torch.cuda.Stream, torch.cuda.Stream]:
    """Return the calling thread's (compute, copy) CUDA streams on ``dev``."""
    key = f"streams_{dev}"
    pair = getattr(_STAGING, key, None)
    if pair is None:
        pair = (torch.cuda.Stream(dev), torch.cuda.Stream(dev))
        setattr(_STAGING, key, pair)
    return pair


def _pinned(name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """Return the calling thread's page-locked float32 buffer ``name``, viewed as ``shape``.

    Allocating pinned memory (``cudaHostAlloc``) costs far more than copying into it and
    serialises threads in the driver; each dask thread keeps its buffers and grows them only
    when a larger chunk arrives.
    """
    size = int(np.prod(shape))
    buf = getattr(_STAGING, name, None)
    if buf is None or buf.numel() < size:
        buf = torch.empty(max(size, 1), dtype=torch.float32, pin_memory=True)
        setattr(_STAGING, name, buf)
    return buf[:size].view(shape)


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
    }


def _build_module(kind: str, meta: dict[str, Any]) -> nn.Module:
    spec = FeatureSpec.from_dict(meta["features"])
    net_cfg = MLPConfig.from_dict(meta["net"])
    embed = spec.embed_column
    if kind == "mlp":
        return MLP(spec.n_features, int(meta["n_out"]), net_cfg, embed_column=embed)
    if kind == "sif-linear":
        from xgpp.models.baselines import SIFLinear

        base = MLP(spec.n_features, int(meta["n_out_base"]), net_cfg, embed_column=embed)
        return SIFLinear(base, spec)
    raise BundleFormatError(f"no torch module builder for bundle kind {kind!r}.")


class TorchModel:
    """A trained torch model with everything needed to apply it to an xgpp dataset.

    Parameters
    ----------
    module : torch.nn.Module
        Maps normalised features ``(n, n_features)`` to normalised outputs ``(n, n_out)``.
    spec : FeatureSpec
        Inputs and their normalisation.
    outputs : dict
        Output name -> ``{"units", "long_name"}`` in column order.
    output_scale, output_offset : sequence of float
        Physical output = normalised output * scale + offset, per output column.
    kind : str
        Registry key used by :func:`load_model` (``"mlp"`` or ``"sif-linear"``).
    net : MLPConfig
    method : str
        Training method (``"siftml"``, ``"ec-only"``, ``"sif-only"``, ...).
    provenance : dict
        Data, split, seed, config, versions, training history.
    extra : dict
        Kind-specific metadata needed to rebuild the module.
    """

    def __init__(self, module: nn.Module, spec: FeatureSpec, *, outputs: dict[str, dict],
                 output_scale: list[float], output_offset: list[float], kind: str = "mlp",
                 net: MLPConfig | None = None, method: str = "mlp",
                 provenance: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
                 xgpp_version: str = __version__) -> None:
        if len(output_scale) != len(outputs) or len(output_offset) != len(outputs):
            raise ValueError(f"{len(outputs)} outputs but {len(output_scale)} scales and "
                             f"{len(output_offset)} offsets.")
        self.module = module.eval()
        self.spec = spec
        self.outputs = {k: dict(v) for k, v in outputs.items()}
        self.output_scale = np.asarray(output_scale, np.float32)
        self.output_offset = np.asarray(output_offset, np.float32)
        self.kind = kind
        self.net = net or MLPConfig()
        self.method = method
        self.provenance = dict(provenance or {})
        self.extra = dict(extra or {})
        self.xgpp_version = xgpp_version
        self._on_device: dict[str, tuple[tuple, nn.Module]] = {}
        self._sha256: tuple[tuple, str] | None = None

    # ---- identity
    @property
    def sha256(self) -> str:
        """SHA-256 of the weights.

        Hashing every weight is costly and :func:`xgpp.predict.predict` asks several times per
        call, so the digest is cached; the cache key is each tensor's storage and in-place
        version counter, so replacing ``module`` or training it in place rehashes.
        """
        key = self._weights_version()
        if self._sha256 is None or self._sha256[0] != key:
            self._sha256 = (key, weights_sha256(self.module.state_dict()))
        return self._sha256[1]

    def _weights_version(self) -> tuple:
        """Cheap identity of the current weights: each tensor's storage and in-place version."""
        return tuple((k, v.data_ptr(), v._version) for k, v in self.module.state_dict().items())

    def __getstate__(self) -> dict[str, Any]:
        # device copies and the digest cache belong to this process (storage pointers, CUDA
        # memory): a pickled model (sent to a dask worker) starts without them
        return {**self.__dict__, "_on_device": {}, "_sha256": None}

    @property
    def id(self) -> str:
        """Short identifier: method and the first 12 hex digits of :attr:`sha256`."""
        return f"{self.method}-{self.sha256[:12]}"

    @property
    def inputs(self) -> tuple[str, ...]:
        """Dataset variables the model reads (static ``igbp``/``elevation`` included)."""
        return self.spec.inputs

    @property
    def input_units(self) -> dict[str, str]:
        """Canonical unit of each input."""
        return {n: VARIABLES[n].units for n in self.inputs}

    def __repr__(self) -> str:
        return (f"<xgpp {type(self).__name__} {self.id}: {list(self.inputs)} -> "
                f"{list(self.outputs)}>")

    # ---- applying the model
    def check(self, ds: xr.Dataset) -> None:
        """Raise a clear error naming the variable, units and dims if ``ds`` does not fit."""
        self.spec.check(ds)

    def features(self, ds: xr.Dataset, *, return_mask: bool = False
                 ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Normalised float32 features, rows in stacked ``(time, lat, lon)`` order.

        Parameters
        ----------
        ds : xarray.Dataset
            In-memory data (a chunk) with the model's :attr:`inputs` in canonical units; a
            ``sample`` dataset from :func:`xgpp.samples.site_samples` also works.
        return_mask : bool
            If True return ``(X_valid, valid)``: only rows whose inputs are all finite, and the
            boolean mask over all stacked pixels.  If False rows with a NaN input are NaN and
            must be skipped by the caller.
        """
        cols = columns_from_dataset(ds, self.inputs)
        if not return_mask:
            return self.spec.transform(cols)
        valid = self.spec.valid_mask(cols)
        if valid.all():
            return self.spec.transform(cols), valid
        return self.spec.transform({k: v[valid] for k, v in cols.items()}), valid

    def _module_on(self, device: str) -> nn.Module:
        dev = torch.device(device)
        if dev.type == "cpu":
            return self.module
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(
                f"device={device!r} but this process sees no CUDA GPU (torch "
                f"{torch.__version__}: torch.cuda.is_available() is False). Use device='auto' "
                "(CUDA where a worker has a GPU, else CPU) or device='cpu'."
            )
        version = self._weights_version()
        with _DEVICE_LOCK:  # dask threads of one worker share the model: copy it once
            cached = self._on_device.get(str(dev))
            if cached is None or cached[0] != version:  # first use, or the weights changed
                moved = copy.deepcopy(self.module).to(dev).eval()
                if dev.type == "cuda":  # its weights are read on other threads' streams
                    torch.cuda.synchronize(dev)
                self._on_device[str(dev)] = (version, moved)
            return self._on_device[str(dev)][1]

    def predict_numpy(self, features: np.ndarray, *, device: str = "cpu",
                      batch_size: int | None = None, precision: str = "float32") -> np.ndarray:
        """Apply the network to features from :meth:`features` (no NaN rows).

        Parameters
        ----------
        features : numpy.ndarray
            ``(n, n_features)`` rows from :meth:`features`.
        device : str
            ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        batch_size : int, optional
            Rows per forward pass; default :data:`xgpp.models.base.DEFAULT_BATCH_SIZE` for the
            device (small on a CPU, where cache-sized batches are fastest; large on a GPU).
        precision : {"float32", "bfloat16", "float16"}
            Arithmetic of the forward pass (``torch.autocast`` below float32).

        Returns
        -------
        numpy.ndarray
            float32 ``(n, len(outputs))`` in physical units (:attr:`outputs` ``units``).
        """
        x = np.ascontiguousarray(features, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.spec.n_features:
            raise ValueError(f"features have shape {x.shape}; this model expects (n, "
                             f"{self.spec.n_features}) from model.features(ds).")
        if precision not in PRECISIONS:
            raise ValueError(f"precision={precision!r}; choose one of {list(PRECISIONS)}.")
        bs = int(batch_size or default_batch_size(device))
        if bs < 1:
            raise ValueError(f"batch_size must be a positive number of rows, got {batch_size}.")
        module = self._module_on(device)
        dev = next(module.parameters()).device
        if dev.type == "cuda":
            out = _forward_cuda(module, x, bs, len(self.outputs), precision)
        else:
            out = _forward_cpu(module, x, bs, len(self.outputs), precision)
        out *= self.output_scale
        out += self.output_offset
        return out

    # ---- persistence
    def metadata(self) -> dict[str, Any]:
        """The JSON record written as ``model.json``."""
        return {
            **_metadata_header(self),
            "output_scale": self.output_scale.tolist(),
            "output_offset": self.output_offset.tolist(),
            "features": self.spec.to_dict(),
            "feature_names": list(self.spec.names),
            "net": self.net.to_dict(),
            "n_out": len(self.outputs),
            **self.extra,
            "provenance": self.provenance,
        }

    def save(self, path: str, *, storage_options: dict | None = None) -> str:
        """Write ``model.json`` and ``weights.safetensors`` under ``path`` (fsspec URL ok)."""
        from safetensors.torch import save as st_save

        fs, root = _fs(path, storage_options)
        fs.makedirs(root, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.module.state_dict().items()}
        blob = st_save(state, metadata={"format": FORMAT_NAME,
                                        "format_version": str(BUNDLE_FORMAT)})
        with fs.open(f"{root}/{WEIGHTS_FILE}", "wb") as f:
            f.write(blob)
        with fs.open(f"{root}/{METADATA_FILE}", "w") as f:
            json.dump(self.metadata(), f, indent=1, sort_keys=True, default=_json_default)
        return str(path)

    @classmethod
    def from_bundle(cls, meta: dict[str, Any], fs: Any, root: str) -> TorchModel:
        """Rebuild from a bundle's metadata and weights (used by :func:`load_model`)."""
        from safetensors.torch import load as st_load

        with fs.open(f"{root}/{WEIGHTS_FILE}", "rb") as f:
            state = st_load(f.read())
        module = _build_module(meta["kind"], meta)
        try:
            module.load_state_dict(state)
        except RuntimeError as err:
            raise BundleFormatError(
                f"weights in {root}/{WEIGHTS_FILE} do not fit the architecture in "
                f"{METADATA_FILE} (kind {meta['kind']!r}, net {meta['net']}). The bundle is "
                "damaged or its files come from different models."
            ) from err
        found = weights_sha256(module.state_dict())
        if found != meta.get("sha256"):
            raise BundleFormatError(
                f"weights in {root} have sha256 {found[:16]}..., but {METADATA_FILE} records "
                f"{str(meta.get('sha256'))[:16]}...: the bundle was modified or damaged."
            )
        extra_keys = ("n_out_base", "conversion")
        return cls(module, FeatureSpec.from_dict(meta["features"]), outputs=meta["outputs"],
                   output_scale=meta["output_scale"], output_offset=meta["output_offset"],
                   kind=meta["kind"], net=MLPConfig.from_dict(meta["net"]),
                   method=meta.get("method", "mlp"), provenance=meta.get("provenance", {}),
                   extra={k: meta[k] for k in extra_keys if k in meta},
                   xgpp_version=meta.get("xgpp_version", "unknown"))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, tuple | set):
        return list(obj)
    return str(obj)


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


#: bundle kind -> "module:Class" that rebuilds it (adding a model kind is adding a row)
KINDS: dict[str, str] = {
    "mlp": "xgpp.models.bundle:TorchModel",
    "sif-linear": "xgpp.models.bundle:TorchModel",
    "pmodel": "xgpp.models.baselines:PModelBaseline",
}


def load_model(path: str, *, storage_options: dict | None = None) -> Any:
    """Load a model bundle written by ``model.save(path)`` (local path or fsspec URL).

    Raises
    ------
    BundleFormatError
        If ``path`` holds no bundle, one of another format version, or damaged weights.
    """
    import importlib

    meta = read_metadata(path, storage_options=storage_options)
    kind = meta.get("kind")
    if kind not in KINDS:
        raise BundleFormatError(f"bundle {path} has unknown kind {kind!r}; this xgpp knows "
                                f"{sorted(KINDS)}.")
    module_name, _, cls_name = KINDS[kind].partition(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    fs, root = _fs(path, storage_options)
    return cls.from_bundle(meta, fs, root)

