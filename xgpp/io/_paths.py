"""Expand user paths (path, glob, folder, list, fsspec URL) into a sorted list of file URLs."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import IO, Any

import fsspec

from xgpp.errors import InputError

__all__ = ["PathsLike", "expand_paths", "open_binary", "local_path", "basename"]

PathsLike = str | os.PathLike | Iterable[str | os.PathLike]

_GLOB_CHARS = ("*", "?", "[")


def _expand_one(item: str, suffixes: tuple[str, ...] | None) -> list[str]:
    try:
        fs, path = fsspec.core.url_to_fs(item)
    except (ValueError, ImportError) as err:
        raise InputError(
            f"cannot open {item!r}: fsspec does not know its protocol ({err}). "
            "Pass a local path, a glob, or an fsspec URL such as 's3://bucket/key.nc' "
            "(remote protocols need their package, e.g. s3fs)."
        ) from err
    try:
        if any(c in path for c in _GLOB_CHARS):
            found = sorted(fs.glob(path))
            found = [f for f in found if not fs.isdir(f)]
        elif fs.isdir(path):
            found = sorted(f for f in fs.find(path) if not os.path.basename(f).startswith("."))
        elif fs.exists(path):
            found = [path]
        else:
            raise FileNotFoundError(
                f"{item!r} does not exist: no file, folder or glob match there. "
                "Check the path or URL (and your credentials for remote stores)."
            )
    except FileNotFoundError:
        raise
    except Exception as err:  # network errors differ by protocol (aiohttp, botocore, ...)
        raise OSError(
            f"cannot reach {item!r}: {type(err).__name__}: {err}. Check the URL, the network "
            "and your credentials (storage_options) for this store."
        ) from err
    if suffixes is not None:
        found = [f for f in found if f.lower().endswith(suffixes)]
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("file", "local"):
        return found
    return [fs.unstrip_protocol(f) for f in found]


def expand_paths(paths: PathsLike, *, suffixes: tuple[str, ...] | None = None,
                 what: str = "input") -> list[str]:
    """Expand ``paths`` into a sorted, de-duplicated list of files.

    Parameters
    ----------
    paths : str, os.PathLike or list of them
        A file, a folder (searched recursively), a glob (``"data/*.nc"``) or an fsspec URL
        (``"s3://bucket/troposif/*.nc"``); or a list of any of these.
    suffixes : tuple of str, optional
        Keep only files whose names end with one of these (lower-case) suffixes.
    what : str
        What the files are, for error messages (e.g. ``"FLUXNET CSV"``).

    Raises
    ------
    FileNotFoundError
        If nothing matches; the message names the pattern(s).
    OSError
        If a remote store cannot be reached; the message names the URL.
    """
    items = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    if not items:
        raise FileNotFoundError(f"no {what} files given: `paths` is an empty list.")
    out: list[str] = []
    for item in items:
        out.extend(_expand_one(os.fspath(item), suffixes))
    out = sorted(dict.fromkeys(out))
    if not out:
        kinds = f" ending in {list(suffixes)}" if suffixes else ""
        raise FileNotFoundError(
            f"no {what} files{kinds} match {[os.fspath(i) for i in items]}. "
            "Check the folder, the glob pattern and the file extension."
        )
    return out


def local_path(url: str) -> str | None:
    """Return ``url`` as a local filesystem path, or None if it is remote."""
    if "://" not in url:
        return url
    if url.startswith("file://"):
        return url[len("file://"):]
    return None


@contextmanager
def open_binary(url: str) -> Iterator[IO[Any]]:
    """Open ``url`` (local or fsspec) for binary reading."""
    with fsspec.open(url, "rb") as f:
        yield f


def basename(url: str) -> str:
    """File name of a path or URL."""
    return url.rstrip("/").rsplit("/", 1)[-1]
