"""Model bundles: weights as safetensors plus a JSON record of how the model was made.

A bundle is a folder (local path or any fsspec URL) holding::

    model.json            format version, kind, inputs and their units, outputs, feature
                          normalisation, architecture config, provenance (data, split, seed,
                          versions, training history), sha256
    weights.safetensors   the tensors (no pickle anywhere)

Loading is reading data, never running it: ``model.json`` is plain JSON whose ``kind`` must
be a registered architecture (or a :data:`KINDS` entry), the weights are read with safetensors
only (no ``torch.load``, no unpickling; pickle files in the folder are ignored), and both files
are verified before use: every top-level key of ``model.json`` against the sha256 recorded
under ``integrity`` at save, every tensor's dtype, shape and bytes against ``tensors``, and the
whole state against ``sha256``.  A mismatch raises :class:`BundleFormatError` naming the file
and what differs.

:class:`TorchModel` holds any architecture registered in :mod:`xgpp.models.registry`;
:func:`load_model` rebuilds a bundle from its ``kind``.
"""

from __future__ import annotations

import copy
import threading
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn

from xgpp._version import __version__
from xgpp.errors import DeviceError, InputError, UnitError
from xgpp.models._format import (
    FORMAT_NAME,
    INTEGRITY_KEY,
    KINDS,
    METADATA_FILE,
    TENSORS_KEY,
    WEIGHTS_FILE,
    BundleFormatError,
    _fs,
    _metadata_header,
    check_output_names,
    ordered_outputs,
    read_metadata,
    read_weights,
    tensor_record,
    verify_metadata,
    verify_tensors,
    versions,
    weights_sha256,
    write_metadata,
)
from xgpp.models.base import BUNDLE_FORMAT, PRECISIONS, default_batch_size
from xgpp.models.features import FeatureSpec, columns_from_dataset
from xgpp.models.forward import forward
from xgpp.models.outputs import NonNegative
from xgpp.models.registry import ARCHITECTURES, build_module
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

_DEVICE_LOCK = threading.Lock()

