"""ds.gpp.predict: equality across chunkings, laziness, checks before compute, resumable
output, and a real prediction through a local cluster and a real Dask Gateway."""

import json
import os
import subprocess
import sys
import time

import dask
import numpy as np
import pytest
import torch
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xgpp
from xgpp.models import MLP, FeatureConfig, FeatureSpec, MLPConfig, TorchModel
from xgpp.predict import predict, write_prediction
from xgpp.synthetic import make_world


def _model(drivers: xr.Dataset, *, outputs=("gpp",), seed: int = 0) -> TorchModel:
    torch.manual_seed(seed)
    spec = FeatureSpec.fit(FeatureConfig(), drivers)
    net = MLPConfig(hidden=(32, 32))
    from xgpp.models import OUTPUTS

    return TorchModel(MLP(spec.n_features, len(outputs), net), spec,
                      outputs={o: OUTPUTS[o] for o in outputs},
                      output_scale=[3.0] * len(outputs), output_offset=[2.0] * len(outputs),
                      net=net)


@pytest.fixture(scope="module")
def world():
    return make_world(resolution=6.0, start="2019-01-01", end="2019-12-31", n_sites=10,
                      chunks={"time": 12, "lat": 15, "lon": 20})


@pytest.fixture(scope="module")
def drivers(world):
    return world.drivers.persist()


@pytest.fixture(scope="module")
def model(drivers):
    return _model(drivers)


@pytest.fixture(scope="module")
def reference(drivers, model):
    """The prediction on the whole cube in memory, one block."""
    return predict(drivers.compute(), model)["gpp"].values


def test_output_has_units_provenance_and_nan_ocean(drivers, model, reference):
    out = drivers.gpp.predict(model)
    gpp = out["gpp"]
    assert gpp.dims == ("time", "lat", "lon")
    assert gpp.attrs["units"] == "gC m-2 d-1" and gpp.attrs["long_name"]
    assert out.attrs["xgpp_model_sha256"] == model.sha256
    assert json.loads(out.attrs["xgpp_model_inputs"]) == list(model.inputs)
    assert out.attrs["xgpp_version"] == xgpp.__version__
    ocean = (drivers["land_mask"] == 0).values
    assert np.isnan(reference[:, ocean]).all()
    assert np.isfinite(reference[:, ~ocean]).mean() > 0.9


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(t=st.integers(5, 46), y=st.integers(4, 30), x=st.integers(8, 60))
def test_chunked_equals_in_memory(drivers, model, reference, t, y, x):
    chunked = drivers.chunk({"time": t, "lat": y, "lon": x})
    got = predict(chunked, model)["gpp"].values
    np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-5, equal_nan=True)


def test_predict_is_lazy_until_asked(drivers, model):
    def refuse(*args, **kwargs):
        raise AssertionError("predict computed something before being asked")

    with dask.config.set(scheduler=refuse):
        out = drivers.gpp.predict(model)
    assert out["gpp"].chunks == drivers["tair"].chunks


def test_subset_of_outputs_and_two_output_model(drivers):
    m2 = _model(drivers, outputs=("gpp", "sif"), seed=1)
    both = predict(drivers, m2)
    assert set(both.data_vars) == {"gpp", "sif"}
    assert both["sif"].attrs["units"] == "mW m-2 nm-1 sr-1"
    only = predict(drivers, m2, outputs=["sif"])
    np.testing.assert_array_equal(only["sif"].values, both["sif"].values)
    with pytest.raises(ValueError, match="outputs"):
        predict(drivers, m2, outputs=["npp"])


def test_missing_input_is_caught_before_compute(drivers, model):
    with pytest.raises(KeyError, match="'vpd'"):
        predict(drivers.drop_vars("vpd"), model)


def test_wrong_units_is_caught(drivers, model):
    bad = drivers.copy()
    bad["tair"] = (bad["tair"] + 273.15).assign_attrs(units="K")
    with pytest.raises(ValueError, match="'tair'.*'K'.*'degC'"):
        predict(bad, model)


