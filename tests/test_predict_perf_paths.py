"""The prediction kernel's row-wise path (featurise and predict batch by batch, no chunk-sized
intermediates) gives the generic ``model.features`` path's outputs, for every feature encoding,
batch size and chunking (ocean-only, partial, whole cube): bit for bit at the default batch,
and within one unit in the last place at odd batch sizes (torch may round a small batch's last
bit differently at another memory alignment; the row-wise path always aligns); its features
are the generic path's bit for bit; it runs one forward pass per batch of valid rows."""

import numpy as np
import pytest
import torch

import xgpp.predict as P
from xgpp.models import MLP, OUTPUTS, FeatureConfig, FeatureSpec, MLPConfig, TorchModel
from xgpp.models.outputs import NonNegative
from xgpp.predict import predict
from xgpp.synthetic import make_world


@pytest.fixture(scope="module")
def drivers():
    w = make_world(resolution=6.0, start="2019-01-01", end="2019-12-31", n_sites=10,
                   chunks={"time": 12, "lat": 15, "lon": 20})
    return w.drivers.persist()


def _model(drivers, config: FeatureConfig, *, outputs=("gpp",), floor: bool = True):
    torch.manual_seed(0)
    spec = FeatureSpec.fit(config, drivers)
    net = MLPConfig(hidden=(32, 16))
    module = MLP(spec.n_features, len(outputs), net, embed_column=spec.embed_column)
    if floor:
        module = NonNegative(module, [3.0] * len(outputs), [2.0] * len(outputs), [0])
    return TorchModel(module, spec, outputs={o: OUTPUTS[o] for o in outputs},
                      output_scale=[3.0] * len(outputs), output_offset=[2.0] * len(outputs),
                      net=net)


class _Generic(TorchModel):
    """The same model with its own ``features``: the kernel takes the generic path."""

    def features(self, ds, *, return_mask=False):
        return super().features(ds, return_mask=return_mask)


def _generic(model: TorchModel) -> _Generic:
    g = _Generic.__new__(_Generic)
    g.__dict__.update(model.__dict__)
    return g