#: model.json keys every TorchModel writes itself; any other key is kind-specific ``extra``
_STANDARD_KEYS = frozenset({
    "format", "format_version", "kind", "method", "id", "sha256", "xgpp_version", "created",
    "inputs", "input_units", "outputs", "output_names", "output_scale", "output_offset", "features",
    "feature_names", "net", "n_out", "provenance", "nonnegative", INTEGRITY_KEY, TENSORS_KEY,
})


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
        Architecture registered in :data:`xgpp.models.registry.ARCHITECTURES` (``"mlp"``,
        ``"sif-linear"``, ``"moe"``, ...); :func:`load_model` rebuilds the module from it.
    net : config dataclass or dict
        The architecture's settings (its registered ``config`` class, or that class's dict),
        written as ``model.json["net"]``.
    method : str
        Training method (``"siftml"``, ``"ec-only"``, ``"sif-only"``, ...).
    provenance : dict
        Data, split, seed, config, versions, training history.
    extra : dict
        Kind-specific metadata needed to rebuild the module (e.g. ``tasks`` of a MoE).
    input_units : dict, optional
        Units the model was trained with, by input (a loaded bundle's record); default the
        canonical units of :data:`xgpp.variables.VARIABLES`.  :meth:`check` compares them with
        the cube's ``units`` attributes.
    """

    def __init__(self, module: nn.Module, spec: FeatureSpec, *, outputs: dict[str, dict],
                 output_scale: list[float], output_offset: list[float], kind: str = "mlp",
                 net: Any = None, method: str = "mlp",
                 provenance: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
                 xgpp_version: str = __version__,
                 input_units: dict[str, str] | None = None) -> None:
        if len(output_scale) != len(outputs) or len(output_offset) != len(outputs):
            raise InputError(f"{len(outputs)} outputs but {len(output_scale)} scales and "
                             f"{len(output_offset)} offsets.")
        self.module = module.eval()
        self.spec = spec
        self.outputs = {k: dict(v) for k, v in outputs.items()}
        self.output_scale = np.asarray(output_scale, np.float32)
        self.output_offset = np.asarray(output_offset, np.float32)
        self.kind = kind
        self.net = _config_of(kind, net)
        self._input_units = dict(input_units) if input_units else None
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
        """Unit of each input the model was trained with (canonical units)."""
        if self._input_units is not None:
            return dict(self._input_units)
        return {n: VARIABLES[n].units for n in self.inputs}

    def __repr__(self) -> str:
        return (f"<xgpp {type(self).__name__} {self.id}: {list(self.inputs)} -> "
                f"{list(self.outputs)}>")

    # ---- applying the model
    def check(self, ds: xr.Dataset) -> None:
        """Raise a clear error naming the variable, units and dims if ``ds`` does not fit.

        Besides the feature checks (variables, canonical units, dims), the units recorded in
        the bundle at training time must be the cube's: a bundle trained on inputs in other
        units (another xgpp version's canonical table, say) is refused rather than fed
        numbers on another scale.
        """
        self.spec.check(ds)
        check_input_units(self, ds)

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
            raise DeviceError(
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
            raise InputError(f"features have shape {x.shape}; this model expects (n, "
                             f"{self.spec.n_features}) from model.features(ds).")
        if precision not in PRECISIONS:
            raise InputError(f"precision={precision!r}; choose one of {list(PRECISIONS)}.")
        bs = int(batch_size or default_batch_size(device))
        if bs < 1:
            raise InputError(f"batch_size must be a positive number of rows, got {batch_size}.")
        out = forward(self._module_on(device), x, bs, len(self.outputs), precision)
        out *= self.output_scale
        out += self.output_offset
        if isinstance(self.module, NonNegative):  # >= 0 exactly, not -1e-7 from rounding
            cols = list(self.module.columns)
            out[:, cols] = np.maximum(out[:, cols], 0.0)
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
            "net": self.net.to_dict() if hasattr(self.net, "to_dict") else dict(self.net),
            "n_out": len(self.outputs),
            **({"nonnegative": self.module.record()} if isinstance(self.module, NonNegative)
               else {}),
            **self.extra,
            "provenance": self.provenance,
        }

    def save(self, path: str, *, storage_options: dict | None = None) -> str:
        """Write ``model.json`` and ``weights.safetensors`` under ``path`` (fsspec URL ok).

        ``model.json`` is :meth:`metadata` plus each tensor's dtype, shape and sha256
        (``tensors``) and the sha256 of every top-level key (``integrity``), which
        :func:`load_model` verifies.  ``storage_options`` are used to write and never recorded.
        """
        from safetensors.torch import save as st_save

        fs, root = _fs(path, storage_options)
        fs.makedirs(root, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.module.state_dict().items()}
        blob = st_save(state, metadata={"format": FORMAT_NAME,
                                        "format_version": str(BUNDLE_FORMAT)})
        with fs.open(f"{root}/{WEIGHTS_FILE}", "wb") as f:
            f.write(blob)
        write_metadata(fs, root, {**self.metadata(), TENSORS_KEY: tensor_record(state)})
        return str(path)

    @classmethod
    def from_bundle(cls, meta: dict[str, Any], fs: Any, root: str) -> TorchModel:
        """Rebuild from a bundle's metadata and weights (used by :func:`load_model`).

        ``meta`` is checked against its integrity record and the weights (safetensors only)
        against ``meta`` before the module is built; any mismatch raises
        :class:`BundleFormatError`.
        """
        target = f"{root}/{METADATA_FILE}"
        check_output_names(meta, target)
        verify_metadata(meta, target)
        state = read_weights(fs, root)
        verify_tensors(state, meta, f"{root}/{WEIGHTS_FILE}")
        module = build_module(meta["kind"], meta)
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
        return cls(module, FeatureSpec.from_dict(meta["features"]), outputs=ordered_outputs(meta),
                   output_scale=meta["output_scale"], output_offset=meta["output_offset"],
                   kind=meta["kind"], net=meta["net"],
                   method=meta.get("method", "mlp"), provenance=meta.get("provenance", {}),
                   extra={k: v for k, v in meta.items() if k not in _STANDARD_KEYS},
                   xgpp_version=meta.get("xgpp_version", "unknown"),
                   input_units=meta.get("input_units"))


def _config_of(kind: str, net: Any) -> Any:
    """The architecture config of ``kind`` as its registered dataclass (dicts are parsed)."""
    arch = ARCHITECTURES.get(kind)
    if net is None:
        if arch is None or arch.config is None:
            return {}
        return arch.config()
    if isinstance(net, dict) and arch is not None and arch.config is not None:
        return arch.config.from_dict(net)
    return net


def check_input_units(model: Any, ds: xr.Dataset) -> None:
    """Raise when a cube variable's ``units`` differ from the units ``model`` was trained with."""
    for name, units in model.input_units.items():
        if name in ds.variables and "units" in ds[name].attrs:
            found = ds[name].attrs["units"]
            if found != units:
                raise UnitError(
                    f"variable {name!r} has units {found!r}, but model {model.id} was trained "
                    f"with {name!r} in {units!r} (recorded in its bundle). Convert the input "
                    f"(xgpp.variables.normalise_units) or use a model trained on these units."
                )


def load_model(path: str, *, storage_options: dict | None = None) -> Any:
    """Load a model bundle written by ``model.save(path)`` (local path or fsspec URL).

    Nothing in the bundle is run: ``model.json`` is parsed as JSON, its ``kind`` must be a
    registered one, the weights are read as safetensors (never unpickled; ``*.pt``/``*.pkl``
    files in the folder are ignored) and both files are verified before the model is built.

    Raises
    ------
    BundleFormatError
        If ``path`` holds no bundle, one of another format version, an unknown kind, a
        ``model.json`` edited since it was saved, or weights that are not safetensors or differ
        from what ``model.json`` records (the message names the file, key or tensor).
    """
    import importlib

    meta = read_metadata(path, storage_options=storage_options)
    kind = meta.get("kind")
    fs, root = _fs(path, storage_options)
    if kind in ARCHITECTURES:
        return TorchModel.from_bundle(meta, fs, root)
    if kind not in KINDS:
        raise BundleFormatError(f"bundle {path} has unknown kind {kind!r}; this xgpp knows "
                                f"{sorted(set(KINDS) | set(ARCHITECTURES))}.")
    module_name, _, cls_name = KINDS[kind].partition(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls.from_bundle(meta, fs, root)