def test_misaligned_chunks_is_caught(drivers, model):
    bad = drivers.copy()
    bad["vpd"] = bad["vpd"].chunk({"time": 5})
    with pytest.raises(ValueError, match="misaligned chunks"):
        predict(bad, model)


def test_descending_latitude_and_0_360_longitudes_are_caught(drivers, model):
    with pytest.raises(ValueError, match="ascending"):
        predict(drivers.isel(lat=slice(None, None, -1)), model)
    shifted = drivers.assign_coords(lon=(drivers.lon % 360)).sortby("lon")
    with pytest.raises(ValueError, match="0..360"):
        predict(shifted, model)


def test_write_prediction_round_trip_and_complete_flag(tmp_path, drivers, model, reference):
    url = str(tmp_path / "p.zarr")
    write_prediction(drivers, model, url, progress=False)
    back = xr.open_zarr(url, consolidated=False)
    assert back.attrs["xgpp_complete"] is True
    import zarr

    (codec,) = zarr.open_array(f"{url}/gpp", mode="r").compressors
    assert (codec.cname.value, codec.shuffle.value) == ("lz4", "shuffle")
    np.testing.assert_allclose(back["gpp"].values, reference, rtol=1e-5, atol=1e-5)
    # running again is a no-op; another model refuses to overwrite silently
    write_prediction(drivers, model, url, progress=False)
    with pytest.raises(FileExistsError, match="overwrite"):
        write_prediction(drivers, _model(drivers, seed=5), url, progress=False)


def test_write_prediction_of_a_subset_starting_mid_chunk(tmp_path, drivers, model, reference):
    sub = drivers.isel(time=slice(5, None), lat=slice(3, None))  # chunks (7, 12, ...), (12, 15)
    url = str(tmp_path / "sub.zarr")
    write_prediction(sub, model, url, progress=False)
    back = xr.open_zarr(url, consolidated=False)
    assert back.attrs["xgpp_complete"] is True
    np.testing.assert_allclose(back["gpp"].values, reference[5:, 3:], rtol=1e-5, atol=1e-5)


def test_corrupt_input_chunk_is_named_and_the_store_stays_incomplete(tmp_path, world, model):
    from xgpp._chunks import UnreadableChunkError

    src = str(tmp_path / "drivers.zarr")
    world.drivers.to_zarr(src, zarr_format=3, consolidated=False)
    chunk = tmp_path / "drivers.zarr" / "vpd" / "c" / "1" / "0" / "2"
    raw = bytearray(chunk.read_bytes())
    raw[8:40] = b"\xff" * 32
    chunk.write_bytes(bytes(raw))
    url = str(tmp_path / "p.zarr")
    with pytest.raises(UnreadableChunkError,
                       match=r"variable 'vpd' at time 2019-04.*\(Zarr chunk c/1/0/2\).*re-write"):
        write_prediction(xgpp.open_cube(src), model, url, progress=False)
    assert xr.open_zarr(url, consolidated=False).attrs["xgpp_complete"] is False
    # a subset (as --start/--bbox make) still names the store's own chunk
    sub = xgpp.open_cube(src).isel(time=slice(6, None), lon=slice(20, None))
    with pytest.raises(UnreadableChunkError, match=r"\(Zarr chunk c/1/0/2\)"):
        write_prediction(sub, model, str(tmp_path / "sub.zarr"), progress=False)


def test_two_predictions_on_other_grids_do_not_share_graph_keys(drivers, model, reference):
    shifted = drivers.assign_coords(lon=drivers.lon - 3.0)
    a, b = dask.compute(predict(drivers, model)["gpp"], predict(shifted, model)["gpp"])
    np.testing.assert_allclose(a.values, reference, rtol=1e-5, atol=1e-5)
    assert not np.allclose(a.values, b.values, equal_nan=True)