CONFIGS = {
    "default": FeatureConfig(),
    "embedding": FeatureConfig(igbp="embedding"),
    "no-static": FeatureConfig(igbp=None, latlon=False, elevation=False),
    "latlon-only": FeatureConfig(igbp=None, elevation=False),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("batch_size", [None, 97])
def test_rowwise_equals_generic(drivers, name, batch_size):
    model = _model(drivers, CONFIGS[name], outputs=("gpp", "sif"))
    generic = _generic(model)
    assert P._rowwise(model) and not P._rowwise(generic)
    for ds in (drivers, drivers.compute(), drivers.chunk({"time": 7, "lat": 11, "lon": 13})):
        fast = predict(ds, model, batch_size=batch_size)
        slow = predict(ds, generic, batch_size=batch_size)
        for o in ("gpp", "sif"):
            a, b = fast[o].values, slow[o].values
            assert a.dtype == np.float32
            np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
            assert np.isfinite(a).any() and np.isnan(a).any()  # land and ocean both present
            if batch_size is None:
                np.testing.assert_array_equal(a, b)  # every bit
            else:
                ok = ~np.isnan(a)
                np.testing.assert_array_max_ulp(a[ok], b[ok], maxulp=1)
                assert (a[ok] != b[ok]).mean() < 1e-3


def test_rowwise_features_are_the_generic_features_bit_for_bit(drivers):
    """The row-wise batches hold exactly ``model.features``' rows, in order."""
    model = _model(drivers, FeatureConfig())
    chunk = drivers.isel(time=slice(0, 12), lat=slice(15, 30), lon=slice(0, 20)).compute()
    x, _ = model.features(chunk, return_mask=True)
    seen = []
    original = TorchModel.predict_numpy

    def keep(self, rows, **kw):
        seen.append(np.array(rows))
        return original(self, rows, **kw)

    varying, static = P.check_inputs(chunk, model)
    arrays = [chunk[n].values for n in varying] + [chunk[n].values for n in static]
    flat = np.full((1, chunk["tair"].size), np.nan, np.float32)
    TorchModel.predict_numpy = keep
    try:
        P._predict_rows(model, arrays, varying, static, chunk["lat"].values,
                        chunk["lon"].values, flat, [0], device="cpu", batch_size=64,
                        precision="float32")
    finally:
        TorchModel.predict_numpy = original
    np.testing.assert_array_equal(np.concatenate(seen), x)


def test_rowwise_ocean_chunk_runs_no_model(drivers):
    model = _model(drivers, FeatureConfig())
    land = drivers["land_mask"].values.astype(bool)
    iy, ix = np.argwhere(~land)[0]  # an ocean cell, then the ocean block around it
    ocean = drivers.isel(lat=slice(iy, iy + 1), lon=slice(ix, ix + 1)).compute()
    assert not ocean["land_mask"].values.any()
    varying, static = P.check_inputs(ocean, model)
    arrays = [ocean[n].values for n in varying] + [ocean[n].values for n in static]
    flat = np.full((1, ocean["tair"].size), np.nan, np.float32)
    n = P._predict_rows(model, arrays, varying, static, ocean["lat"].values,
                        ocean["lon"].values, flat, [0], device="cpu", batch_size=None,
                        precision="float32")
    assert n == 0 and np.isnan(flat).all()


def test_rowwise_one_forward_pass_per_batch(drivers, monkeypatch):
    model = _model(drivers, FeatureConfig(), floor=False)
    chunk = drivers.isel(time=slice(0, 12), lat=slice(15, 30), lon=slice(0, 20)).compute()
    varying, static = P.check_inputs(chunk, model)
    arrays = [chunk[n].values for n in varying] + [chunk[n].values for n in static]
    _, valid = model.features(chunk, return_mask=True)
    n_valid = int(valid.sum())
    assert n_valid > 100
    calls = []
    original = TorchModel.predict_numpy

    def counting(self, x, **kw):
        calls.append(len(x))
        return original(self, x, **kw)

    monkeypatch.setattr(TorchModel, "predict_numpy", counting)
    flat = np.full((1, valid.size), np.nan, np.float32)
    bs = 50
    n = P._predict_rows(model, arrays, varying, static, chunk["lat"].values,
                        chunk["lon"].values, flat, [0], device="cpu", batch_size=bs,
                        precision="float32")
    assert n == len(calls) == -(-n_valid // bs)
    assert sum(calls) == n_valid and max(calls) == bs
    assert np.isfinite(flat[0, valid]).all() and np.isnan(flat[0, ~valid]).all()


def test_rowwise_time_varying_land_cover_is_transformed_per_row(drivers):
    """A land cover given per time step cannot be featurised once per grid cell: the kernel
    transforms such batches whole, and still gives the generic path's bits."""
    model = _model(drivers, FeatureConfig())
    chunk = drivers.isel(time=slice(0, 12), lat=slice(15, 30), lon=slice(0, 20)).compute()
    igbp = chunk["igbp"].broadcast_like(chunk["tair"]).copy()
    igbp[5:] = igbp[5:].where(igbp[5:] != igbp[5:].max(), 0)  # one class changes over time
    ds = chunk.assign(igbp=igbp.transpose("time", "lat", "lon"))
    varying, static = P.check_inputs(ds, model)
    assert "igbp" in varying
    fast = predict(ds, model)["gpp"].values
    slow = predict(ds, _generic(model))["gpp"].values
    assert np.isfinite(fast).any()
    np.testing.assert_array_equal(fast, slow)
    per_cell = predict(chunk, model)["gpp"].values
    assert not np.array_equal(fast, per_cell, equal_nan=True)  # the changed class is seen


def test_rowwise_no_cell_table_for_single_step_chunks(drivers, monkeypatch):
    """A chunk of one time step would make the per-cell feature table larger than its inputs
    (31 columns against 9 time-varying inputs per cell): such chunks transform batch by
    batch, with the same bits."""
    model = _model(drivers, FeatureConfig())
    ds = drivers.chunk({"time": 1})
    expected = predict(ds, _generic(model))["gpp"].values

    def refuse(*args, **kwargs):
        raise AssertionError("cell table built for a single-step chunk")

    monkeypatch.setattr(P, "_cell_features", refuse)
    got = predict(ds, model)["gpp"].values
    assert np.isfinite(got).any()
    np.testing.assert_array_equal(got, expected)
    with pytest.raises(AssertionError, match="cell table"):  # chunks of 12 steps use it
        predict(drivers, model)["gpp"].compute()
