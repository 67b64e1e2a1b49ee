"""Ensemble prediction in one pass: ``predict(ds, [m1, m2, ...])`` gives each output's mean and
population standard deviation over the members, lazily, from one read of every chunk."""

from __future__ import annotations

import json

import dask
import numpy as np
import pytest
import torch
import xarray as xr

import xgpp
import xgpp.predict as P
from xgpp.models import MLP, OUTPUTS, FeatureConfig, FeatureSpec, MLPConfig, TorchModel
from xgpp.models.moe import MMoE, MoEConfig
from xgpp.predict import predict, write_prediction
from xgpp.synthetic import make_world

torch.set_num_threads(1)

_GPP_STANDARD_NAME = "gross_primary_productivity_of_biomass_expressed_as_carbon"


def _mlp(drivers: xr.Dataset, *, outputs=("gpp",), seed: int = 0,
         features: FeatureConfig | None = None) -> TorchModel:
    torch.manual_seed(seed)
    spec = FeatureSpec.fit(features or FeatureConfig(), drivers)
    net = MLPConfig(hidden=(16, 16))
    return TorchModel(MLP(spec.n_features, len(outputs), net), spec,
                      outputs={o: OUTPUTS[o] for o in outputs},
                      output_scale=[3.0] * len(outputs), output_offset=[2.0] * len(outputs),
                      net=net)


def _moe(drivers: xr.Dataset, *, seed: int = 0) -> TorchModel:
    """A tiny multi-task MoE bundle, outputs in task order (sif, gpp), as training makes it."""
    torch.manual_seed(seed)
    spec = FeatureSpec.fit(FeatureConfig(), drivers)
    cfg = MoEConfig(n_experts=2, expert_hidden=(8,), tower_hidden=(4,))
    tasks = ("sif", "gpp")
    return TorchModel(MMoE(spec.n_features, tasks, cfg, embed_column=spec.embed_column), spec,
                      outputs={t: OUTPUTS[t] for t in tasks}, output_scale=[0.5, 3.0],
                      output_offset=[0.3, 2.0], kind="moe", net=cfg, method="moe",
                      extra={"tasks": list(tasks)})


@pytest.fixture(scope="module")
def drivers():
    world = make_world(resolution=10.0, start="2019-01-01", end="2019-06-30", n_sites=6,
                       chunks={"time": 8, "lat": 9, "lon": 18})
    return world.drivers.persist()


@pytest.fixture(scope="module")
def members(drivers):
    """Two seeds of one feature spec and a third member with other features."""
    return [_mlp(drivers, seed=0), _mlp(drivers, seed=1),
            _mlp(drivers, seed=2, features=FeatureConfig(latlon=False, elevation=False))]


@pytest.fixture(scope="module")
def singles(drivers, members):
    """Each member's own prediction on the cube in memory (members, time, lat, lon)."""
    cube = drivers.compute()
    return np.stack([predict(cube, m)["gpp"].values for m in members])


def test_mean_and_std_are_those_of_the_members(drivers, members, singles):
    out = predict(drivers, members)
    assert set(out.data_vars) == {"gpp", "gpp_std"}
    got, spread = out["gpp"].values, out["gpp_std"].values
    np.testing.assert_allclose(got, singles.mean(axis=0), rtol=1e-5, atol=1e-5, equal_nan=True)
    np.testing.assert_allclose(spread, singles.std(axis=0, ddof=0), rtol=1e-4, atol=1e-5,
                               equal_nan=True)
    land = (drivers["land_mask"] == 1).values
    assert np.isfinite(got[:, land]).mean() > 0.9
    assert np.isnan(got[:, ~land]).all() and np.isnan(spread[:, ~land]).all()
    assert (spread[np.isfinite(spread)] > 0).mean() > 0.9, "three seeds must disagree"
    assert got.dtype == spread.dtype == np.float32