def test_precision_is_recorded_and_part_of_the_store_identity(tmp_path, drivers, model,
                                                              reference):
    lazy = predict(drivers, model, precision="bfloat16")
    assert lazy.attrs["xgpp_precision"] == "bfloat16"
    np.testing.assert_allclose(lazy["gpp"].values, reference, atol=0.05 * np.nanmax(reference))
    url = str(tmp_path / "p.zarr")
    write_prediction(drivers, model, url, progress=False)
    # a mixed-precision run is not the float32 store: no silent mix of the two
    with pytest.raises(FileExistsError, match="overwrite"):
        write_prediction(drivers, model, url, precision="bfloat16", progress=False)
    with pytest.raises(ValueError, match="precision='half'"):
        predict(drivers, model, precision="half")
    with pytest.raises(ValueError, match="device='tpu'.*'cuda:N'"):
        predict(drivers, model, device="tpu")


_RESUME_SCRIPT = """
import sys, time, xgpp
from xgpp.predict import write_prediction
from xgpp.models import load_model
import xgpp.predict as P
ds = xgpp.open_cube(sys.argv[1])
model = load_model(sys.argv[2])
original = P._predict_block
def slow(*a, **k):
    time.sleep(0.4)
    return original(*a, **k)
P._predict_block = slow
write_prediction(ds, model, sys.argv[3], progress=False)
"""


def test_resume_after_kill_gives_identical_store(tmp_path, world, drivers, model):
    import zarr

    src = str(tmp_path / "drivers.zarr")
    world.drivers.chunk({"time": 4, "lat": 30, "lon": 60}).to_zarr(src, zarr_format=3, consolidated=False)
    model_dir = str(tmp_path / "model")
    model.save(model_dir)
    url = str(tmp_path / "resumed.zarr")
    script = tmp_path / "run.py"
    script.write_text(_RESUME_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script), src, model_dir, url], env=env)
    try:
        deadline = time.time() + 120
        done = []
        while time.time() < deadline and len(done) < 2:
            time.sleep(0.2)
            if os.path.exists(os.path.join(url, "zarr.json")):
                done = zarr.open_group(url, mode="r").attrs.get("xgpp_done_slabs", [])
        assert len(done) >= 2, "the run never got part-way"
    finally:
        proc.kill()
        proc.wait()
    attrs = dict(zarr.open_group(url, mode="r").attrs)
    assert attrs["xgpp_complete"] is False, "killed before the end: must not claim completeness"
    n_slabs = len(xgpp.open_cube(src).chunks["time"])
    assert len(attrs["xgpp_done_slabs"]) < n_slabs

    from xgpp.models import load_model

    loaded = load_model(model_dir)
    cube = xgpp.open_cube(src)
    write_prediction(cube, loaded, url, progress=False)  # resumes
    fresh = str(tmp_path / "fresh.zarr")
    write_prediction(cube, loaded, fresh, progress=False)
    a, b = xr.open_zarr(url, consolidated=False), xr.open_zarr(fresh, consolidated=False)
    assert a.attrs["xgpp_complete"] is True
    # each run writes its own CF history line (its own time); everything else is identical
    assert a.attrs.pop("history") and b.attrs.pop("history")
    xr.testing.assert_identical(a.compute(), b.compute())


def test_every_metadata_write_keeps_done_slabs_and_their_counts_together(
        tmp_path, drivers, model, zarr_metadata_saves):
    """A kill can land between any two writes of the store's zarr.json: each must be whole.

    zarr's ``attrs.update`` writes once per key; a run killed between the done-slabs write
    and the counts write left a slab done without its count (and a resumed store short of it).
    """
    write_prediction(drivers, model, str(tmp_path / "p.zarr"), progress=False)
    marks = [a for a in zarr_metadata_saves if a.get("xgpp_done_slabs")]
    assert len(marks) >= len(drivers.chunks["time"]), "one metadata write a finished slab"
    for attrs in marks:
        assert {str(i) for i in attrs["xgpp_done_slabs"]} == set(attrs["xgpp_valid_counts"]), attrs


