"""Cache of SIF pre-training, shared by runs that differ only in what pre-training never sees.

Pre-training reads the drivers and the SIF cube on grid pixels, never a site, so for given
data, feature/net/pre-training/loader settings, target and seed it is the same network whatever
the site split or the fine-tuning variant.  An experiment that trains SIFTML variants on many
folds pre-trains once per (data, seed).

Each entry is one file ``CACHE_DIR/pretrain-<key>.safetensors``: the pre-trained
``state_dict`` as tensors and, in the safetensors header's metadata, a JSON record (the
fingerprint the key hashes, the target moments, the pre-training history, the weights'
SHA-256).  No pickle.  The file is written under a unique temporary name and renamed into
place, so two processes racing on one key leave one valid file; a damaged or foreign file is
reported with a :class:`PretrainCacheWarning` and recomputed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import torch

from xgpp.errors import BundleError
from xgpp.models._format import _fs, _json_default, weights_sha256

__all__ = ["CACHE_FORMAT", "ENV_VAR", "PretrainCache", "PretrainCacheWarning", "cache_key",
           "resolve_cache_dir"]

#: bumped when what an entry holds, or how pre-training computes it, changes
CACHE_FORMAT = 1
#: environment variable naming the cache folder when ``train(cache_dir=None)``
ENV_VAR = "XGPP_CACHE_DIR"
_META_KEY = "xgpp_pretrain"


class PretrainCacheWarning(UserWarning):
    """A cache entry could not be used (damaged, or another fingerprint); it is recomputed."""


def resolve_cache_dir(cache_dir: str | os.PathLike | None) -> str | None:
    """``cache_dir`` as given, else ``$XGPP_CACHE_DIR``, else None (no cache)."""
    if cache_dir is not None:
        return os.fspath(cache_dir)
    return os.environ.get(ENV_VAR) or None


def cache_key(fingerprint: dict[str, Any]) -> str:
    """32 hex digits of the SHA-256 of the fingerprint's canonical JSON."""
    text = json.dumps(fingerprint, sort_keys=True, default=_json_default)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class PretrainCache:
    """Pre-trained networks by fingerprint key, under a local folder or fsspec URL.

    Parameters
    ----------
    root : str
        Cache folder (created on first store).
    storage_options : dict, optional
        fsspec options for ``root``.
    """

    def __init__(self, root: str, storage_options: dict | None = None) -> None:
        self.url = str(root)
        self.fs, self.root = _fs(self.url, storage_options)
        self.root = self.root.rstrip("/")

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Hold an exclusive lock on entry ``key`` (local folders; a no-op elsewhere).

        Runs in parallel processes that need the same pre-trained network then compute it
        once: the first holds the lock while it trains, the others wait and load its entry.
        """
        if not _is_local(self.fs):
            yield
            return
        import fcntl

        self.fs.makedirs(self.root, exist_ok=True)
        with open(f"{self.root}/pretrain-{key}.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def path(self, key: str) -> str:
        """File of entry ``key``."""
        return f"{self.root}/pretrain-{key}.safetensors"

    def load(self, key: str, fingerprint: dict[str, Any]
             ) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """``(state_dict, record)`` of entry ``key``, or None when absent or unusable.

        An entry whose recorded fingerprint differs from ``fingerprint`` or whose weights do
        not match their recorded SHA-256 warns (:class:`PretrainCacheWarning`) and counts as
        absent.
        """
        from safetensors.torch import load as st_load

        path = self.path(key)
        if not self.fs.exists(path):
            return None
        try:
            with self.fs.open(path, "rb") as f:
                blob = f.read()
            state = st_load(blob)
            record = json.loads(_header_metadata(blob)[_META_KEY])
        except Exception as err:  # noqa: BLE001 - any damage means: recompute
            warnings.warn(f"pre-training cache entry {path} is unreadable ({err}); pre-training "
                          "again and replacing it.", PretrainCacheWarning, stacklevel=3)
            return None
        want = json.loads(json.dumps(fingerprint, sort_keys=True, default=_json_default))
        if record.get("fingerprint") != want:
            warnings.warn(f"pre-training cache entry {path} holds another run's network (same "
                          "key, different fingerprint); pre-training again and replacing it.",
                          PretrainCacheWarning, stacklevel=3)
            return None
        if record.get("sha256") != weights_sha256(state):
            warnings.warn(f"pre-training cache entry {path}: weights do not match their recorded "
                          "SHA-256 (damaged); pre-training again and replacing it.",
                          PretrainCacheWarning, stacklevel=3)
            return None
        return state, record

    def store(self, key: str, state: dict[str, torch.Tensor], fingerprint: dict[str, Any],
              record: dict[str, Any]) -> str:
        """Write entry ``key`` atomically (temporary file, then rename); return its path."""
        from safetensors.torch import save as st_save

        tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        full = {**record, "format": CACHE_FORMAT, "fingerprint": fingerprint,
                "sha256": weights_sha256(tensors)}
        blob = st_save(tensors, metadata={_META_KEY: json.dumps(full, sort_keys=True,
                                                               default=_json_default)})
        self.fs.makedirs(self.root, exist_ok=True)
        path = self.path(key)
        tmp = f"{self.root}/.pretrain-{key}.{uuid.uuid4().hex}.tmp"
        with self.fs.open(tmp, "wb") as f:
            f.write(blob)
        protocol = self.fs.protocol
        if "file" in (protocol if isinstance(protocol, tuple) else (protocol,)):
            os.replace(tmp, path)  # atomic on POSIX, replacing a racing writer's file
        else:  # object stores: one PUT per object is atomic already
            self.fs.mv(tmp, path)
        return path


def _is_local(fs: Any) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def _header_metadata(blob: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors blob (8-byte little-endian length, JSON header)."""
    n = int.from_bytes(blob[:8], "little")
    meta = json.loads(blob[8:8 + n]).get("__metadata__") or {}
    if _META_KEY not in meta:
        raise BundleError(f"no {_META_KEY!r} record in the safetensors metadata")
    return meta
