"""The direct chunk reader (xgpp.io._chunkread) against xarray, on real Zarr v2 and v3 stores.

Every store here is written by ``xarray.Dataset.to_zarr`` (or, for layouts xarray cannot ask
for, by zarr itself into an xarray-written group) into ``tmp_path``, on S3 (moto on loopback)
or in fsspec's memory filesystem.  ``xgpp.open_cube`` must give xarray's values bit for bit
(NaN-equal, same dtype), take the fast path where the module docstring says it can, and fall
back to xarray's path (no reader) where it cannot.
"""

from __future__ import annotations

import pickle
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import numcodecs
import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr
import zarr.codecs.numcodecs as zarr_numcodecs
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, GzipCodec, TransposeCodec, ZstdCodec

import xgpp
from xgpp.errors import CorruptChunkError
from xgpp.io._chunkread import ChunkReader, chunk_reader, numcodec
from xgpp.io._guard import GuardedArray

DIMS = ("time", "lat", "lon")
SHAPE = (7, 9, 6)
CHUNKS = (3, 4, 4)  # edge chunks along every dimension: 7 = 3+3+1, 9 = 4+4+1, 6 = 4+2
GRID = tuple(-(-n // c) for n, c in zip(SHAPE, CHUNKS, strict=True))  # (3, 3, 2) chunks
FORMATS = (2, 3)
#: zarr warns whenever a numcodecs codec is used in a v3 array (not in the v3 spec)
NUMCODECS_WARNING = "ignore:Numcodecs codecs are not in the Zarr version 3:UserWarning"


# --------------------------------------------------------------------------- helpers


def _coords() -> dict[str, Any]:
    return {"time": pd.date_range("2020-01-01", periods=SHAPE[0], freq="D"),
            "lat": np.linspace(-40.0, 40.0, SHAPE[1]),
            "lon": np.linspace(0.0, 50.0, SHAPE[2])}


def _field(seed: int = 0) -> np.ndarray:
    """float32 test field with a NaN and a few values of every sign and size."""
    a = np.random.default_rng(seed).standard_normal(SHAPE).astype("f4") * 10
    a[0, 0, 0] = np.nan
    a[6, 8, 5] = np.float32(1e30)
    a[3, 4, 1] = np.float32(-0.0)
    return a


def _ints(seed: int, dtype: str, high: int | None = None) -> np.ndarray:
    """Integers of ``dtype`` over its whole range (or ``-high..high``)."""
    info = np.iinfo(dtype)
    lo, hi = (info.min, info.max) if high is None else (-high, high)
    return np.random.default_rng(seed).integers(lo, hi, SHAPE, dtype=dtype, endpoint=True)


def _write(path: Path | str, data: dict[str, np.ndarray], fmt: int,
           encoding: dict[str, dict[str, Any]] | None = None,
           attrs: dict[str, dict[str, Any]] | None = None, **kw: Any) -> str:
    """``data`` as a dataset on DIMS, stored chunks CHUNKS, written with xarray's to_zarr."""
    ds = xr.Dataset({k: (DIMS, v) for k, v in data.items()}, coords=_coords())
    for k, a in (attrs or {}).items():
        ds[k].attrs.update(a)
    enc = {k: {"chunks": CHUNKS, **(encoding or {}).get(k, {})} for k in data}
    ds.to_zarr(str(path), mode="w", zarr_format=fmt, consolidated=fmt == 2, encoding=enc,
               **kw)
    return str(path)


def _reference(url: str, fmt: int, **storage_options: Any) -> xr.Dataset:
    kw: dict[str, Any] = {"storage_options": storage_options} if storage_options else {}
    return xr.open_zarr(url, consolidated=fmt == 2, **kw)


def guard_of(ds: xr.Dataset, name: str) -> GuardedArray:
    """The GuardedArray behind variable ``name`` of an open_cube dataset."""
    for value in ds[name].data.dask.values():
        value = getattr(value, "value", value)
        if isinstance(value, GuardedArray):
            return value
    raise AssertionError(f"no GuardedArray in the graph of {name!r}")


def assert_identical_values(got: np.ndarray, want: np.ndarray) -> None:
    """Same dtype (byte order included), shape and bits (NaN-equal; -0.0 is not 0.0)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    assert got.shape == want.shape, (got.shape, want.shape)
    if want.dtype.kind == "f":
        same_nan = np.isnan(got) == np.isnan(want)
        assert same_nan.all(), f"NaN at different places: {np.argwhere(~same_nan)[:5]}"
        ok = np.isnan(want) | (got.view(f"u{want.itemsize}") == want.view(f"u{want.itemsize}"))
        assert ok.all(), f"bits differ at {np.argwhere(~ok)[:5]}"
    else:
        np.testing.assert_array_equal(got, want)


def assert_like_xarray(url: str, fmt: int, names: list[str], *, fast: bool = True,
                       blocks: bool = False, **storage_options: Any) -> xr.Dataset:
    """open_cube's values (whole and, with ``blocks``, block by block) are xarray's; the fast
    path is used (or, with ``fast=False``, not)."""
    cube = xgpp.open_cube(url, **storage_options)
    ref = _reference(url, fmt, **storage_options)
    for name in names:
        reader = guard_of(cube, name).reader
        assert (reader is not None) is fast, (name, reader)
        assert cube[name].dtype == ref[name].dtype
        assert_identical_values(cube[name].values, ref[name].values)
        assert cube[name].data.chunks == ref[name].data.chunks
        if not blocks:
            continue
        # each dask block alone (one compute of all of them) is that part of xarray's values
        want = ref[name].values
        delayed = cube[name].data.to_delayed()
        for idx, got in zip(np.ndindex(*delayed.shape), dask.compute(*delayed.ravel()),
                            strict=True):
            where = tuple(slice(sum(c[:i]), sum(c[:i + 1]))
                          for i, c in zip(idx, cube[name].data.chunks, strict=True))
            assert_identical_values(got, want[where])
    return cube


# --------------------------------------------------------------------------- 1. layouts


@pytest.mark.parametrize("fmt", FORMATS)
def test_dtypes_and_fill_values_equal_xarray(tmp_path, fmt):
    a = _field()
    data = {
        "f32_nan": a,
        "f32_fill": np.where(a > 8, np.float32(-9999), a).astype("f4"),  # -9999 -> NaN
        "f32_missing": np.where(a < -8, np.float32(-1), a).astype("f4"),
        "f64": a.astype("f8") * np.pi,
        "f16": np.where(a > 1e4, np.float32(6e4), a).astype("f2"),
        "i8": _ints(1, "i1"),
        "i16": _ints(2, "i2"),
        "u16": _ints(3, "u2"),
        "u8": _ints(4, "u1"),
        "i64": _ints(5, "i8"),
    }
    assert (data["f32_fill"] == -9999).sum() > 5
    enc = {"f32_fill": {"_FillValue": -9999.0}, "f32_missing": {"missing_value": -1.0}}
    url = _write(tmp_path / "c.zarr", data, fmt, enc)
    cube = assert_like_xarray(url, fmt, list(data), blocks=True)
    # the masked values came back as NaN, as xarray gives them
    assert np.isnan(cube["f32_fill"].values[data["f32_fill"] == -9999]).all()
    assert np.isnan(cube["f32_missing"].values[data["f32_missing"] == -1]).all()
    assert guard_of(cube, "f32_fill").reader.mask == (-9999.0,)
    assert guard_of(cube, "i16").reader.mask == ()


@pytest.mark.parametrize("fmt", FORMATS)
def test_int_with_fill_value_falls_back_to_xarray(tmp_path, fmt):
    a = _ints(1, "i2", high=30)
    a[a > 15] = -99
    url = _write(tmp_path / "c.zarr", {"i": a}, fmt, {"i": {"_FillValue": -99}})
    cube = assert_like_xarray(url, fmt, ["i"], fast=False)
    assert cube["i"].dtype.kind == "f"  # xarray decodes it to float: not the stored dtype
    assert np.isnan(cube["i"].values[a == -99]).all()


V3_COMPRESSORS = {
    "zstd": [ZstdCodec(level=3)],
    "zstd_checksum": [ZstdCodec(level=1, checksum=True)],
    "blosc_lz4_shuffle": [BloscCodec(cname="lz4", shuffle="shuffle", typesize=4)],
    "blosc_zstd_bitshuffle": [BloscCodec(cname="zstd", shuffle="bitshuffle", typesize=4)],
    "blosc_noshuffle": [BloscCodec(cname="lz4", shuffle="noshuffle", typesize=4)],
    "gzip": [GzipCodec(level=5)],
    "numcodecs_lz4": "lz4",  # zarr.codecs.numcodecs.LZ4, made in the test
    "none": None,
}
V2_COMPRESSORS = {
    "zstd": [numcodecs.Zstd(level=3)],
    "blosc_lz4_shuffle": [numcodecs.Blosc(cname="lz4", shuffle=numcodecs.Blosc.SHUFFLE)],
    "blosc_zstd_bitshuffle": [numcodecs.Blosc(cname="zstd", shuffle=numcodecs.Blosc.BITSHUFFLE)],
    "gzip": [numcodecs.GZip(level=5)],
    "lz4": [numcodecs.LZ4()],
    "none": None,
}


def _compressors(fmt: int) -> dict[str, list[Any] | None]:
    table = V3_COMPRESSORS if fmt == 3 else V2_COMPRESSORS
    return {name: [zarr_numcodecs.LZ4()] if c == "lz4" else c for name, c in table.items()}


@pytest.mark.filterwarnings(NUMCODECS_WARNING)
@pytest.mark.parametrize("fmt", FORMATS)
def test_compressors_equal_xarray(tmp_path, fmt):
    """One variable pair (float32 with NaN, int32) per compressor, all in one store."""
    compressors = _compressors(fmt)
    data, enc = {}, {}
    for i, (name, codecs) in enumerate(compressors.items()):
        data[f"f_{name}"], data[f"i_{name}"] = _field(20 + i), _ints(20 + i, "i4")
        enc[f"f_{name}"] = enc[f"i_{name}"] = {"compressors": codecs}
    url = _write(tmp_path / "c.zarr", data, fmt, enc)
    cube = assert_like_xarray(url, fmt, list(data))
    for name, codecs in compressors.items():
        reader = guard_of(cube, f"f_{name}").reader
        assert len(reader.codecs) == (0 if codecs is None else 1), name


@pytest.mark.filterwarnings(NUMCODECS_WARNING)
def test_numcodec_maps_zarr_codecs_and_refuses_others():
    raw = np.arange(1000, dtype="f4").tobytes()
    for codec, want in [(ZstdCodec(level=2, checksum=True), numcodecs.Zstd),
                        (GzipCodec(level=4), numcodecs.GZip),
                        (zarr_numcodecs.LZ4(), numcodecs.LZ4)]:
        got = numcodec(codec)
        assert isinstance(got, want)
        assert bytes(got.decode(want().encode(raw) if want is not numcodecs.Zstd
                                else numcodecs.Zstd(checksum=True).encode(raw))) == raw
    blosc = numcodec(BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle", typesize=4))
    assert isinstance(blosc, numcodecs.Blosc)
    assert (blosc.cname, blosc.clevel, blosc.shuffle) == ("zstd", 3, numcodecs.Blosc.BITSHUFFLE)
    assert numcodec(Crc32cCodec()) is None
    assert numcodec(TransposeCodec(order=(1, 0))) is None
    assert numcodec(object()) is None


def test_big_endian_v3_serializer_equals_xarray(tmp_path):
    a = _field(3)
    data = {"f": a, "i": _ints(3, "i4")}
    enc = {k: {"serializer": BytesCodec(endian="big")} for k in data}
    url = _write(tmp_path / "c.zarr", data, 3, enc)
    assert zarr.open_array(f"{url}/f").metadata.codecs[0].endian.value == "big"
    cube = assert_like_xarray(url, 3, list(data), blocks=True)
    assert guard_of(cube, "f").reader.dtype == np.dtype(">f4")
    assert cube["f"].values.dtype.isnative


def _add_array(url: str, fmt: int, name: str, data: np.ndarray, *, write: bool | Any = True,
               **create: Any) -> zarr.Array:
    """An array made by zarr itself in the xarray-written group at ``url`` (layouts xarray's
    encoding cannot ask for), written whole or where ``write`` (a list of regions) says."""
    group = zarr.open_group(url, mode="a")
    attrs = {"_ARRAY_DIMENSIONS": list(DIMS)} if fmt == 2 else {}
    extra = {"dimension_names": DIMS} if fmt == 3 else {}
    arr = group.create_array(name, shape=data.shape, chunks=CHUNKS, attributes=attrs,
                             **extra, **create)
    for region in ([...] if write is True else write):
        arr[region] = data[region]
    if fmt == 2:
        zarr.consolidate_metadata(url, zarr_format=2)
    return arr


def test_v2_big_endian_and_fortran_order_equal_xarray(tmp_path):
    a = _field(4)
    url = _write(tmp_path / "c.zarr", {"base": a}, 2)
    _add_array(url, 2, "be", a, dtype=">f4", fill_value=np.nan)
    _add_array(url, 2, "be_int", _ints(4, "i4").astype(">i4"),
               dtype=">i4", fill_value=None)
    _add_array(url, 2, "fortran", a, dtype="f4", fill_value=np.nan, order="F")
    for name, want in [("be", ">f4"), ("be_int", ">i4"), ("fortran", "<f4")]:
        meta = zarr.open_array(f"{url}/{name}").metadata
        assert meta.dtype.to_native_dtype() == np.dtype(want)
    assert zarr.open_array(f"{url}/fortran").metadata.order == "F"
    cube = assert_like_xarray(url, 2, ["base", "be", "be_int", "fortran"], blocks=True)
    assert guard_of(cube, "fortran").reader.order == "F"


KEY_ENCODINGS = {  # variable: (zarr format, chunk_key_encoding, key of chunk (1, 2, 0))
    2: {"v2_slash": ({"name": "v2", "separator": "/"}, "1/2/0")},
    3: {"default_dot": ({"name": "default", "separator": "."}, "c.1.2.0"),
        "v2_dot": ({"name": "v2", "separator": "."}, "1.2.0"),
        "v2_slash": ({"name": "v2", "separator": "/"}, "1/2/0")},
}


@pytest.mark.parametrize("fmt", FORMATS)
def test_chunk_key_encodings_equal_xarray(tmp_path, fmt):
    table = KEY_ENCODINGS[fmt]
    data = {name: _field(30 + i) for i, name in enumerate(table)}
    enc = {name: {"chunk_key_encoding": e} for name, (e, _) in table.items()}
    url = _write(tmp_path / "c.zarr", data, fmt, enc)
    cube = assert_like_xarray(url, fmt, list(data))
    for name, (_, key) in table.items():
        assert (Path(url) / name / key).is_file(), name
        assert guard_of(cube, name).reader.key_of((1, 2, 0)) == key


@pytest.mark.parametrize("fmt", FORMATS)
def test_chunks_never_written_read_as_xarray_does(tmp_path, fmt):
    a = _field(6)
    empty = np.full(SHAPE, np.nan, "f4")
    empty[0:3, 0:4, 0:4] = a[0:3, 0:4, 0:4]   # one interior chunk
    empty[6:7, 8:9, 4:6] = a[6:7, 8:9, 4:6]   # the last (edge) chunk
    fill = np.where(np.isnan(empty), np.float32(-9999), empty).astype("f4")
    ints = np.zeros(SHAPE, "i2")
    ints[3:6, 4:8, 0:4] = 7                  # only chunk (1, 1, 0) is non-zero
    data = {"nan": empty, "fill": fill, "ints": ints}
    url = _write(tmp_path / "c.zarr", data, fmt, {"fill": {"_FillValue": -9999.0}},
                 write_empty_chunks=False)
    # chunks equal to the Zarr fill value were really skipped (v3 stores "fill" with a NaN
    # Zarr fill value: its -9999 chunks are written)
    for name in ("nan", "ints", "fill") if fmt == 2 else ("nan", "ints"):
        assert len(_chunk_files(url, name)) <= 2, name
    cube = assert_like_xarray(url, fmt, list(data), blocks=True)
    reader = guard_of(cube, "fill").reader
    assert np.isnan(reader.read_chunk((1, 1, 1))).all()  # never written: fill, then masked
    assert (guard_of(cube, "ints").reader.read_chunk((0, 0, 0)) == 0).all()


def _chunk_files(url: str, name: str) -> list[Path]:
    root = Path(url) / name
    meta = {".zarray", ".zattrs", "zarr.json"}
    return [p for p in root.rglob("*") if p.is_file() and p.name not in meta]


@pytest.mark.parametrize("fmt", FORMATS)
def test_fill_values_of_arrays_written_by_zarr_equal_xarray(tmp_path, fmt):
    """Arrays whose Zarr fill value is a number (v2: xarray masks it; v3: it does not), written
    in part, so chunks never written read as that fill value."""
    a = _field(7)
    url = _write(tmp_path / "c.zarr", {"base": a}, fmt)
    regions = [(slice(0, 3), slice(0, 4), slice(None)), (slice(6, 7), slice(8, 9), slice(None))]
    _add_array(url, fmt, "f_fill5", a, dtype="f4", fill_value=5.0, write=regions)
    _add_array(url, fmt, "f_fill0", a, dtype="f4", fill_value=0.0, write=regions)
    ints = _ints(7, "i4")
    names = ["base", "f_fill5", "f_fill0"]
    if fmt == 3:
        _add_array(url, fmt, "i_fill7", ints, dtype="i4", fill_value=7, write=regions)
        names.append("i_fill7")
    else:
        _add_array(url, fmt, "i_nofill", ints, dtype="i4", fill_value=None, write=regions)
        names.append("i_nofill")
    cube = assert_like_xarray(url, fmt, names, blocks=True)
    middle = cube["f_fill5"].values[3:6, 4:8]
    assert (np.isnan(middle).all() if fmt == 2 else (middle == 5).all())


# --------------------------------------------------------------------------- 2. selections


@pytest.mark.parametrize("fmt", FORMATS)
def test_sub_selections_equal_xarray(tmp_path, fmt):
    a = _field(8)
    fill = np.where(a > 9, np.float32(-9999), a).astype("f4")
    url = _write(tmp_path / "c.zarr", {"f": a, "fill": fill}, fmt,
                 {"fill": {"_FillValue": -9999.0}})
    cube, ref = xgpp.open_cube(url), _reference(url, fmt)
    assert guard_of(cube, "f").reader is not None
    selections = [
        {"time": slice(1, 3), "lat": slice(1, 3), "lon": slice(0, 2)},  # inside one chunk
        {"time": slice(6, 7), "lat": slice(8, 9)},                       # the edge chunk
        {"time": slice(2, 5), "lat": slice(3, 9), "lon": slice(1, 6)},   # spans chunks
        {"time": 4},
        {"time": 4, "lat": 5, "lon": 3},
        {"lat": slice(None, None, 2)},                                   # a step
        {"lat": slice(None, None, -1)},
        {"lat": [7, 0, 4], "lon": [5, 1]},                               # fancy
        {"time": slice(3, 3)},                                           # empty
    ]
    for sel in selections:
        for name in ("f", "fill"):
            assert_identical_values(cube[name].isel(sel).values, ref[name].isel(sel).values)


# --------------------------------------------------------------------------- 3. fallbacks


@pytest.mark.parametrize("fmt", FORMATS)
def test_cf_decoded_variables_fall_back(tmp_path, fmt):
    a = np.where(np.isnan(_field(9)), np.float32(0), _field(9) % 300)
    days = _ints(9, "i8", high=20000)
    data = {"scaled": a, "offset": a, "when": days, "plain": a}
    enc = {"scaled": {"scale_factor": 0.01, "dtype": "i2", "_FillValue": -32768},
           "offset": {"add_offset": 100.0}}
    attrs = {"when": {"units": "days since 2000-01-01", "calendar": "standard"}}
    url = _write(tmp_path / "c.zarr", data, fmt, enc, attrs)
    cube = xgpp.open_cube(url)
    assert np.issubdtype(cube["when"].dtype, np.datetime64)
    assert_like_xarray(url, fmt, ["scaled", "offset", "when"], fast=False)
    assert_like_xarray(url, fmt, ["plain"], fast=True)
    # chunk_reader itself refuses them, given the zarr array and the decoded variable
    group = zarr.open_group(url, mode="r")
    lazy = xr.open_dataset(url, engine="zarr", chunks=None, consolidated=fmt == 2)
    for name in ("scaled", "offset", "when"):
        assert chunk_reader(group[name], lazy[name].variable, url) is None, name
    assert isinstance(chunk_reader(group["plain"], lazy["plain"].variable, url), ChunkReader)


def test_datetime_values_written_by_xarray_fall_back(tmp_path):
    times = pd.date_range("2001-01-01", periods=int(np.prod(SHAPE)), freq="h").values
    url = _write(tmp_path / "c.zarr", {"t": times.reshape(SHAPE)}, 3)
    cube = assert_like_xarray(url, 3, ["t"], fast=False)
    assert np.issubdtype(cube["t"].dtype, np.datetime64)


def test_unsigned_attribute_falls_back(tmp_path):
    a = _ints(10, "i1")
    url = _write(tmp_path / "c.zarr", {"u": a}, 3, attrs={"u": {"_Unsigned": "true"}})
    cube = assert_like_xarray(url, 3, ["u"], fast=False)
    assert cube["u"].dtype == np.dtype("u1")


@pytest.mark.filterwarnings(NUMCODECS_WARNING)
def test_v3_codecs_the_reader_cannot_decode_fall_back(tmp_path):
    enc = {
        "sharded": {"shards": (6, 8, 4)},
        "transpose": {"filters": [TransposeCodec(order=(2, 1, 0))]},
        "delta": {"filters": [zarr_numcodecs.Delta(dtype="f4")]},
        "crc32c": {"compressors": [Crc32cCodec()]},
        "zstd_crc32c": {"compressors": [ZstdCodec(), Crc32cCodec()]},
    }
    data = {name: _field(40 + i) for i, name in enumerate(enc)}
    url = _write(tmp_path / "c.zarr", data, 3, enc)
    group = zarr.open_group(url, mode="r")
    assert group["sharded"].shards == (6, 8, 4)
    assert_like_xarray(url, 3, list(data), fast=False)


def test_v2_filters_fall_back(tmp_path):
    a = _field(12)
    url = _write(tmp_path / "c.zarr", {"f": a}, 2,
                 {"f": {"filters": [numcodecs.Delta(dtype="f4")]}})
    assert zarr.open_array(f"{url}/f").metadata.filters
    assert_like_xarray(url, 2, ["f"], fast=False)


# --------------------------------------------------------------------------- 4. damage


DAMAGE = {  # variable: (zarr format, compressors, bytes written over chunk (1, 1, 0))
    3: {"zstd": ([ZstdCodec()], b"not a zstd frame" * 8),
        "blosc": ([BloscCodec(cname="lz4", shuffle="shuffle", typesize=4)], b"\x00garbage" * 16),
        "gzip": ([GzipCodec()], b"not gzip" * 16),
        "raw": (None, b"short")},  # uncompressed, of the wrong length
    2: {"blosc": ([numcodecs.Blosc()], b"\x00garbage" * 16),
        "zstd": ([numcodecs.Zstd()], b"not a zstd frame" * 8),
        "raw": (None, b"short" * 3)},
}


@pytest.mark.parametrize("fmt", FORMATS)
def test_damaged_chunk_raises_corrupt_chunk_error_naming_it(tmp_path, fmt):
    table = DAMAGE[fmt]
    data = {name: _field(50 + i) for i, name in enumerate(table)}
    url = _write(tmp_path / "c.zarr", data, fmt,
                 {name: {"compressors": c} for name, (c, _) in table.items()})
    key = "c/1/1/0" if fmt == 3 else "1.1.0"
    for name, (_, damage) in table.items():
        chunk = Path(url) / name / key
        assert chunk.is_file()
        chunk.write_bytes(damage)
    cube, ref = xgpp.open_cube(url), _reference(url, fmt)
    for name in table:
        assert guard_of(cube, name).reader is not None, name
        with pytest.raises(CorruptChunkError) as info:
            _ = cube[name].values
        message = str(info.value)
        assert f"variable {name!r}" in message and f"{name}/{key}" in message, message
        assert url in message and "time 3:6, lat 4:8, lon 0:4" in message, message
        # only that block is damaged: a neighbour still reads as xarray reads it
        assert_identical_values(cube[name].data.blocks[1, 0, 0].compute(),
                                ref[name].data.blocks[1, 0, 0].compute())



@pytest.mark.parametrize("fmt", FORMATS)
def test_a_valid_chunk_of_the_wrong_size_is_damage_not_garbage(tmp_path, fmt):
    """A well-formed frame that decodes to fewer (or more) values than the chunk holds (a chunk
    copied from another array, a store rewritten with other chunks) must raise, never leave
    part of the chunk as uninitialised memory: numcodecs' ``decode(out=)`` does not check."""
    codecs = {3: {"zstd": [ZstdCodec()], "blosc": [BloscCodec(cname="lz4", typesize=4)],
                  "gzip": [GzipCodec()]},
              2: {"zstd": [numcodecs.Zstd()], "blosc": [numcodecs.Blosc()]}}[fmt]
    data = {name: _field(60 + i) for i, name in enumerate(codecs)}
    url = _write(tmp_path / "c.zarr", data, fmt, {n: {"compressors": c} for n, c in codecs.items()})
    key = "c/0/0/0" if fmt == 3 else "0.0.0"
    n = int(np.prod(CHUNKS))
    cube = xgpp.open_cube(url)
    for name in codecs:
        reader = guard_of(cube, name).reader
        assert reader is not None, name
        for size in (n - 1, n + 1):
            encoded = reader.codecs[0].encode(np.arange(size, dtype="f4"))
            (Path(url) / name / key).write_bytes(encoded)
            with pytest.raises(CorruptChunkError, match=f"{name}/{key}"):
                _ = cube[name][0:3, 0:4, 0:4].values


# --------------------------------------------------------------------------- 5. cluster


def test_reader_pickles_and_reads_on_a_process_cluster(tmp_path):
    pytest.importorskip("distributed")
    a = _field(14)
    fill = np.where(a > 9, np.float32(-9999), a).astype("f4")
    url = _write(tmp_path / "c.zarr", {"f": a, "fill": fill}, 3,
                 {"fill": {"_FillValue": -9999.0}})
    cube, ref = xgpp.open_cube(url), _reference(url, 3)
    reader = guard_of(cube, "fill").reader
    assert reader is not None
    reader.read((slice(0, 3), slice(0, 4), slice(0, 4)))  # opens its filesystem here
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._fs is None  # reopened where it is used
    whole = (slice(3, 6), slice(4, 8), slice(0, 4))
    assert_identical_values(clone.read(whole), ref["fill"].values[whole])
    # xgpp's own process cluster (a bare LocalCluster would leave distributed's
    # pre-spawn-environ in this process's os.environ for later clusters)
    with xgpp.cluster("local", n_workers=1, threads_per_worker=1, memory_limit="1GiB",
                      dashboard_address=None) as client:
        on_worker = client.submit(lambda r, k: r.read(k), reader, whole, pure=False).result()
        assert_identical_values(on_worker, ref["fill"].values[whole])
        for name in ("f", "fill"):
            got = client.compute(cube[name].sum(dim=("lat", "lon"), skipna=True).data).result()
            want = ref[name].sum(dim=("lat", "lon"), skipna=True).values
            assert_identical_values(got, want)
            whole_array = client.compute(cube[name].data).result()
            assert_identical_values(whole_array, ref[name].values)


# --------------------------------------------------------------------------- 6. remote


@pytest.mark.parametrize("fmt", FORMATS)
def test_s3_store_reads_through_the_fast_path(s3_bucket, fmt):
    bucket, options = s3_bucket
    url = f"{bucket}/c{fmt}.zarr"
    a = _field(15)
    sparse = np.full(SHAPE, np.nan, "f4")
    sparse[0:4, 0:5] = a[0:4, 0:5]
    data = {"sparse": sparse, "fill": np.where(a > 9, np.float32(-9999), a).astype("f4")}
    big = (4, 5, 6)  # 4 chunks (edges along time and lat): each is a request to moto
    _write(url, data, fmt, {"sparse": {"chunks": big},
                            "fill": {"chunks": big, "_FillValue": -9999.0}},
           storage_options=options, write_empty_chunks=False)
    cube = assert_like_xarray(url, fmt, list(data), **options)
    reader = guard_of(cube, "fill").reader
    assert reader.url == f"{url}/fill"
    assert reader.storage_options == options
    assert reader.chunks == big
    # the chunks never written are absent on S3 and read as the fill value
    import s3fs

    fs = s3fs.S3FileSystem(**options, skip_instance_cache=True)
    key = "c/1/1/0" if fmt == 3 else "1.1.0"
    assert not fs.exists(f"{url}/sparse/{key}")
    assert np.isnan(guard_of(cube, "sparse").reader.read_chunk((1, 1, 0))).all()


@pytest.fixture
def memory_url() -> Iterator[str]:
    import fsspec

    name = f"xgpp-chunkread-{uuid.uuid4().hex[:8]}"
    yield f"memory://{name}/c.zarr"
    fs = fsspec.filesystem("memory")
    if fs.exists(f"/{name}"):
        fs.rm(f"/{name}", recursive=True)


@pytest.mark.parametrize("fmt", FORMATS)
def test_memory_store_reads_through_the_fast_path(memory_url, fmt):
    a = _field(16)
    data = {"f": a, "fill": np.where(a > 9, np.float32(-9999), a).astype("f4")}
    _write(memory_url, data, fmt, {"fill": {"_FillValue": -9999.0}})
    cube = assert_like_xarray(memory_url, fmt, list(data))
    assert guard_of(cube, "f").reader.url == f"{memory_url}/f"


# --------------------------------------------------------------------------- 7. fast path taken


@pytest.mark.parametrize("fmt", FORMATS)
def test_reader_serves_plain_slices_inside_and_across_stored_chunks(tmp_path, fmt):
    a = _field(17)
    fill = np.where(a > 9, np.float32(-9999), a).astype("f4")
    url = _write(tmp_path / "c.zarr", {"f": a, "fill": fill}, fmt,
                 {"fill": {"_FillValue": -9999.0}})
    for name in ("f", "fill"):  # chunk (1, 1, 1) never written: spanning reads give the fill
        (tmp_path / "c.zarr" / name / ("1.1.1" if fmt == 2 else "c/1/1/1")).unlink()
    cube = xgpp.open_cube(url)
    guard = guard_of(cube, "f")
    reader = guard.reader
    stored = zarr.open_group(url, mode="r")["f"]
    for idx in np.ndindex(*GRID):
        whole = tuple(slice(i * c, min((i + 1) * c, n))
                      for i, c, n in zip(idx, CHUNKS, SHAPE, strict=True))
        got = reader.read(whole)
        assert isinstance(got, np.ndarray), idx
        assert_identical_values(got, stored[whole])
        assert_identical_values(guard[whole], stored[whole])
    inside = (slice(4, 5), slice(5, 7), slice(1, 3))
    assert reader.chunk_of(inside) == ((1, 1, 0), (slice(1, 2), slice(1, 3), slice(1, 3)))
    assert_identical_values(reader.read(inside), stored[inside])
    plain = GuardedArray(guard.var, guard.where, guard.name, guard.chunk_shape,
                         guard.zarr_format, None)
    spanning = [
        (slice(2, 4), slice(0, 4), slice(0, 4)),       # time 2:4 crosses chunks 0 and 1
        (slice(0, 3), slice(0, 9), slice(0, 4)),       # lat over all three, the edge included
        (slice(None), slice(None), slice(None)),       # the whole array
        (slice(1, 7), slice(3, 9), slice(2, 6)),       # partial chunks on every side
        (slice(0, 6), slice(0, 8), slice(0, 8)),       # lon stop past the end (clipped)
    ]
    for key in spanning:
        assert reader.chunk_of(key) is None, key
        got = reader.read(key)
        assert isinstance(got, np.ndarray), key
        assert got.flags.writeable and got.flags.c_contiguous
        assert_identical_values(got, plain[key])
        assert_identical_values(guard[key], plain[key])
    fguard = guard_of(cube, "fill")
    fplain = GuardedArray(fguard.var, fguard.where, fguard.name, fguard.chunk_shape,
                          fguard.zarr_format, None)
    for key in spanning:  # CF fill value masked to NaN across chunks as xarray masks it
        assert_identical_values(fguard.reader.read(key), fplain[key])
    others = [
        (slice(0, 3, 2), slice(0, 4), slice(0, 4)),    # a step
        (slice(0, 0), slice(0, 4), slice(0, 4)),       # empty
        (slice(0, 3), slice(0, 4)),                    # too few dimensions
        (np.array([0, 1]), slice(0, 4), slice(0, 4)),  # an array indexer
        (2, slice(0, 9), slice(0, 4)),                 # an int with a spanning slice
    ]
    for key in others:
        assert reader.read(key) is None, key
    # GuardedArray still gives xarray's values for those (xarray's path)
    for key in others[:4] + others[5:]:
        assert_identical_values(guard[key], stored[key])
    assert_identical_values(guard[others[4]], stored[others[4]])


def _guard_pair(tmp_path: Path, fmt: int) -> tuple[GuardedArray, GuardedArray]:
    """The GuardedArray of a variable with its fast reader, and the same without it (xarray's
    path only)."""
    url = _write(tmp_path / "c.zarr", {"f": _field(18)}, fmt)
    guard = guard_of(xgpp.open_cube(url), "f")
    assert guard.reader is not None
    plain = GuardedArray(guard.var, guard.where, guard.name, guard.chunk_shape,
                         guard.zarr_format, None)
    return guard, plain


@pytest.mark.parametrize("fmt", FORMATS)
def test_integer_keys_give_what_xarray_gives(tmp_path, fmt):
    """The reader serves int keys (``ChunkReader.chunk_of``); they must give xarray's result,
    shape included: an all-int key is a 0-d value, as in numpy and on the xarray path."""
    guard, plain = _guard_pair(tmp_path, fmt)
    for key in [(4, slice(0, 4), slice(0, 4)), (4, 5, slice(None)), (-1, -1, slice(4, 6))]:
        assert_identical_values(guard[key], plain[key])
    assert_identical_values(guard[(4, 5, 3)], plain[(4, 5, 3)])  # 0-d, not shape (1,)


@pytest.mark.parametrize("fmt", FORMATS)
def test_out_of_range_integer_keys_raise_as_xarray_does(tmp_path, fmt):
    """An int past the end must raise as xarray's path does, not read the padding of an edge
    chunk (time 7 lies in stored chunk 2, which holds only time 6; lat 9 in chunk 2, which
    holds only lat 8)."""
    guard, plain = _guard_pair(tmp_path, fmt)
    for key in [(7, 0, 0), (0, 9, slice(0, 4))]:
        try:
            want: Any = plain[key]
        except Exception as err:  # noqa: BLE001 - whatever xarray's path raises
            with pytest.raises(type(err)):
                guard[key]
        else:
            assert_identical_values(guard[key], want)


@pytest.mark.parametrize("fmt", FORMATS)
def test_reads_are_fresh_writeable_arrays(tmp_path, fmt):
    """Functions mapped over blocks may write into their input: what the reader returns must be
    writeable and its own (writing into one read never changes the next), whole chunk or part."""
    guard, plain = _guard_pair(tmp_path, fmt)
    whole = tuple(slice(0, c) for c in CHUNKS)
    part = (slice(1, 3), slice(0, 2), slice(1, 4))
    for key in (whole, part):
        got = guard[key]
        assert got.flags.writeable and got.flags.c_contiguous
        got[...] = 7.0
        assert_identical_values(guard[key], plain[key])


# --------------------------------------------------------------------------- 5. coarser chunks


@pytest.mark.parametrize("fmt", FORMATS)
def test_coarser_dask_chunks_read_whole_stored_chunks_as_xarray_does(tmp_path, fmt, monkeypatch):
    """open_cube(chunks=...) gives xarray's values block by block, every block assembled by the
    reader from the stored chunks it spans (xarray's path is never taken), chunks never
    written included."""
    a = _field(21)
    fill = np.where(a > 9, np.float32(-9999), a).astype("f4")
    url = _write(tmp_path / "c.zarr", {"f": a, "fill": fill}, fmt,
                 {"fill": {"_FillValue": -9999.0}})
    (tmp_path / "c.zarr" / "f" / ("0.1.0" if fmt == 2 else "c/0/1/0")).unlink()
    ref = _reference(url, fmt)
    for asked, want in [({"time": 6}, ((6, 1), (4, 4, 1), (4, 2))),
                        ({"time": -1, "lat": 8, "lon": 99}, ((7,), (8, 1), (6,)))]:
        cube = xgpp.open_cube(url, chunks=asked)
        for name in ("f", "fill"):
            assert cube[name].data.chunks == want
            guard = guard_of(cube, name)
            assert guard.reader is not None

            def refuse(*args: Any, **kw: Any) -> None:
                raise AssertionError("xarray's path read a block the reader should serve")

            with monkeypatch.context() as m:
                m.setattr(type(guard.var), "__getitem__", refuse)
                delayed = cube[name].data.to_delayed()
                blocks = dask.compute(*delayed.ravel(), scheduler="synchronous")
            full = ref[name].values
            for idx, got in zip(np.ndindex(*delayed.shape), blocks, strict=True):
                where = tuple(slice(sum(c[:i]), sum(c[:i + 1]))
                              for i, c in zip(idx, want, strict=True))
                assert_identical_values(got, full[where])


def test_chunks_that_cut_stored_chunks_warn_and_bad_chunks_raise(tmp_path):
    url = _write(tmp_path / "c.zarr", {"f": _field(22), "g": _field(23)}, 3)
    with pytest.warns(UserWarning, match=r"along 'time' dask chunks of 4 cut the stored chunks "
                                         r"of 3 \(of f, g\).*multiples"):
        cube = xgpp.open_cube(url, chunks={"time": 4})
    assert_identical_values(cube["f"].values, _reference(url, 3)["f"].values)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # multiples, and a chunk as long as the dimension
        xgpp.open_cube(url, chunks={"time": 6, "lat": 99})
    from xgpp.errors import InputError

    for bad, match in [({"depth": 2}, r"dimension 'depth'.*\['lat', 'lon', 'time'\]"),
                       ({"time": 0}, r"chunks\['time'\] must be a positive integer or -1 .*7"),
                       ({"time": 2.5}, r"got 2\.5"), ({"time": True}, r"got True"),
                       ([3], r"must map dimension names")]:
        with pytest.raises(InputError, match=match):
            xgpp.open_cube(url, chunks=bad)


def test_blocks_coarser_in_time_decode_in_place_for_every_layout(tmp_path, monkeypatch):
    """A block coarser along time only holds each whole stored chunk as one contiguous run, so
    the reader decodes it there (no copy); the values stay xarray's for big-endian, Fortran
    order, uncompressed, masked and never-written chunks, and a chunk decoding to the wrong
    size still raises rather than leaving part of the block uninitialised."""
    a = _field(23)
    fill = np.where(a > 9, np.float32(-9999), a).astype("f4")
    url = _write(tmp_path / "c.zarr", {"f": a, "fill": fill, "raw": a}, 2,
                 {"fill": {"_FillValue": -9999.0}, "raw": {"compressors": None}})
    _add_array(url, 2, "be", a, dtype=">f4", fill_value=np.nan)
    _add_array(url, 2, "fortran", a, dtype="f4", fill_value=np.nan, order="F")
    (tmp_path / "c.zarr" / "f" / "1.0.0").unlink()  # never written: the fill value in place
    names = ["f", "fill", "raw", "be", "fortran"]
    ref = _reference(url, 2)
    cube = xgpp.open_cube(url, chunks={"time": 6})
    in_place: list[str] = []
    decode = ChunkReader._decode

    def spy(self, raw, into=None):
        got = decode(self, raw, into)
        if into is not None and got is into:
            in_place.append(self.url.rsplit("/", 1)[-1])
        return got

    monkeypatch.setattr(ChunkReader, "_decode", spy)
    for name in names:
        assert guard_of(cube, name).reader is not None, name
        assert_identical_values(cube[name].values, ref[name].values)
    # the compressed native C-order arrays decode in place; the others are copied in
    assert {"f", "fill"} <= set(in_place) and not {"raw", "be", "fortran"} & set(in_place)
    reader = guard_of(cube, "f").reader
    n = int(np.prod(CHUNKS))
    (Path(url) / "f" / "0.0.0").write_bytes(reader.codecs[0].encode(np.arange(n - 1, dtype="f4")))
    with pytest.raises(CorruptChunkError, match="f/0.0.0"):
        _ = cube["f"][0:6, 0:4, 0:4].values