def test_resume_recomputes_a_slab_marked_done_without_its_count(tmp_path, drivers, model):
    """A store left by the per-key attribute writes (slab done, count missing) resumes whole."""
    import zarr

    url, fresh = str(tmp_path / "p.zarr"), str(tmp_path / "fresh.zarr")
    write_prediction(drivers, model, fresh, progress=False)
    write_prediction(drivers, model, url, progress=False)
    group = zarr.open_group(url, mode="r+")
    counts = dict(group.attrs["xgpp_valid_counts"])
    del counts["1"]
    group.update_attributes({"xgpp_complete": False, "xgpp_done_slabs": [0, 1],
                             "xgpp_valid_counts": {"0": counts["0"]}})
    t0, n = drivers.chunks["time"][0], drivers.chunks["time"][1]
    zarr.open_array(f"{url}/gpp", mode="r+")[t0:t0 + n] = np.nan  # as a killed run left it
    write_prediction(drivers, model, url, progress=False)
    a, b = xr.open_zarr(url, consolidated=False), xr.open_zarr(fresh, consolidated=False)
    assert a.attrs.pop("history") and b.attrs.pop("history")
    assert a.attrs["xgpp_valid_counts"] == b.attrs["xgpp_valid_counts"]
    xr.testing.assert_identical(a.compute(), b.compute())


def test_predict_on_local_cluster_matches(drivers, model, reference):
    with xgpp.cluster("local", n_workers=1, threads_per_worker=2,
                      dashboard_address=":0") as client:
        got = client.compute(drivers.gpp.predict(model)["gpp"].data).result()
    np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-5, equal_nan=True)


@pytest.mark.requires_gateway
def test_prediction_through_a_real_gateway(gateway_server, drivers, model, reference):
    _, options = gateway_server
    data = drivers.compute()  # workers of the gateway get the data through the graph
    with xgpp.cluster("gateway", n_workers=1, **options) as client:
        got = client.compute(data.gpp.predict(model)["gpp"].data).result()
    np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-5, equal_nan=True)


def test_resume_refuses_a_store_written_from_other_inputs_on_the_same_grid(tmp_path, drivers,
                                                                             model):
    url = str(tmp_path / "p.zarr")
    write_prediction(drivers, model, url, progress=False)
    warmer = drivers.assign(tair=drivers["tair"] + 2.0)  # same grid, chunks, model
    with pytest.raises(FileExistsError, match="inputs"):
        write_prediction(warmer, model, url, progress=False)
    # other output scaling of the same weights is another model too
    rescaled = _model(drivers)
    rescaled.output_scale = rescaled.output_scale * 2
    with pytest.raises(FileExistsError, match="overwrite"):
        write_prediction(drivers, rescaled, url, progress=False)


def test_mixed_in_memory_and_dask_inputs_follow_the_dask_chunks(drivers, model, reference):
    mixed = drivers.assign(tair=drivers["tair"].compute())  # tair numpy, the rest dask
    assert mixed["tair"].chunks is None
    out = predict(mixed, model)["gpp"]
    assert out.chunks == drivers["vpd"].chunks
    np.testing.assert_allclose(out.values, reference, rtol=1e-5, atol=1e-5)


def test_empty_requests_are_clear_errors(drivers, model):
    from xgpp.workflows import subset

    with pytest.raises(ValueError, match=r"outputs=\[\] selects nothing.*\['gpp'\]"):
        predict(drivers, model, outputs=[])
    with pytest.raises(ValueError, match=r"bbox='100,1,110,2' holds no grid cell.*lat"):
        subset(drivers, bbox="100,1,110,2")
    with pytest.raises(ValueError, match=r"no lon points"):
        predict(drivers.isel(lon=slice(0, 0)), model)


def test_torch_threads_of_the_caller_are_restored(drivers, model):
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        predict(drivers.isel(time=slice(0, 2)), model)["gpp"].compute(scheduler="sync")
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_all_nan_input_is_an_error_and_the_store_stays_incomplete(tmp_path, drivers, model):
    import zarr

    broken = drivers.assign(vpd=drivers["vpd"] * np.nan)
    url = str(tmp_path / "p.zarr")
    with pytest.raises(ValueError, match=r"every pixel of 'gpp' is NaN: inputs \['vpd'\]"):
        write_prediction(broken, model, url, progress=False)
    assert zarr.open_group(url, mode="r").attrs["xgpp_complete"] is False


