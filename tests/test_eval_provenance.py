"""An evaluated number depends on what was scored and how, and on nothing else.

- Per-example estimates depend on (seed, example index, model, settings): not on the batch
  size, on which other examples are scored (``--limit``), on the API used (``flowvae.evaluate``
  or ``flowvae eval``).
- The eval cache is keyed on the checkpoint bytes actually loaded, the images actually scored,
  the code and the device: replaced data or a checkpoint replaced while loading never serve an
  old number.
- IWAE and AIS reduce and report in float64.
"""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest
import torch
from conftest import run_cli

import flowvae
from flowvae import checkpoint as checkpoint_module
from flowvae.estimators import ESTIMATORS, evaluate, importance_log_weights, iwae
from flowvae.evaluation import evaluate_run
from flowvae.noise import ExampleStreams, example_streams, randn
from flowvae.numerics import log_mean_exp
from flowvae.testing import random_linear_gaussian_vae

SMALL = ["model.hidden=[32]", "model.latent_dim=4", "train.epochs=1", "eval.samples=20"]


def _npz_images(seed: int, n: int = 60) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 6, 6), dtype=np.uint8)


@pytest.fixture(scope="module")
def npz_run(tmp_path_factory):
    """A tiny run trained on an .npz file the tests may later replace."""
    root = tmp_path_factory.mktemp("npzrun")
    data = root / "data"
    data.mkdir()
    np.savez(data / "set.npz", x=_npz_images(0))
    run = root / "run"
    data_keys = ["data.name=npz", f"data.root={data}", "data.file=set.npz", "data.binarize=threshold",
                 "data.valid_size=10", "data.test_size=20"]  # fmt: skip
    run_cli("train", "--run-dir", str(run), "--no-progress", *SMALL, *data_keys)
    return run, data


# ----------------------------------------------------------------------------- independence of batching

ESTIMATOR_SETTINGS = {
    "elbo": (3, {}),
    "iwae": (40, {"chunk": 7}),
    "ais": (3, {"steps": 6, "leapfrog": 2}),
}


@pytest.mark.parametrize("name", sorted(ESTIMATOR_SETTINGS))
def test_per_example_values_do_not_depend_on_the_batch_size(name):
    """Float64 linear-Gaussian model: the same draws per example whatever the batching, so the
    values agree to float64 rounding (relative 1e-12 on values of order 10)."""
    model = random_linear_gaussian_vae(posterior="iaf", flow_steps=1, flow_hidden=8, context_dim=4)
    model.eval()
    torch.manual_seed(1)
    x = model.decode_sample(model.sample_prior((48,)))
    samples, options = ESTIMATOR_SETTINGS[name]
    runs = {b: evaluate(model, x, name, samples, seed=5, batch_size=b, **options) for b in (1, 6, 48)}
    for b in (6, 48):
        torch.testing.assert_close(runs[b].per_example, runs[1].per_example, rtol=1e-12, atol=1e-10)
        for k, v in runs[1].per_example_diagnostics.items():
            torch.testing.assert_close(runs[b].per_example_diagnostics[k], v, rtol=1e-9, atol=1e-12,
                                       equal_nan=True)  # fmt: skip
    # and they are random: another seed gives other values
    other = evaluate(model, x, name, samples, seed=6, batch_size=6, **options).per_example
    assert not torch.allclose(other, runs[1].per_example)


def test_an_example_keeps_its_value_whatever_examples_are_scored_with_it():
    model = random_linear_gaussian_vae()
    model.eval()
    torch.manual_seed(2)
    x = model.decode_sample(model.sample_prior((30,)))
    whole = evaluate(model, x, "iwae", 25, seed=3, batch_size=10).per_example
    picked = torch.tensor([0, 7, 8, 21, 29])
    part = evaluate(model, x[picked], "iwae", 25, seed=3, batch_size=2, indices=picked).per_example
    torch.testing.assert_close(part, whole[picked], rtol=1e-12, atol=1e-10)


def test_the_chunking_of_samples_does_not_change_the_draws():
    model = random_linear_gaussian_vae()
    model.eval()
    x = model.decode_sample(model.sample_prior((5,)))
    a = evaluate(model, x, "iwae", 30, seed=1, chunk=30).per_example
    b = evaluate(model, x, "iwae", 30, seed=1, chunk=4).per_example
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-10)


def test_example_streams_draw_each_examples_numbers_from_its_own_generator():
    streams = ExampleStreams.seeded(0, [3, 9])
    with example_streams(streams):
        z = randn((4, 2, 5), batch_dim=1, dtype=torch.float64)
    alone = ExampleStreams.seeded(0, [9])
    with example_streams(alone):
        z9 = randn((4, 1, 5), batch_dim=1, dtype=torch.float64)
    torch.testing.assert_close(z[:, 1:], z9, rtol=0, atol=0)  # same process: bitwise
    assert not torch.equal(z[:, 0], z[:, 1])
    with pytest.raises(ValueError, match="examples"):
        with example_streams(streams):
            randn((4, 3, 5), batch_dim=1)


def test_eval_cli_and_the_python_api_give_the_same_per_example_values(npz_run):
    run_dir, _ = npz_run
    scored = evaluate_run(run_dir, "iwae", 15, cache=False, batch_size=7)
    run = flowvae.load_run(run_dir)
    test = flowvae.load_data(run.config.data).test
    direct = flowvae.evaluate(run.model, test, "iwae", samples=15, seed=1234, batch_size=20)
    # float32 model; the batching changes only the rounding of the same arithmetic
    torch.testing.assert_close(direct.per_example, scored.estimate.per_example, rtol=1e-5, atol=1e-4)