def test_ensemble_attributes(drivers, members):
    out = predict(drivers.assign_attrs(history="2019-01-01T00:00:00Z: made the drivers"),
                  members)
    ids = [m.id for m in members]
    gpp, std = out["gpp"].attrs, out["gpp_std"].attrs
    assert gpp["units"] == std["units"] == "gC m-2 d-1"
    assert gpp["standard_name"] == _GPP_STANDARD_NAME and "standard_name" not in std
    assert gpp["long_name"] == OUTPUTS["gpp"]["long_name"]
    assert std["long_name"] == f"ensemble standard deviation of {OUTPUTS['gpp']['long_name']}"
    assert gpp["cell_methods"] == "time: mean realization: mean"
    assert std["cell_methods"] == "time: mean realization: standard_deviation"
    assert "ddof=0" in std["comment"]
    for attrs in (gpp, std, out.attrs):
        assert attrs["ensemble_size"] == 3
        assert json.loads(attrs["xgpp_model_ids"]) == ids
    assert json.loads(out.attrs["xgpp_model_sha256s"]) == [m.sha256 for m in members]
    # the union of the members' inputs: the third member reads no elevation, the others do
    assert set(json.loads(out.attrs["xgpp_model_inputs"])) == set(members[0].inputs)
    first, *rest = out.attrs["history"].splitlines()
    assert first.endswith(f"xgpp {xgpp.__version__} xgpp.predict with an ensemble of 3 models: "
                          + ", ".join(ids))
    assert rest == ["2019-01-01T00:00:00Z: made the drivers"]


def test_one_member_has_zero_spread_and_is_the_single_prediction(drivers, members):
    single = predict(drivers, members[0])["gpp"].values  # on the same chunks: bit for bit
    out = predict(drivers, members[:1])
    np.testing.assert_array_equal(out["gpp"].values, single)
    std = out["gpp_std"].values
    assert np.array_equal(np.isnan(std), np.isnan(single))
    assert (std[np.isfinite(std)] == 0).all()
    assert out.attrs["ensemble_size"] == 1
    # a tuple is an ensemble too
    np.testing.assert_array_equal(predict(drivers, (members[0],))["gpp"].values, single)


def test_building_the_ensemble_computes_nothing(drivers, members):
    def refuse(*args, **kwargs):
        raise AssertionError("ensemble predict computed something before being asked")

    with dask.config.set(scheduler=refuse):
        out = drivers.gpp.predict(members)
        downstream = out["gpp_std"].mean()  # still lazy downstream
    assert out["gpp"].chunks == out["gpp_std"].chunks == drivers["tair"].chunks
    assert isinstance(downstream.data, dask.array.Array)


@pytest.mark.parametrize("chunks", [{"time": 5, "lat": 7, "lon": 11},
                                    {"time": 23, "lat": 18, "lon": 36}])
def test_chunked_equals_in_memory(drivers, members, chunks):
    whole = predict(drivers.compute(), members)  # one block
    chunked = predict(drivers.chunk(chunks), members)
    for name in ("gpp", "gpp_std"):
        np.testing.assert_allclose(chunked[name].values, whole[name].values, rtol=1e-5,
                                   atol=1e-6, equal_nan=True)


def test_one_task_per_chunk_and_one_featurisation_per_spec(drivers, members, monkeypatch):
    tasks, featurised = [], []
    kernel, features = P._ensemble_block, TorchModel.features
    monkeypatch.setattr(P, "_ensemble_block",
                        lambda *a, **k: tasks.append(1) or kernel(*a, **k))
    monkeypatch.setattr(TorchModel, "features",
                        lambda self, *a, **k: featurised.append(self.id) or features(self, *a, **k))
    predict(drivers, members)["gpp"].compute(scheduler="sync")
    n = drivers["tair"].data.npartitions
    assert len(tasks) == n
    # members 0 and 1 share a feature spec, member 2 has its own: two featurisations a chunk
    assert len(featurised) == 2 * n


def test_accessor_takes_an_ensemble(drivers, members):
    a = drivers.gpp.predict(members[:2])
    b = predict(drivers, members[:2])
    xr.testing.assert_allclose(a.compute().drop_attrs(), b.compute().drop_attrs())
    drivers.gpp.check(members)  # every member fits