def test_only_read_errors_are_probed_as_damage(drivers):
    from xgpp._chunks import naming_unreadable

    probed = []
    ds = drivers[["tair"]]
    import xgpp._chunks as C

    original = C.find_unreadable
    C.find_unreadable = lambda *a, **k: probed.append(a) or original(*a, **k)
    try:
        with pytest.raises(TypeError, match="a bug"), naming_unreadable(ds, ["tair"]):
            raise TypeError("a bug")
        with pytest.raises(PermissionError), naming_unreadable(ds, ["tair"]):
            raise PermissionError("AccessDenied: no credentials on this client")
        assert probed == []
        with pytest.raises(RuntimeError, match="decode"), naming_unreadable(ds, ["tair"]):
            raise RuntimeError("decode failed")  # every chunk reads here: original error
        assert len(probed) == 1
        import zlib

        with pytest.raises(zlib.error), naming_unreadable(ds, ["tair"]):
            raise zlib.error("Error -3 while decompressing data")  # a GZip/Zlib chunk
        assert len(probed) == 2
    finally:
        C.find_unreadable = original


def test_write_prediction_runs_the_model_once_per_chunk(tmp_path, drivers, model, monkeypatch):
    import xgpp.predict as P

    calls = []
    original = P._predict_block
    monkeypatch.setattr(P, "_predict_block", lambda *a, **k: calls.append(1) or original(*a, **k))
    write_prediction(drivers, model, str(tmp_path / "p.zarr"), progress=False)
    assert len(calls) == drivers["tair"].data.npartitions


def test_write_prediction_stores_every_output_of_a_two_output_model(tmp_path, drivers):
    two = _model(drivers, outputs=("gpp", "sif"))
    sub = drivers.isel(time=slice(5, None), lat=slice(3, None))  # mid-chunk start too
    url = str(tmp_path / "two.zarr")
    write_prediction(sub, two, url, progress=False)
    back = xr.open_zarr(url, consolidated=False)
    expect = predict(sub.compute(), two)
    assert back.attrs["xgpp_complete"] is True
    for name in ("gpp", "sif"):
        assert np.isfinite(back[name].values).any(), f"{name} was never written"
        np.testing.assert_allclose(back[name].values, expect[name].values, rtol=1e-5,
                                   atol=1e-5)


def test_resume_on_another_device_or_batch_size_continues_the_store(tmp_path, drivers, model):
    import zarr

    url = str(tmp_path / "p.zarr")
    write_prediction(drivers, model, url, progress=False)
    group = zarr.open_group(url, mode="r+")
    first = group.attrs["xgpp_fingerprint"]
    group.attrs.update({"xgpp_complete": False, "xgpp_done_slabs": [0]})  # as if interrupted
    # e.g. a smaller batch after running out of GPU memory, or the rest on a CPU node
    write_prediction(drivers, model, url, batch_size=257, device="cpu", progress=False)
    back = zarr.open_group(url, mode="r").attrs
    assert back["xgpp_complete"] is True and back["xgpp_fingerprint"] == first


# ----------------------------------------------------------------------------- CF attributes
_GPP_STANDARD_NAME = "gross_primary_productivity_of_biomass_expressed_as_carbon"