# ----------------------------------------------------------------------------- the cache


def test_replacing_the_data_file_misses_the_cache(npz_run, tmp_path):
    run_dir, data = npz_run
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    first = evaluate_run(run, "iwae", 10)
    assert not first.cached and evaluate_run(run, "iwae", 10).cached
    original = (data / "set.npz").read_bytes()
    try:
        np.savez(data / "set.npz", x=_npz_images(1))  # same name, shape and split sizes, other images
        replaced = evaluate_run(run, "iwae", 10)
        assert not replaced.cached
        assert not torch.allclose(replaced.estimate.per_example, first.estimate.per_example)
    finally:
        (data / "set.npz").write_bytes(original)
    assert evaluate_run(run, "iwae", 10).cached  # the original data hits its own entry again


def test_a_cache_entry_for_other_images_is_not_trusted(npz_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(npz_run[0], run)
    evaluate_run(run, "iwae", 10)
    for f in (run / "eval-cache").glob("*.npz"):
        with np.load(f, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        arrays["images"] = np.array("0" * 64)
        np.savez(f, **arrays)
    assert not evaluate_run(run, "iwae", 10).cached


def test_the_cache_key_holds_the_bytes_that_were_loaded(npz_run, tmp_path, monkeypatch):
    """A training process replacing best.pt between reading and hashing must not file the old
    weights' numbers under the new file's hash."""
    run = tmp_path / "run"
    shutil.copytree(npz_run[0], run)
    ckpt = torch.load(run / "best.pt", weights_only=True)
    state = ckpt["ema"] if ckpt.get("ema") is not None else ckpt["model"]
    for v in state.values():
        if v.is_floating_point():
            v.add_(0.05)
    new = tmp_path / "new.pt"
    torch.save(ckpt, new)
    real_load = torch.load

    def load_then_replace(*args, **kwargs):
        result = real_load(*args, **kwargs)
        shutil.copyfile(new, run / "best.pt")  # the file changes after the weights were read
        return result

    monkeypatch.setattr(checkpoint_module.torch, "load", load_then_replace)
    old_weights = evaluate_run(run, "iwae", 10)
    monkeypatch.setattr(checkpoint_module.torch, "load", real_load)
    new_weights = evaluate_run(run, "iwae", 10)
    assert not new_weights.cached  # the old weights' number was not filed under the new bytes
    assert not torch.allclose(new_weights.estimate.per_example, old_weights.estimate.per_example)
    assert new_weights.run.digest == hashlib.sha256((run / "best.pt").read_bytes()).hexdigest()


def test_compare_refuses_other_images_before_evaluating_anything(npz_run, tmp_path, monkeypatch):
    from flowvae import compare, evaluation

    run_dir, data = npz_run
    other_data = tmp_path / "data"
    other_data.mkdir()
    np.savez(other_data / "set.npz", x=_npz_images(2))
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    cfg = torch.load(other / "best.pt", weights_only=True)
    cfg["config"]["data"]["root"] = str(other_data)
    torch.save(cfg, other / "best.pt")
    calls = []
    monkeypatch.setattr(evaluation, "evaluate", lambda *a, **k: calls.append(1))
    with pytest.raises(ValueError, match="scores other test images"):
        compare.compare_runs([run_dir, other], samples=5, cache=False)
    assert calls == []


# ----------------------------------------------------------------------------- float64 to the report


def test_iwae_and_ais_report_float64_without_rounding_to_float32():
    model = random_linear_gaussian_vae(dtype=torch.float32)
    model.eval()
    x = model.decode_sample(model.sample_prior((4,)))
    with torch.no_grad(), example_streams(ExampleStreams.seeded(0, range(4))):
        weights = importance_log_weights(model, x, 50, 50)
    with torch.no_grad(), example_streams(ExampleStreams.seeded(0, range(4))):
        value = iwae(model, x, samples=50, chunk=50)
    assert value.dtype == torch.float64
    torch.testing.assert_close(value, log_mean_exp(weights.double(), dim=0), rtol=0, atol=0)
    for name, options in (("iwae", {}), ("ais", {"steps": 3, "leapfrog": 1})):
        log_p, _ = ESTIMATORS[name].estimate(model, x, 4, **options)
        assert log_p.dtype == torch.float64, name


@pytest.mark.parametrize(
    "options",
    [{"prior": "vampprior", "prior_components": 3}, {"prior": "flow", "prior_flow_hidden": 8},
     {"stochastic_layers": 2, "prior": "vampprior", "prior_components": 2, "posterior": "iaf"}],
    ids=["vampprior", "flow-prior", "two-layers"],
)  # fmt: skip
def test_learned_priors_draw_from_the_examples_streams_too(options):
    """AIS from the prior samples p(z) per example: with a learned prior too, the values do not
    depend on the batch size (float64 model: rounding only)."""
    from flowvae.config import ModelConfig
    from flowvae.model import build_model

    torch.manual_seed(0)
    cfg = ModelConfig(hidden=[16], latent_dim=3, flow_steps=1, flow_hidden=8, context_dim=4, **options)
    model = build_model(cfg, (1, 4, 4), binary=True).double().eval()
    x = torch.bernoulli(torch.full((6, 1, 4, 4), 0.4, dtype=torch.float64))
    ais = {"steps": 4, "leapfrog": 2}
    one = evaluate(model, x, "ais", 3, seed=2, batch_size=1, **ais).per_example
    six = evaluate(model, x, "ais", 3, seed=2, batch_size=6, **ais).per_example
    torch.testing.assert_close(one, six, rtol=1e-12, atol=1e-10)