def test_moe_ensemble_gives_gpp_and_sif_with_spread(drivers):
    two_mlp = _mlp(drivers, outputs=("gpp", "sif"), seed=3)  # columns (gpp, sif)
    moes = [_moe(drivers, seed=0), _moe(drivers, seed=1)]  # columns (sif, gpp)
    ensemble = [*moes, two_mlp]
    out = predict(drivers, ensemble)
    assert set(out.data_vars) == {"gpp", "gpp_std", "sif", "sif_std"}
    cube = drivers.compute()
    each = [predict(cube, m) for m in ensemble]
    for name in ("gpp", "sif"):
        stack = np.stack([e[name].values for e in each])
        np.testing.assert_allclose(out[name].values, stack.mean(axis=0), rtol=1e-5, atol=1e-5,
                                   equal_nan=True)
        np.testing.assert_allclose(out[f"{name}_std"].values, stack.std(axis=0), rtol=1e-4,
                                   atol=1e-5, equal_nan=True)
        assert out[f"{name}_std"].attrs["units"] == OUTPUTS[name]["units"]
        assert "standard_name" not in out[f"{name}_std"].attrs
    assert "standard_name" not in out["sif"].attrs, "CF has no standard name for SIF"
    assert out["gpp"].attrs["standard_name"] == _GPP_STANDARD_NAME
    # a subset every member has
    assert set(predict(drivers, ensemble, outputs=["sif"]).data_vars) == {"sif", "sif_std"}


def test_mismatched_members_are_clear_errors(drivers, members):
    two = _mlp(drivers, outputs=("gpp", "sif"), seed=4)
    with pytest.raises(ValueError, match=rf"member 1 \({two.id}\) predicts \['gpp', 'sif'\].*"
                                         r"has extra \['sif'\].*outputs=\['gpp'\]"):
        predict(drivers, [members[0], two])
    with pytest.raises(ValueError, match=rf"member 0 \({members[0].id}\) has outputs "
                                         r"\['gpp'\]; \['sif'\] requested"):
        predict(drivers, [members[0], two], outputs=["sif"])
    # the outputs every member has are fine
    assert set(predict(drivers, [members[0], two], outputs=["gpp"]).data_vars) == {"gpp",
                                                                                   "gpp_std"}
    with pytest.raises(ValueError, match="ensemble is empty"):
        predict(drivers, [])
    with pytest.raises(ValueError, match=r"member 1 is a str \('models/siftml'\), not an xgpp "
                                         r"model"):
        predict(drivers, [members[0], "models/siftml"])
    with pytest.raises(ValueError, match=r"outputs=\[\] selects nothing"):
        predict(drivers, members, outputs=[])
    other_units = _mlp(drivers, seed=5)
    other_units.outputs["gpp"] = {**OUTPUTS["gpp"], "units": "kg m-2 s-1"}
    with pytest.raises(ValueError, match=r"units of 'gpp'.*member 1.*'kg m-2 s-1'"):
        predict(drivers, [members[0], other_units])


def test_a_member_whose_inputs_are_missing_is_named(drivers, members):
    # member 2 reads no elevation, so the first member to fail is member 0
    with pytest.raises(KeyError, match="'elevation'") as info:
        predict(drivers.drop_vars("elevation"), members[::-1])
    assert info.value.__notes__ == [f"in ensemble member 1 of 3 ({members[1].id})"]
    # without elevation, the member that does not need it still predicts alone
    assert set(predict(drivers.drop_vars("elevation"), members[2:]).data_vars) == {"gpp",
                                                                                   "gpp_std"}


def test_write_prediction_of_an_ensemble(tmp_path, drivers, members):
    url = str(tmp_path / "ens.zarr")
    sub = drivers.isel(time=slice(3, None))  # starts mid-chunk
    write_prediction(sub, members, url, progress=False)
    back = xr.open_zarr(url, consolidated=False)
    expect = predict(sub.compute(), members)
    assert back.attrs["xgpp_complete"] is True and back.attrs["ensemble_size"] == 3
    for name in ("gpp", "gpp_std"):
        np.testing.assert_allclose(back[name].values, expect[name].values, rtol=1e-5,
                                   atol=1e-6, equal_nan=True)
    assert back["gpp_std"].attrs["long_name"].startswith("ensemble standard deviation")
    fp = back.attrs["xgpp_fingerprint"]
    write_prediction(sub, members, url, progress=False)  # complete: a no-op
    assert xr.open_zarr(url, consolidated=False).attrs["xgpp_fingerprint"] == fp
    # another member set, or one member alone, is another prediction
    with pytest.raises(FileExistsError, match="overwrite"):
        write_prediction(sub, members[:2], url, progress=False)
    with pytest.raises(FileExistsError, match="overwrite"):
        write_prediction(sub, members[0], url, progress=False)
