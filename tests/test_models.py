"""Models and bundles: features, prediction, save/load round trips, protocol, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_samples import twin
from test_train import TINY, run, site_data, trained

from xgpp.models import (
    BundleFormatError,
    FeatureConfig,
    MLPConfig,
    Model,
    TorchModel,
    load_model,
)
from xgpp.models.baselines import PModelBaseline, fit_sif_slopes
from xgpp.models.outputs import unwrap
from xgpp.train import PhaseConfig

torch.set_num_threads(1)


def chunk():
    """A small in-memory chunk of the twin drivers, as the prediction kernel sees it."""
    return twin().drivers.isel(time=slice(40, 43)).compute()


@pytest.mark.parametrize("kind", ["siftml", "sif-only", "pmodel"])
def test_every_model_keeps_the_model_contract(kind):
    """What xgpp.predict relies on, for a network, a SIF-slope model and the P-model."""
    from xgpp.errors import NotFoundError

    m = PModelBaseline() if kind == "pmodel" else trained(kind)
    for member in ("features", "predict_numpy", "check", "save"):
        assert member in vars(Model) and callable(getattr(m, member)), member
    assert set(m.input_units) == set(m.inputs) and len(m.inputs) == len(set(m.inputs))
    assert m.outputs and all(set(a) == {"units", "long_name"} for a in m.outputs.values())
    assert m.outputs["gpp"]["units"] == "gC m-2 d-1"
    ds = chunk()
    m.check(ds)
    with pytest.raises(NotFoundError, match=rf"no variable '{m.inputs[0]}'"):
        m.check(ds.drop_vars(m.inputs[0]))
    x, ok = m.features(ds, return_mask=True)
    assert ok.shape == (ds.sizes["time"] * ds.sizes["lat"] * ds.sizes["lon"],)
    assert x.dtype == np.float32 and len(x) == ok.sum() > 0
    y = m.predict_numpy(x)
    assert y.shape == (len(x), len(m.outputs)) and y.dtype == np.float32
    gpp = y[:, list(m.outputs).index("gpp")]
    assert np.isfinite(gpp).all() and (gpp >= 0).all() and gpp.max() > 0


def test_bundle_exposes_inputs_units_outputs_and_provenance():
    m = trained("siftml")
    assert m.inputs == ("tair", "vpd", "ppfd", "co2", "patm", "swc", "fapar", "lai", "nirv",
                        "igbp", "elevation")
    assert m.input_units["vpd"] == "Pa" and m.input_units["igbp"] == "1"
    assert m.outputs == {"gpp": {"units": "gC m-2 d-1",
                                 "long_name": "gross primary productivity of carbon"}}
    assert len(m.sha256) == 64 and m.id.startswith("siftml-")
    p = m.provenance
    assert p["seed"] == 0 and p["split"]["name"].startswith("site-kfold")
    assert {"torch", "xarray", "xbatcher"} <= set(p["versions"])
    assert p["data"]["drivers"]["sizes"]["lat"] == 36
    assert isinstance(m.module, torch.nn.Module)


def test_features_are_float32_in_stacked_time_lat_lon_order():
    m = trained("siftml")
    ds = chunk()
    x = m.features(ds)
    nt, ny, nx = ds.sizes["time"], ds.sizes["lat"], ds.sizes["lon"]
    assert x.shape == (nt * ny * nx, m.spec.n_features) and x.dtype == np.float32
    land = np.argwhere(np.isfinite(ds["fapar"].values) & (ds["igbp"].values > 0)[None])
    t, i, j = land[len(land) // 2]
    row = x[t * ny * nx + i * nx + j]
    want = (ds["tair"].values[t, i, j] - m.spec.mean["tair"]) / m.spec.std["tair"]
    assert row[0] == pytest.approx(want, rel=1e-5)
    names = m.spec.names
    assert row[names.index("sin_lat")] == pytest.approx(np.sin(np.deg2rad(ds.lat.values[i])),
                                                        abs=1e-6)
    assert row[names.index(f"igbp_{m.spec.names[-17 + int(ds.igbp.values[i, j])][5:]}")] == 1


def test_return_mask_drops_nan_rows_only():
    m = trained("siftml")
    ds = chunk()
    full = m.features(ds)
    x, valid = m.features(ds, return_mask=True)
    assert valid.shape == (full.shape[0],) and 0 < valid.sum() < valid.size
    np.testing.assert_array_equal(x, full[valid])
    assert np.isfinite(x).all()
    assert np.isnan(full[~valid][:, :9]).any(axis=1).all()


@pytest.mark.parametrize("url", ["local", "memory://xgpp-test/bundle"])
def test_bundle_round_trip_predicts_identically(tmp_path, url):
    url = str(tmp_path / "bundle") if url == "local" else url
    for method in ("siftml", "sif-only"):
        m = trained(method)
        m.save(url)
        loaded = load_model(url)
        assert type(loaded) is TorchModel and loaded.kind == m.kind
        assert loaded.sha256 == m.sha256 and loaded.id == m.id
        assert loaded.inputs == m.inputs and loaded.outputs == m.outputs
        assert loaded.provenance["seed"] == 0
        x, _ = m.features(chunk(), return_mask=True)
        np.testing.assert_array_equal(m.predict_numpy(x), loaded.predict_numpy(x))


def test_predict_is_batch_size_invariant():
    m = trained("siftml")
    x, _ = m.features(chunk(), return_mask=True)
    np.testing.assert_allclose(m.predict_numpy(x, batch_size=97), m.predict_numpy(x),
                               rtol=1e-5, atol=1e-5)


def test_default_batch_size_is_per_device_and_does_not_change_results():
    from xgpp.models.base import default_batch_size

    assert default_batch_size("cpu") < default_batch_size("cuda") == default_batch_size("cuda:1")
    m = trained("siftml")
    x, _ = m.features(chunk(), return_mask=True)
    x = np.tile(x, (-(-3 * default_batch_size("cpu") // len(x)), 1))  # several default batches
    np.testing.assert_allclose(m.predict_numpy(x), m.predict_numpy(x, batch_size=len(x)),
                               rtol=1e-5, atol=1e-5)


def test_mixed_precision_is_close_but_not_float32():
    m = trained("siftml")
    x, _ = m.features(chunk(), return_mask=True)
    exact = m.predict_numpy(x)
    half = m.predict_numpy(x, precision="bfloat16")
    assert half.dtype == np.float32 and half.shape == exact.shape
    err = np.abs(half - exact)
    assert err.max() > 0  # autocast really ran in bfloat16
    assert err.max() < 0.05 * np.ptp(exact) + 0.05  # bfloat16 has ~3 significant digits
    with pytest.raises(ValueError, match="precision='float8'.*float32"):
        m.predict_numpy(x, precision="float8")
    with pytest.raises(ValueError, match="batch_size must be a positive"):
        m.predict_numpy(x, batch_size=-1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_without_a_gpu_is_a_clear_error():
    m = trained("siftml")
    x, _ = m.features(chunk(), return_mask=True)
    with pytest.raises(RuntimeError, match="no CUDA GPU.*device='auto'"):
        m.predict_numpy(x, device="cuda")


def test_device_copy_follows_the_weights_and_is_not_pickled():
    import copy
    import pickle

    m = copy.deepcopy(trained("siftml"))  # the weights are edited below
    first = m._module_on("meta")  # any non-CPU device takes the device-copy path
    assert m._module_on("meta") is first  # copied once, then reused
    with torch.no_grad():
        next(m.module.parameters()).add_(1.0)  # weights trained or edited in place
    assert m._module_on("meta") is not first
    assert pickle.loads(pickle.dumps(m))._on_device == {}


@pytest.mark.requires_gpu
def test_cuda_forward_with_pinned_overlapped_batches_matches_cpu():
    m = trained("siftml")
    x, _ = m.features(chunk(), return_mask=True)
    # several batches, so the side-stream prefetch of batch i+1 overlaps batch i
    gpu = m.predict_numpy(x, device="cuda", batch_size=max(1, len(x) // 5))
    np.testing.assert_allclose(gpu, m.predict_numpy(x), rtol=1e-4, atol=1e-4)
    assert np.isfinite(m.predict_numpy(x, device="cuda", precision="float16")).all()


@pytest.mark.requires_gpu
def test_cuda_forward_from_many_threads_reusing_staging_buffers():
    from concurrent.futures import ThreadPoolExecutor

    m = trained("siftml")
    x, _ = m.features(chunk(), return_mask=True)
    cpu = m.predict_numpy(x)
    # each thread: a large call, then smaller ones reusing (views of) its pinned buffers
    parts = [slice(0, len(x)), slice(0, len(x) // 3), slice(len(x) // 4, len(x) // 2)] * 4

    def run(sl):
        return m.predict_numpy(x[sl], device="cuda", batch_size=max(1, len(x) // 7))

    with ThreadPoolExecutor(4) as pool:
        for sl, got in zip(parts, pool.map(run, parts), strict=True):
            np.testing.assert_allclose(got, cpu[sl], rtol=1e-4, atol=1e-4)


def test_sif_only_uses_per_igbp_slopes():
    m = trained("sif-only")
    conv = m.provenance["sif_conversion"]
    assert conv["global"] > 0 and len(conv["per_class"]) >= 3
    inner = unwrap(m.module)  # behind the GPP >= 0 softplus floor
    slopes = inner.slopes.numpy()
    x, _ = m.features(chunk(), return_mask=True)
    sif = inner.sif(torch.from_numpy(x)).detach().numpy()
    cls_ = x[:, -17:].argmax(1)
    raw = torch.from_numpy(slopes[cls_] * sif)
    floored = torch.nn.functional.softplus(raw, beta=10.0).numpy()
    np.testing.assert_allclose(m.predict_numpy(x)[:, 0], floored, rtol=1e-5, atol=1e-5)
    big = raw.numpy() > 2  # the floor is the identity well above 0
    np.testing.assert_allclose(m.predict_numpy(x)[big, 0], raw.numpy()[big], rtol=1e-5)


def test_fit_sif_slopes_recovers_known_slopes():
    rng = np.random.default_rng(0)
    cls_ = rng.integers(1, 5, 4000)
    sif = rng.uniform(0.1, 2, 4000)
    true = np.array([0, 10, 12, 14, 16.0])
    gpp = true[cls_] * sif
    slopes, info = fit_sif_slopes(sif, gpp, cls_, per_class=True, min_samples=10)
    np.testing.assert_allclose(slopes[1:5], true[1:], rtol=1e-9)
    g, _ = fit_sif_slopes(sif, gpp, cls_, per_class=False)
    assert np.unique(g).size == 1 and 10 < g[0] < 16


def test_embedding_and_feature_options_round_trip(tmp_path):
    cfg = TINY.replace(features=FeatureConfig(igbp="embedding", latlon=False, elevation=False),
                       net=MLPConfig(hidden=(16,), activation="relu", dropout=0.1))
    m = run("ec-only", config=cfg)
    assert m.inputs[-1] == "igbp" and "elevation" not in m.inputs
    assert unwrap(m.module).embedding.num_embeddings == 17
    m.save(str(tmp_path / "emb"))
    loaded = load_model(str(tmp_path / "emb"))
    x, _ = m.features(chunk(), return_mask=True)
    np.testing.assert_array_equal(m.predict_numpy(x), loaded.predict_numpy(x))


def test_pmodel_bundle_round_trip(tmp_path):
    m = PModelBaseline()
    m.save(str(tmp_path / "pm"))
    loaded = load_model(str(tmp_path / "pm"))
    assert isinstance(loaded, PModelBaseline) and loaded.id == m.id
    x, valid = m.features(chunk(), return_mask=True)
    y = loaded.predict_numpy(x)
    assert y.shape == (valid.sum(), 1) and np.isfinite(y).all()


def test_check_names_the_variable_units_and_dims():
    m = trained("siftml")
    ds = chunk()
    m.check(ds)
    with pytest.raises(KeyError, match="no variable 'fapar'"):
        m.check(ds.drop_vars("fapar"))
    bad = ds.copy()
    bad["vpd"] = bad["vpd"].assign_attrs(units="hPa")
    with pytest.raises(ValueError, match=r"'vpd'.*units 'hPa', expected 'Pa'"):
        m.check(bad)
    bad = ds.copy()
    bad["elevation"] = bad["elevation"].rename(lat="y")
    with pytest.raises(ValueError, match=r"'elevation'.*dims \('y', 'lon'\)"):
        m.check(bad)
    with pytest.raises(ValueError, match=r"features have shape"):
        m.predict_numpy(np.zeros((3, 5), np.float32))


def test_incompatible_or_damaged_bundles_are_refused(tmp_path):
    m = run("ec-only", config=TINY.replace(ec=PhaseConfig(max_epochs=1)))
    path = tmp_path / "b"
    m.save(str(path))
    meta = json.loads((path / "model.json").read_text())
    meta["format_version"] = 99
    (path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(BundleFormatError, match="format version 99"):
        load_model(str(path))
    m.save(str(path))
    meta = json.loads((path / "model.json").read_text())
    meta["sha256"] = "0" * 64
    (path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(BundleFormatError, match="modified or damaged"):
        load_model(str(path))
    with pytest.raises(BundleFormatError, match="no model.json"):
        load_model(str(tmp_path / "nothing"))


def test_site_samples_and_grid_give_identical_features():
    m = trained("siftml")
    s = site_data().isel(sample=slice(0, 50))
    xs = m.features(s)
    t = twin().drivers
    for k in (0, 17, 49):
        row = s.isel(sample=k)
        cell = t.sel(time=row.time.values, lat=row.cell_lat.values, lon=row.cell_lon.values)
        xc = m.features(cell.expand_dims(time=1, lat=1, lon=1).transpose(
            "time", "lat", "lon").compute())
        # drivers identical; lat/lon encodings differ by tower-vs-cell-centre only
        np.testing.assert_allclose(xs[k, :9], xc[0, :9], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["siftml", "ec-only", "sif-only", "pmodel"])
def test_gpp_is_never_negative_for_any_method(method):
    m = PModelBaseline() if method == "pmodel" else trained(method)
    x, _ = m.features(chunk(), return_mask=True)
    gpp = m.predict_numpy(x)[:, 0]
    assert np.isfinite(gpp).all() and gpp.min() >= 0.0
    if method == "pmodel":
        return
    # the floor is the softplus of the raw network output, in physical units
    raw_net = unwrap(m.module)
    with torch.inference_mode():
        raw = raw_net(torch.from_numpy(x))[:, 0].numpy().astype(np.float64)
    raw = raw * m.module.scale.item() + m.module.offset.item()
    expect = np.logaddexp(0.0, 10.0 * raw) / 10.0
    np.testing.assert_allclose(gpp, expect, rtol=1e-4, atol=1e-4)
