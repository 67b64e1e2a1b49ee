"""The direct chunk writer (xgpp/io/_chunkwrite.py) against zarr's own writes, byte for byte.

Every test writes the same data twice, once through zarr's ``Array.__setitem__`` and once
through :class:`~xgpp.io._chunkwrite.ChunkWriter`, into two arrays created alike, and compares
the stores' chunk files (which keys exist, and their bytes): over codecs, dtypes, byte orders,
edge chunks, chunks of fill value only, ``write_empty_chunks``, key encodings, the refusals, a
process cluster, moto S3 and ``memory://``; then :func:`xgpp.predict.write_prediction` with and
without the writer.
"""

from __future__ import annotations

import itertools
import os
import pickle
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, GzipCodec, TransposeCodec, ZstdCodec

import xgpp
from xgpp.io._chunkwrite import ChunkWriter, chunk_writer
from xgpp.predict import OUTPUT_COMPRESSORS

SHAPE, CHUNKS = (5, 7, 9), (2, 3, 4)  # edge chunks along every dimension


def _regions(shape=SHAPE, chunks=CHUNKS) -> Iterator[tuple[slice, ...]]:
    for idx in itertools.product(*[range(-(-s // c)) for s, c in zip(shape, chunks, strict=True)]):
        yield tuple(slice(i * c, min((i + 1) * c, s))
                    for i, c, s in zip(idx, chunks, shape, strict=True))


def _data(dtype: str, seed: int = 0) -> np.ndarray:
    """Random values with one chunk of fill value only (NaN for floats, 0 for ints)."""
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=SHAPE) * 50).astype(dtype) if np.dtype(dtype).kind == "f" else \
        rng.integers(1, 100, size=SHAPE).astype(dtype)
    x[0:2, 0:3, 0:4] = np.nan if np.dtype(dtype).kind == "f" else 0
    if np.dtype(dtype).kind == "f":
        x[2:4, 3:6, 4:8][x[2:4, 3:6, 4:8] > 0] = np.nan  # a chunk with some gaps
    return x


def _pair(url_a: str, url_b: str, storage_options: dict | None = None,
          **kw: Any) -> tuple[zarr.Array, zarr.Array]:
    kw = {"shape": SHAPE, "chunks": CHUNKS, "dtype": "f4", "fill_value": np.nan,
          "zarr_format": 3, **kw}
    return (zarr.create_array(url_a, storage_options=storage_options, **kw),
            zarr.create_array(url_b, storage_options=storage_options, **kw))


def _chunk_files(fs: Any, root: str) -> dict[str, bytes]:
    """Every file of the store but its metadata, by key relative to ``root``."""
    out = {}
    for path in fs.find(root):
        key = path[len(root.rstrip("/")) + 1:] if path.startswith(root.rstrip("/")) else path
        key = key.lstrip("/")
        if not key.endswith("zarr.json"):
            out[key] = fs.cat_file(path)
    return out


def _local(url: str) -> dict[str, bytes]:
    import fsspec

    return _chunk_files(fsspec.filesystem("file"), str(Path(url).resolve()))


def _without_mtime(chunks: dict[str, bytes]) -> dict[str, bytes]:
    """Gzip members with the MTIME field zeroed: zarr's and the writer's encodes of one chunk
    differ there when they fall in different seconds, and nowhere else."""
    for key, raw in chunks.items():
        assert raw[:3] == b"\x1f\x8b\x08", f"chunk {key} is not a gzip member"
    return {key: raw[:4] + bytes(4) + raw[8:] for key, raw in chunks.items()}


def _write_both(a: zarr.Array, b: zarr.Array, writer: ChunkWriter, x: np.ndarray) -> None:
    for reg in _regions(a.shape, a.chunks):
        a[reg] = x[reg]
        assert writer.write(reg, x[reg]), f"the writer refused region {reg}"


CODECS = {
    "blosc-lz4-shuffle (xgpp's output)": {"compressors": OUTPUT_COMPRESSORS},
    "blosc-zstd-bitshuffle": {"compressors": (BloscCodec(cname="zstd", clevel=3,
                                                         shuffle="bitshuffle"),)},
    "zstd (zarr's default)": {},
    "zstd checksum": {"compressors": (ZstdCodec(level=1, checksum=True),)},
    "gzip": {"compressors": (GzipCodec(level=1),)},
    "none": {"compressors": None},
}


@pytest.mark.parametrize("codec", list(CODECS))
@pytest.mark.parametrize("dtype", ["f4", "f8", "i2", "u1"])
def test_chunks_are_zarrs_bytes(tmp_path, codec, dtype):
    fill = np.nan if np.dtype(dtype).kind == "f" else 0
    a, b = _pair(str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr"), dtype=dtype,
                 fill_value=fill, **CODECS[codec])
    w = chunk_writer(b, str(tmp_path / "b.zarr"))
    assert w is not None
    x = _data(dtype)
    _write_both(a, b, w, x)
    want, got = _local(str(tmp_path / "a.zarr")), _local(str(tmp_path / "b.zarr"))
    assert sorted(got) == sorted(want)
    assert "c/0/0/0" not in got  # the chunk of fill value only is not written, as zarr does
    assert len(got) == 3 * 3 * 3 - 1
    if codec == "gzip":  # the gzip header's MTIME (bytes 4-7, RFC 1952) is the encoding second
        want, got = _without_mtime(want), _without_mtime(got)
    for key in want:
        assert got[key] == want[key], f"chunk {key} differs from zarr's bytes"
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "b.zarr"), mode="r")[:], x)


