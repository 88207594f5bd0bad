"""The public API: the README's Python example runs as written, and `import flowvae` exposes
what the README lists."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys

import torch
from conftest import ROOT

import flowvae


def _readme_python() -> str:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1, "the README has one Python example"
    return blocks[0]


def test_readme_python_example_runs(tmp_path):
    """... and runs again in the same folder (a researcher re-runs a script)."""
    script = tmp_path / "example.py"
    script.write_text(_readme_python())
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    for _ in range(2):
        cmd = [sys.executable, str(script)]
        p = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env)
        assert p.returncode == 0, p.stderr[-2000:]
    lines = p.stdout.strip().splitlines()
    assert lines[0].startswith("-log p(x) = ") and "on 250 test digits" in lines[0]
    assert math.isfinite(float(lines[-1])) and float(lines[-1]) > 0  # an nll in nats
    assert (tmp_path / "runs" / "digits-iaf" / "best.pt").is_file()


def test_public_names():
    import importlib

    for name in flowvae.__all__:
        assert hasattr(flowvae, name), name
    for name in ("VAE", "evaluate", "elbo", "iwae", "load_run", "fit", "posteriors", "ESTIMATORS"):
        assert name in flowvae.__all__
    # no package attribute shadows a submodule of the same name (`import flowvae.train as t`)
    for name in flowvae.__all__:
        try:
            module = importlib.import_module(f"flowvae.{name}")
        except ModuleNotFoundError:
            continue
        assert getattr(flowvae, name) is module, name
    assert set(flowvae.posteriors.POSTERIORS) >= {"diag", "iaf", "planar", "realnvp-aux"}


def test_own_modules_with_every_posterior_head():
    """A VAE assembled from a user's modules works with every registered head: one ELBO pass
    gives finite (B,) values and gradients reach the head."""
    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((6, 1, 4, 4), 0.4))
    for name, record in flowvae.posteriors.POSTERIORS.items():
        encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 10))
        decoder = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Unflatten(1, (1, 1, 4, 4)))
        head = record.build(10, 3, flow_steps=2, flow_hidden=8, context_dim=4)
        vae = flowvae.VAE(encoder, head, decoder, "bernoulli", shape=(1, 4, 4))
        value = flowvae.elbo(vae, x, samples=2)
        assert value.shape == (6,) and torch.isfinite(value).all(), name
        value.sum().backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters()), name


def test_vae_needs_a_shape_and_a_known_likelihood():
    import pytest

    q = flowvae.posteriors.Diagonal(4, 2)
    with pytest.raises(ValueError, match="image shape"):
        flowvae.VAE(torch.nn.Identity(), q, torch.nn.Identity(), "bernoulli")
    with pytest.raises(ValueError, match="unknown likelihood"):
        flowvae.VAE(torch.nn.Identity(), q, torch.nn.Identity(), "poisson", shape=(1, 2, 2))


def test_docstring_examples():
    """Every ``>>>`` example in the package's docstrings runs and shows what it says (doctest)."""
    import doctest
    import importlib
    import pkgutil

    failed, attempted = 0, 0
    for info in pkgutil.iter_modules(flowvae.__path__):
        if info.name == "__main__":
            continue
        module = importlib.import_module(f"flowvae.{info.name}")
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        failed += result.failed
        attempted += result.attempted
    assert failed == 0
    assert attempted >= 10  # the public API's examples are there


def test_a_decoder_of_the_wrong_shape_fails_once_with_the_expected_shape():
    """A decoder ending in (N, C, H, W) instead of (N, P, C, H, W) is refused by one ValueError that
    names the shape the likelihood needs (not a broadcasting error from inside the likelihood);
    the check runs on the first output only, and a right decoder (flat and ``made``) passes it."""
    import pytest

    x = torch.bernoulli(torch.full((5, 1, 8, 8), 0.3))
    encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16))
    for likelihood, p in (("bernoulli", 1), ("logistic", 2)):
        decoder = torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.Unflatten(1, (1, 8, 8)))
        vae = flowvae.VAE(encoder, flowvae.posteriors.Diagonal(16, 4), decoder, likelihood, shape=(1, 8, 8))
        with pytest.raises(ValueError, match=re.escape(f"(N, P, C, H, W) = (5, {p}, 1, 8, 8)")):
            flowvae.elbo(vae, x)
    good = torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.Unflatten(1, (1, 1, 8, 8)))
    vae = flowvae.VAE(encoder, flowvae.posteriors.Diagonal(16, 4), good, "bernoulli", shape=(1, 8, 8))
    assert flowvae.elbo(vae, x).shape == (5,) and vae._decoder_checked
    calls = []
    vae._check_decoder = lambda *a: calls.append(a)  # checked already: never called again
    flowvae.elbo(vae, x)
    flowvae.iwae(vae.eval(), x, samples=3)
    assert calls == []
    cfg = flowvae.preset("digits").model
    cfg.decoder, cfg.hidden, cfg.latent_dim = "made", [16], 4
    made = flowvae.build_model(cfg, (1, 8, 8), True)
    assert flowvae.elbo(made, x).shape == (5,) and made._decoder_checked
    assert flowvae.iwae(made.eval(), x, samples=3).shape == (5,)


def test_errors_raised_in_python_name_the_python_arguments(tmp_path):
    """A run folder already in use: from Python the advice is fit's own arguments, not CLI flags."""
    import pytest

    from flowvae.rundir import TrainingError

    cfg = flowvae.preset("digits")
    cfg.train.max_steps = 1
    flowvae.fit(cfg, tmp_path / "r", progress=False)
    with pytest.raises(TrainingError, match="already holds a run") as e:
        flowvae.fit(cfg, tmp_path / "r", progress=False)
    assert "resume=True" in str(e.value) and "overwrite=True" in str(e.value) and "--" not in str(e.value)
    assert "--resume" in e.value.cli and "--overwrite" in e.value.cli  # what `flowvae train` prints
    assert flowvae.fit(cfg, tmp_path / "r", progress=False, overwrite=True).step == 1
