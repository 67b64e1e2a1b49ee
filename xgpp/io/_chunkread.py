"""Whole stored chunks read straight from a Zarr store and decoded with its own codecs.

Reading one stored chunk through ``xarray.Variable[key].values`` goes through xarray's lazy
indexing, zarr's selection machinery and two thread hops into zarr's event loop (the file
read, then the decode), which on a 1.5 MB float32 chunk costs about 2.5 ms against 1 ms for
reading the bytes and decoding them (measured in ``docs/predict.md``).  Every cube xgpp
streams is read chunk by chunk along its stored chunks, so :class:`ChunkReader` serves exactly
those reads: the chunk's bytes from the store (any fsspec filesystem) and the array's own
codecs (numcodecs, the library zarr itself decodes with), and the same CF masking xarray
would apply.

It is used only where it gives xarray's result exactly: a Zarr v2 or v3 array without
sharding or array-to-array filters, codecs numcodecs implements, no ``scale_factor`` or
``add_offset``, a variable whose decoded dtype is the stored one (so nothing but the fill
value is decoded), and a read of step-1 slices (or of ints inside one stored chunk).  A
read that spans several stored chunks (dask chunks coarser than the stored ones,
``open_cube(..., chunks=...)``) is assembled from them, one at a time.  Anything else takes
xarray's path.  ``tests/test_chunkread.py`` compares the two bit for bit over every
supported layout, edge chunks and chunks never written.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

__all__ = ["ChunkReader", "StoredChunks", "chunk_reader", "numcodec", "v3_layout"]

# CF decoding that changes values beyond the fill value: such variables take xarray's path
_DECODED = ("scale_factor", "add_offset", "calendar")


def numcodec(codec: Any) -> Any:
    """The numcodecs codec that does what a Zarr v3 bytes-to-bytes codec does, or None.

    Zarr's own ``ZstdCodec``, ``BloscCodec`` and ``GzipCodec`` (with their settings) and the
    ``numcodecs.zarr3`` wrappers are supported; anything else returns None.
    """
    import numcodecs
    from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

    if isinstance(codec, ZstdCodec):
        return numcodecs.Zstd(level=codec.level, checksum=codec.checksum)
    if isinstance(codec, BloscCodec):
        shuffle = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[str(codec.shuffle.value)]
        # the typesize zarr evolved from the dtype: the shuffle's element size when encoding
        # (zarr hands Blosc the chunk as bytes; decoding reads it from the header)
        typesize = getattr(codec, "typesize", None)
        return numcodecs.Blosc(cname=str(codec.cname.value), clevel=codec.clevel,
                               shuffle=shuffle, blocksize=codec.blocksize,
                               typesize=int(typesize) if typesize else None)
    if isinstance(codec, GzipCodec):
        return numcodecs.GZip(level=codec.level)
    config = getattr(codec, "codec_config", None)  # numcodecs.zarr3 wrappers
    if isinstance(config, dict) and "id" in config:
        try:
            return numcodecs.get_codec(dict(config))
        except (KeyError, ValueError, TypeError):
            return None
    return None


def _decoded_nbytes(codec: Any, buf: Any) -> int | None:
    """How many bytes ``codec`` says ``buf`` decodes to, from its header; None if unknown."""
    import numcodecs

    view = memoryview(buf).cast("B")
    if isinstance(codec, numcodecs.Zstd):
        # frame header (RFC 8878, 3.1.1): magic, descriptor, [window], [dictionary id], size
        if len(view) < 6 or bytes(view[:4]) != b"\x28\xb5\x2f\xfd":
            return None
        desc = view[4]
        single = (desc >> 5) & 1
        at = 5 + (1 - single) + (0, 1, 2, 4)[desc & 3]
        width = (single, 2, 4, 8)[desc >> 6]
        if not width or len(view) < at + width:
            return None
        size = int.from_bytes(view[at:at + width], "little")
        return size + 256 if width == 2 else size
    if isinstance(codec, numcodecs.Blosc):
        # Blosc 1 header: version, versionlz, flags, typesize, then nbytes, blocksize and
        # cbytes as little-endian uint32; cbytes is the whole buffer's length
        if len(view) < 16 or int.from_bytes(view[12:16], "little") != len(view):
            return None
        return int.from_bytes(view[4:8], "little")
    return None


class StoredChunks:
    """What a reader and a writer of whole stored chunks of one Zarr array share.

    The array's URL and fsspec options, shape and stored chunk shape, chunk dtype, codecs,
    fill value and chunk key spelling; the filesystem is opened on first use in each process
    (an instance pickles without it).

    Parameters
    ----------
    url : str
        URL or path of the array (the store's URL joined with the variable's path).
    storage_options : dict
        fsspec options for ``url``.
    shape, chunks : tuple of int
        Array and stored chunk shape.
    dtype : numpy.dtype
        Dtype the chunk bytes hold (with its byte order).
    codecs : list
        numcodecs codecs in the order they are applied when writing (decoded in reverse).
    fill_value : scalar
        The array's fill value: what a chunk never written holds.
    key_prefix, key_sep : str
        Chunk key spelling: ``key_prefix + key_sep.join(index)`` relative to ``url``
        (``"c/"`` and ``"/"`` for Zarr v3's default encoding, ``""`` and ``"."`` for v2).
    """

    def __init__(self, url: str, storage_options: dict[str, Any], shape: tuple[int, ...],
                 chunks: tuple[int, ...], dtype: np.dtype, codecs: list[Any],
                 fill_value: Any, key_prefix: str, key_sep: str) -> None:
        self.url = url.rstrip("/")
        self.storage_options = storage_options
        self.shape, self.chunks = shape, chunks
        self.dtype = dtype
        self.codecs = codecs
        self.fill_value = fill_value
        self.key_prefix, self.key_sep = key_prefix, key_sep
        self._fs: Any = None
        self._root = ""
        self._local = False

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_fs"] = None
        return state

    def _filesystem(self) -> tuple[Any, str]:
        if self._fs is None:
            import fsspec
            from fsspec.implementations.local import LocalFileSystem

            self._fs, self._root = fsspec.core.url_to_fs(self.url, **self.storage_options)
            self._local = isinstance(self._fs, LocalFileSystem)
        return self._fs, self._root

    def key_of(self, idx: tuple[int, ...]) -> str:
        """The chunk key of chunk index ``idx``, relative to the array."""
        return self.key_prefix + self.key_sep.join(map(str, idx))


class ChunkReader(StoredChunks):
    """Reads whole stored chunks of one Zarr array: bytes from the store, numcodecs decode.

    Build it with :func:`chunk_reader`, which returns None where this reader would not give
    xarray's result exactly.  It pickles (the filesystem is reopened on first use in each
    process).

    Parameters
    ----------
    url, storage_options, shape, chunks, dtype, codecs, fill_value, key_prefix, key_sep
        As for :class:`StoredChunks`.
    order : str
        ``"C"`` or ``"F"`` (Zarr v2 only).
    mask : tuple of float
        Values xarray turns into NaN (``_FillValue``, ``missing_value``), if any.
    """

    def __init__(self, url: str, storage_options: dict[str, Any], shape: tuple[int, ...],
                 chunks: tuple[int, ...], dtype: np.dtype, order: str, codecs: list[Any],
                 fill_value: Any, mask: tuple[float, ...], key_prefix: str, key_sep: str) -> None:
        super().__init__(url, storage_options, shape, chunks, dtype, codecs, fill_value,
                         key_prefix, key_sep)
        self.order, self.mask = order, mask

    def chunk_of(self, key: Any) -> tuple[tuple[int, ...], tuple[slice, ...]] | None:
        """The chunk index holding the whole of ``key`` and the part of it asked for.

        None when ``key`` is not a tuple of step-1 slices (or ints) inside one stored chunk.
        """
        key = key if isinstance(key, tuple) else (key,)
        if len(key) != len(self.shape):
            return None
        idx, part = [], []
        for k, n, c in zip(key, self.shape, self.chunks, strict=True):
            if isinstance(k, slice):
                start, stop, step = k.indices(n)
                if step != 1 or stop <= start:
                    return None
            elif isinstance(k, (int, np.integer)):
                if not -n <= k < n:
                    return None  # out of range: the caller's path raises as xarray does
                start = int(k) + n if k < 0 else int(k)
                stop = start + 1
            else:
                return None
            i = start // c
            if (stop - 1) // c != i:
                return None
            idx.append(i)
            part.append(slice(start - i * c, stop - i * c) if isinstance(k, slice)
                        else start - i * c)
        return tuple(idx), tuple(part)

    def read_chunk(self, idx: tuple[int, ...], out: np.ndarray | None = None) -> np.ndarray:
        """The stored chunk ``idx`` as an array of the chunk shape.

        An edge chunk is whole, as Zarr stores it; a chunk never written holds the fill value;
        mask values are NaN.  With ``out`` (a C-contiguous, writeable array of the chunk shape
        and the native dtype: a whole stored chunk's place in a larger block) the chunk is
        decoded into it where its codec's header gives the size, else copied there, and ``out``
        is returned.
        """
        raw = self._read_bytes(idx)
        native = self.dtype.newbyteorder("=")
        if raw is None:
            if out is None:
                return self._masked(np.full(self.chunks, self.fill_value, dtype=native))
            out[...] = self.fill_value
            return self._masked(out, in_place=True)
        into = (out.reshape(-1) if out is not None and self.order == "C"
                and self.dtype.isnative else None)
        arr = self._decode(raw, into)
        if arr.size != math.prod(self.chunks):
            raise ValueError(f"chunk {self.key_of(idx)} decodes to {arr.size} elements, the "
                             f"array's chunk shape {self.chunks} holds {math.prod(self.chunks)}")
        if out is not None:
            if arr is not into:
                out[...] = arr.reshape(self.chunks, order=self.order)  # type: ignore[call-overload]
            return self._masked(out, in_place=True)
        arr = arr.reshape(self.chunks, order=self.order)  # type: ignore[call-overload]
        if not arr.dtype.isnative:
            arr = arr.astype(native)
        return self._masked(arr)

    def _read_bytes(self, idx: tuple[int, ...]) -> bytes | None:
        """The stored bytes of chunk ``idx``; None for a chunk never written.

        A local store is read with one unbuffered ``open``/``readall`` (about half the time of
        ``LocalFileSystem.cat_file`` on a 1 MB chunk); any other filesystem through fsspec.
        """
        fs, root = self._filesystem()
        path = f"{root}/{self.key_of(idx)}"
        try:
            if self._local:
                with open(path, "rb", buffering=0) as f:
                    return f.readall()
            return fs.cat_file(path)
        except FileNotFoundError:
            return None

    def _decode(self, raw: bytes, into: np.ndarray | None = None) -> np.ndarray:
        """The chunk's stored bytes decoded, as a flat array of the stored dtype.

        Where the last codec's own header says the chunk decodes to exactly the chunk's size
        (Zstd's frame content size, Blosc's header), it decodes straight into ``into`` (a flat
        array of the chunk's size, returned) or a new array (numcodecs' ``out=``), which is
        writeable and needs no further copy.  numcodecs fills such an array without checking
        that the data fill all of it, so every other case (no size in the header, another
        size: a damaged chunk) decodes into its own buffer, whose size the caller checks.
        """
        if not self.codecs:
            return np.frombuffer(raw, dtype=self.dtype)
        buf: Any = raw
        for codec in reversed(self.codecs[1:]):
            buf = codec.decode(buf)
        last, n = self.codecs[0], math.prod(self.chunks)
        if _decoded_nbytes(last, buf) == n * self.dtype.itemsize:
            out = into if into is not None else np.empty(n, dtype=self.dtype)
            last.decode(buf, out=out)
            return out
        return np.frombuffer(last.decode(buf), dtype=self.dtype)

    def _masked(self, arr: np.ndarray, in_place: bool = False) -> np.ndarray:
        if not self.mask:
            return arr
        hit = np.zeros(arr.shape, bool)
        for m in self.mask:
            hit |= arr == m
        if hit.any():
            if not in_place:
                arr = np.array(arr, copy=True)
            arr[hit] = np.nan
        return arr

    def span_of(self, key: Any) -> list[tuple[int, int]] | None:
        """``(start, stop)`` of every axis of ``key``, a tuple of step-1 slices; else None."""
        key = key if isinstance(key, tuple) else (key,)
        if len(key) != len(self.shape):
            return None
        out = []
        for k, n in zip(key, self.shape, strict=True):
            if not isinstance(k, slice):
                return None
            start, stop, step = k.indices(n)
            if step != 1 or stop <= start:
                return None
            out.append((start, stop))
        return out

    def read_region(self, span: list[tuple[int, int]]) -> np.ndarray:
        """The region ``span`` (``(start, stop)`` per axis), assembled from its stored chunks.

        They are read one at a time, so a dask chunk may span several stored chunks: memory is
        the region plus one stored chunk.
        """
        ranges = [range(a // c, (b - 1) // c + 1) for (a, b), c in zip(span, self.chunks,
                                                                         strict=True)]
        out = np.empty(tuple(b - a for a, b in span), dtype=self.dtype.newbyteorder("="))
        for idx in itertools.product(*ranges):
            src, dst = [], []
            for i, (a, b), c in zip(idx, span, self.chunks, strict=True):
                lo, hi = max(a, i * c), min(b, (i + 1) * c)
                src.append(slice(lo - i * c, hi - i * c))
                dst.append(slice(lo - a, hi - a))
            place = out[tuple(dst)]
            if place.shape == self.chunks and place.flags.c_contiguous:
                # the whole stored chunk is one contiguous run of the block (blocks coarser
                # along the first axis only): decoded in place, no copy
                self.read_chunk(idx, out=place)
            else:
                place[...] = self.read_chunk(idx)[tuple(src)]
        return out

    def read(self, key: Any) -> np.ndarray | None:
        """``key`` read from its stored chunk, or from the stored chunks it spans.

        None when ``key`` is not a plain selection (step-1 slices, or ints inside one chunk):
        the caller then reads it its own way.
        """
        where = self.chunk_of(key)
        if where is None:
            span = self.span_of(key)
            return None if span is None else self.read_region(span)
        idx, part = where
        chunk = self.read_chunk(idx)
        got = chunk[part]
        if (isinstance(got, np.ndarray) and got.shape == chunk.shape
                and got.flags.c_contiguous and got.flags.writeable):
            return got  # the whole chunk, freshly decoded: no copy
        # else a copy: 0-d for an all-int key (as numpy gives), C order, writeable, and not a
        # view that keeps the whole chunk alive
        return np.array(got, order="C")


def v3_layout(meta: Any, dtype: np.dtype) -> tuple[np.dtype, list[Any], str, str] | None:
    """How a Zarr v3 array's chunks are stored, where numcodecs can do what its codecs do.

    ``(chunk dtype with the bytes codec's byte order, the bytes-to-bytes codecs as numcodecs,
    key prefix, key separator)``; None for an array-to-array codec or another serializer
    first, a codec numcodecs does not implement, or a chunk key encoding other than
    ``default`` and ``v2``.
    """
    from zarr.codecs import BytesCodec

    codecs = list(meta.codecs)
    if not codecs or not isinstance(codecs[0], BytesCodec):
        return None  # an array-to-array filter or another serializer
    endian = codecs[0].endian
    stored = dtype.newbyteorder(("<" if endian.value == "little" else ">")
                                if endian is not None else "=")
    rest = [numcodec(c) for c in codecs[1:]]
    if any(c is None for c in rest):
        return None
    encoding = meta.chunk_key_encoding
    sep = str(getattr(encoding, "separator", "/"))
    name = str(getattr(encoding, "name", ""))
    if name not in ("default", "v2"):
        return None
    return stored, rest, "c" + sep if name == "default" else "", sep


def chunk_reader(array: Any, var: Any, url: str,
                 storage_options: dict[str, Any] | None = None) -> ChunkReader | None:
    """A :class:`ChunkReader` for Zarr array ``array`` behind xarray variable ``var``.

    None where it would not give xarray's values exactly (see the module docstring).
    """
    meta = getattr(array, "metadata", None)
    if meta is None or getattr(array, "shards", None) is not None:
        return None
    dtype = getattr(array, "dtype", None)
    if not isinstance(dtype, np.dtype) or dtype.kind not in "fiu":
        return None
    if np.dtype(var.dtype) != dtype.newbyteorder("=") or var.ndim != array.ndim or not var.ndim:
        return None
    attrs = {**var.attrs, **var.encoding}
    if any(k in attrs for k in _DECODED):
        return None
    mask: list[float] = []
    for k in ("_FillValue", "missing_value"):
        for v in np.atleast_1d(attrs.get(k, [])):
            fv = float(v)
            if not math.isnan(fv):
                if dtype.kind != "f":
                    return None  # xarray would decode to float
                mask.append(fv)
    fmt = int(getattr(meta, "zarr_format", 0))
    if fmt == 3:
        layout = v3_layout(meta, dtype)
        if layout is None:
            return None
        stored, rest, prefix, sep = layout
        order = "C"
    elif fmt == 2:
        if getattr(meta, "filters", None):
            return None
        rest = [meta.compressor] if meta.compressor is not None else []
        stored, order = np.dtype(meta.dtype.to_native_dtype() if hasattr(meta.dtype,
                                 "to_native_dtype") else meta.dtype), str(meta.order)
        if stored.newbyteorder("=") != dtype.newbyteorder("="):
            return None
        sep, prefix = str(getattr(meta, "dimension_separator", ".") or "."), ""
    else:
        return None
    fill = array.fill_value
    if fill is None:
        fill = 0
    path = str(getattr(array, "path", "") or var.encoding.get("source", ""))
    base = url.rstrip("/")
    return ChunkReader(f"{base}/{path}" if path else base, dict(storage_options or {}),
                       tuple(int(s) for s in array.shape), tuple(int(c) for c in array.chunks),
                       stored, order, rest, fill, tuple(mask), prefix, sep)