def _check_cf(ds: xr.Dataset, model, world) -> None:
    import re
    from datetime import UTC, datetime

    gpp = ds["gpp"]
    assert gpp.attrs["standard_name"] == _GPP_STANDARD_NAME
    # one vocabulary: the prediction's GPP and the twin world's GPP share their standard name
    assert gpp.attrs["standard_name"] == world.sites["gpp"].attrs["standard_name"]
    assert gpp.attrs["standard_name"] == world.truth["gpp"].attrs["standard_name"]
    assert gpp.attrs["units"] == "gC m-2 d-1" and gpp.attrs["long_name"]
    assert "standard_name" not in ds["sif"].attrs, "CF has no standard name for SIF"
    for name in ("gpp", "sif"):
        assert ds[name].attrs["cell_methods"] == "time: mean", name
    first = ds.attrs["history"].splitlines()[0]
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ): xgpp (\S+) xgpp\.predict with model "
                     r"(\S+)", first)
    assert m, f"history line {first!r}"
    when = datetime.strptime(m[1], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert abs((datetime.now(UTC) - when).total_seconds()) < 600
    assert (m[2], m[3]) == (xgpp.__version__, model.id)


def test_lazy_prediction_carries_cf_attributes(drivers, world):
    two = _model(drivers, outputs=("gpp", "sif"))
    out = predict(drivers.assign_attrs(history="2019-01-01T00:00:00Z: made the drivers"), two)
    assert out["gpp"].chunks is not None and out["sif"].chunks is not None  # still lazy
    _check_cf(out, two, world)
    assert out.attrs["history"].splitlines()[1:] == ["2019-01-01T00:00:00Z: made the drivers"]
    assert len(predict(drivers, two).attrs["history"].splitlines()) == 1


def test_written_store_carries_cf_attributes(tmp_path, drivers, world):
    two = _model(drivers, outputs=("gpp", "sif"))
    url = str(tmp_path / "cf.zarr")
    write_prediction(drivers, two, url, progress=False)
    back = xr.open_zarr(url, consolidated=False)
    assert back.attrs["xgpp_complete"] is True
    _check_cf(back, two, world)


def test_coarser_dask_chunks_predict_and_resume_as_stored_chunks_do(tmp_path, world, model):
    """open_cube(chunks=...) merges stored chunks into fewer dask tasks, each read by the
    direct chunk reader from the stored chunks it spans: the prediction and the resumable
    store are those of the stored chunking, and an interrupted store opened with coarser
    chunks still names its missing slabs by the stored time chunks."""
    import zarr

    from xgpp.errors import IncompleteStoreError

    src = str(tmp_path / "drivers.zarr")
    world.drivers.chunk({"time": 4, "lat": 15, "lon": 20}).to_zarr(src, zarr_format=3,
                                                                    consolidated=False)
    stored = xgpp.open_cube(src)
    coarse = xgpp.open_cube(src, chunks={"time": 12, "lat": -1})
    assert coarse["tair"].data.numblocks == (4, 1, stored["tair"].data.numblocks[2])
    assert stored["tair"].data.npartitions == 6 * coarse["tair"].data.npartitions  # 72, 12
    want = predict(stored, model)["gpp"].values
    fast = predict(coarse, model)["gpp"].values
    # other chunks batch other rows together: torch may round the last bit differently
    np.testing.assert_array_equal(np.isnan(fast), np.isnan(want))
    assert np.isfinite(want).any()
    np.testing.assert_array_max_ulp(fast[~np.isnan(want)], want[~np.isnan(want)], maxulp=2)
    a, b = str(tmp_path / "stored.zarr"), str(tmp_path / "coarse.zarr")
    write_prediction(stored, model, a, progress=False)
    write_prediction(coarse, model, b, progress=False)
    np.testing.assert_array_equal(xgpp.open_cube(a)["gpp"].values, want)
    np.testing.assert_array_equal(xgpp.open_cube(b)["gpp"].values, fast)
    # the coarse prediction's store: its slabs are the coarse time chunks (12 steps)
    assert zarr.open_array(f"{b}/gpp", mode="r").chunks[0] == 12
    group = zarr.open_group(b, mode="r+")
    done = list(group.attrs["xgpp_done_slabs"])
    group.attrs.update({"xgpp_complete": False, "xgpp_done_slabs": done[1:]})
    for chunks in (None, {"time": 48}):
        with pytest.raises(IncompleteStoreError, match=r"\[0:12\)") as err:
            xgpp.open_cube(b, chunks=chunks)
        assert err.value.missing == [(0, 12)]