@pytest.mark.parametrize("dtype", ["f4", "f8", "i4"])
def test_big_endian_serializer_is_zarrs_bytes(tmp_path, dtype):
    fill = np.nan if np.dtype(dtype).kind == "f" else 0
    kw = {"dtype": dtype, "fill_value": fill, "serializer": BytesCodec(endian="big"),
          "compressors": OUTPUT_COMPRESSORS}
    a, b = _pair(str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr"), **kw)
    w = chunk_writer(b, str(tmp_path / "b.zarr"))
    assert w is not None and w.dtype.byteorder == ">"
    _write_both(a, b, w, _data(dtype, 1))
    assert _local(str(tmp_path / "b.zarr")) == _local(str(tmp_path / "a.zarr"))


def test_v2_chunk_key_encoding_is_zarrs_layout(tmp_path):
    kw = {"chunk_key_encoding": {"name": "v2", "separator": "."}}
    a, b = _pair(str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr"), **kw)
    w = chunk_writer(b, str(tmp_path / "b.zarr"))
    assert w is not None and w.key_of((1, 2, 0)) == "1.2.0"
    _write_both(a, b, w, _data("f4", 2))
    got = _local(str(tmp_path / "b.zarr"))
    assert "1.2.0" in got and got == _local(str(tmp_path / "a.zarr"))


def test_a_chunk_turned_to_fill_value_is_deleted_as_zarr_deletes_it(tmp_path):
    a, b = _pair(str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr"))
    w = chunk_writer(b, str(tmp_path / "b.zarr"))
    x = _data("f4", 3)
    _write_both(a, b, w, x)
    assert "c/1/1/1" in _local(str(tmp_path / "b.zarr"))
    empty = np.full((2, 3, 4), np.nan, "f4")
    reg = (slice(2, 4), slice(3, 6), slice(4, 8))
    a[reg] = empty
    assert w.write(reg, empty)
    got = _local(str(tmp_path / "b.zarr"))
    assert "c/1/1/1" not in got and got == _local(str(tmp_path / "a.zarr"))
    assert np.isnan(zarr.open_array(str(tmp_path / "b.zarr"), mode="r")[reg]).all()


def test_write_empty_chunks_true_writes_them_as_zarr_does(tmp_path):
    a, b = _pair(str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr"),
                 config={"write_empty_chunks": True})
    w = chunk_writer(b, str(tmp_path / "b.zarr"))
    assert w is not None and w.write_empty
    _write_both(a, b, w, _data("f4", 4))
    got = _local(str(tmp_path / "b.zarr"))
    assert "c/0/0/0" in got and got == _local(str(tmp_path / "a.zarr"))


def test_a_zero_fill_value_is_told_from_negative_zero_by_its_bits(tmp_path):
    a, b = _pair(str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr"), fill_value=0.0)
    w = chunk_writer(b, str(tmp_path / "b.zarr"))
    x = np.zeros(SHAPE, "f4")
    x[0:2, 0:3, 0:4] = -0.0  # not the fill value to zarr: stored
    x[2:4, 3:6, 4:8] = 7.0
    _write_both(a, b, w, x)
    got = _local(str(tmp_path / "b.zarr"))
    assert sorted(got) == ["c/0/0/0", "c/1/1/1"] and got == _local(str(tmp_path / "a.zarr"))
    assert np.signbit(zarr.open_array(str(tmp_path / "b.zarr"), mode="r")[0, 0, 0])


def test_no_partial_file_is_left_behind(tmp_path):
    _, b = _pair(str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr"))
    w = chunk_writer(b, str(tmp_path / "b.zarr"))
    for reg in _regions():
        w.write(reg, _data("f4", 5)[reg])
    names = [f for _, _, fs in os.walk(tmp_path / "b.zarr") for f in fs]
    assert names and not [f for f in names if f.endswith(".partial")]


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("kind", ["v2", "sharded", "transpose", "crc32c", "F order", "bool"])
def test_arrays_the_writer_cannot_write_give_none(tmp_path, kind):
    kw: dict[str, Any] = {
        "v2": {"zarr_format": 2},
        "sharded": {"shards": (4, 6, 8)},
        "transpose": {"filters": [TransposeCodec(order=(2, 1, 0))]},
        "crc32c": {"compressors": (Crc32cCodec(),)},
        "F order": {"config": {"order": "F"}},
        "bool": {"dtype": "bool", "fill_value": False},
    }[kind]
    arr = zarr.create_array(str(tmp_path / "x.zarr"), **{
        "shape": SHAPE, "chunks": CHUNKS, "dtype": "f4", "fill_value": np.nan,
        "zarr_format": 3, **kw})
    assert chunk_writer(arr, str(tmp_path / "x.zarr")) is None


@pytest.mark.parametrize("region, shape, dtype", [
    ((slice(1, 3), slice(0, 3), slice(0, 4)), (2, 3, 4), "f4"),  # off the chunk grid
    ((slice(0, 1), slice(0, 3), slice(0, 4)), (1, 3, 4), "f4"),  # part of a chunk
    ((slice(0, 4), slice(0, 3), slice(0, 4)), (4, 3, 4), "f4"),  # two chunks
    ((slice(4, 5), slice(6, 7), slice(8, 9)), (1, 1, 1), "f4"),  # the edge chunk, whole: ok
    ((slice(0, 2), slice(0, 3), slice(0, 4)), (2, 3, 4), "f8"),  # another dtype
    ((slice(0, 2), slice(0, 3), slice(0, 4, 2)), (2, 3, 2), "f4"),  # a step
])
def test_blocks_other_than_one_whole_chunk_are_refused_and_nothing_written(
        tmp_path, region, shape, dtype):
    _, b = _pair(str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr"))
    w = chunk_writer(b, str(tmp_path / "b.zarr"))
    block = np.ones(shape, dtype)
    ok = w.write(region, block)
    wrote = _local(str(tmp_path / "b.zarr"))
    if region[0] == slice(4, 5):
        assert ok and list(wrote) == ["c/2/2/2"]
    else:
        assert not ok and not wrote


# --------------------------------------------------------------------------- processes, remote


def test_writer_pickles_and_writes_on_a_process_cluster(tmp_path):
    pytest.importorskip("distributed")
    a, b = _pair(str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr"),
                 compressors=OUTPUT_COMPRESSORS)
    w = chunk_writer(b, str(tmp_path / "b.zarr"))
    w.write(next(_regions()), _data("f4", 6)[next(_regions())])  # opens its filesystem here
    clone = pickle.loads(pickle.dumps(w))
    assert clone._fs is None and not clone._dirs  # reopened where it is used
    x = _data("f4", 6)
    for reg in _regions():
        a[reg] = x[reg]
    with xgpp.cluster("local", n_workers=1, threads_per_worker=1, memory_limit="1GiB",
                      dashboard_address=None) as client:
        oks = client.gather([client.submit(lambda wr, r, v: wr.write(r, v), w, reg, x[reg],
                                           pure=False) for reg in _regions()])
    assert all(oks)
    assert _local(str(tmp_path / "b.zarr")) == _local(str(tmp_path / "a.zarr"))


def _remote_check(url_a: str, url_b: str, options: dict) -> None:
    import fsspec

    a, b = _pair(url_a, url_b, storage_options=options or None,
                 compressors=OUTPUT_COMPRESSORS)
    w = chunk_writer(b, url_b, options)
    assert w is not None
    x = _data("f4", 7)
    _write_both(a, b, w, x)
    # a chunk that held data and now holds only the fill value: deleted on the remote store
    first = next(_regions())
    for block in (np.ones((2, 3, 4), "f4"), np.full((2, 3, 4), np.nan, "f4")):
        a[first] = block
        assert w.write(first, block)
    fs, root_a = fsspec.core.url_to_fs(url_a, **options)
    _, root_b = fsspec.core.url_to_fs(url_b, **options)
    fs.invalidate_cache()
    want, got = _chunk_files(fs, root_a), _chunk_files(fs, root_b)
    assert got == want and "c/0/0/0" not in got and len(got) == 26
    np.testing.assert_array_equal(
        zarr.open_array(url_b, mode="r", storage_options=options or None)[:],
        np.where(np.isnan(x), np.nan, x))


def test_s3_store_is_written_with_zarrs_bytes(s3_bucket):
    bucket, options = s3_bucket
    _remote_check(f"{bucket}/a.zarr", f"{bucket}/b.zarr", options)


def test_memory_store_is_written_with_zarrs_bytes():
    import fsspec

    name = f"xgpp-chunkwrite-{uuid.uuid4().hex[:8]}"
    try:
        _remote_check(f"memory://{name}/a.zarr", f"memory://{name}/b.zarr", {})
    finally:
        fs = fsspec.filesystem("memory")
        if fs.exists(f"/{name}"):
            fs.rm(f"/{name}", recursive=True)


# --------------------------------------------------------------------------- write_prediction


def test_write_prediction_writes_through_the_writer_with_zarrs_bytes(tmp_path, monkeypatch):
    from tests.test_predict import _model
    from xgpp.predict import write_prediction
    from xgpp.synthetic import make_world

    world = make_world(resolution=6.0, start="2019-01-01", end="2019-12-31", n_sites=10,
                       chunks={"time": 12, "lat": 15, "lon": 20})
    drivers = world.drivers.persist()
    model = _model(drivers)
    calls: list[bool] = []
    real = ChunkWriter.write

    def counted(self, region, block):
        ok = real(self, region, block)
        calls.append(ok)
        return ok

    monkeypatch.setattr(ChunkWriter, "write", counted)
    fast = str(tmp_path / "fast.zarr")
    write_prediction(drivers, model, fast, progress=False)
    n_chunks = 4 * 2 * 3  # 46 steps in chunks of 12 (an edge of 10), 30 x 60 in 15 x 20
    assert len(calls) == n_chunks and all(calls)
    monkeypatch.setattr("xgpp.predict.chunk_writer", lambda *a, **k: None)
    slow = str(tmp_path / "slow.zarr")
    write_prediction(drivers, model, slow, progress=False)
    assert len(calls) == n_chunks  # zarr wrote every chunk of the second store
    got = {k: v for k, v in _local(fast).items() if k.startswith("gpp/")}
    want = {k: v for k, v in _local(slow).items() if k.startswith("gpp/")}
    assert got and got == want
