"""flowvae compare: cached per-example evaluation, paired standard errors, refusals, outputs."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import run_cli

from flowvae.compare import active_units, compare_runs
from flowvae.evaluation import evaluate_run
from flowvae.testing import random_linear_gaussian_vae

SMALL = ["model.hidden=[32]", "model.latent_dim=4", "train.epochs=2", "eval.samples=20"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    for name, extra in [("diag", []), ("iaf", ["model.posterior=iaf", "model.flow_steps=1",
                                               "model.flow_hidden=16", "model.context_dim=8"])]:  # fmt: skip
        run_cli("train", "--run-dir", str(root / name), "--no-progress", *SMALL, *extra)
    return root


def test_paired_standard_error_is_that_of_the_per_example_differences(runs):
    c = compare_runs([runs / "diag", runs / "iaf"], samples=30, limit=60, cache=False)
    base = evaluate_run(runs / "diag", "iwae", 30, limit=60, cache=False).estimate.per_example
    other = evaluate_run(runs / "iaf", "iwae", 30, limit=60, cache=False).estimate.per_example
    d = base - other  # -log p̂(iaf) - (-log p̂(diag)) per example
    row = c.rows[1]
    assert c.baseline == "diag" and c.rows[0].diff is None and c.n == 60
    assert row.diff == pytest.approx(d.mean().item(), abs=1e-9)
    assert row.diff_stderr == pytest.approx(d.std().item() / math.sqrt(60), abs=1e-12)
    assert row.better == int((d < 0).sum()) and row.better + row.worse <= 60
    assert row.nll - c.rows[0].nll == pytest.approx(row.diff, abs=1e-9)
    assert 0 <= row.active_units <= row.latent_dim == 4 and row.parameters > c.rows[0].parameters


def test_cache_hits_on_same_settings_and_misses_on_new_settings_or_checkpoint(runs, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(runs / "diag", run)
    first = evaluate_run(run, "iwae", 25, limit=40)
    again = evaluate_run(run, "iwae", 25, limit=40)
    assert not first.cached and again.cached
    assert torch.equal(first.estimate.per_example, again.estimate.per_example)
    assert again.estimate.diagnostics == first.estimate.diagnostics
    assert not evaluate_run(run, "iwae", 26, limit=40).cached  # another K
    assert not evaluate_run(run, "iwae", 25, limit=40, seed=7).cached  # another subset/seed
    assert not evaluate_run(run, "iwae", 25, limit=40, chunk=5).cached  # another option
    # a new checkpoint (other weights) misses the cache
    ckpt = torch.load(run / "best.pt", weights_only=False)
    state = ckpt["ema"] if ckpt.get("ema") is not None else ckpt["model"]
    for v in state.values():
        if v.is_floating_point():
            v.add_(0.01)
    torch.save(ckpt, run / "best.pt")
    changed = evaluate_run(run, "iwae", 25, limit=40)
    assert not changed.cached
    assert not torch.equal(changed.estimate.per_example, first.estimate.per_example)
    # a torn cache file is recomputed, not trusted
    for f in (run / "eval-cache").glob("*.npz"):
        f.write_bytes(b"garbage")
    assert not evaluate_run(run, "iwae", 25, limit=40).cached


def test_compare_refuses_runs_on_other_data(runs, tmp_path):
    other = tmp_path / "other"
    run_cli("train", "--run-dir", str(other), "--no-progress", *SMALL, "data.binarize=threshold")
    proc = run_cli("compare", str(runs / "diag"), str(other), "--samples", "10", check=False)
    assert proc.returncode == 1 and "scores other test images" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_compare_cli_writes_the_table_and_figure(runs, tmp_path, monkeypatch):
    from flowvae import cli, progress

    monkeypatch.setattr(cli, "progress_bar", lambda *a, **k: progress.progress_bar(*a, **k, interval=0))
    out = tmp_path / "cmp"
    proc = run_cli("compare", str(runs / "diag"), str(runs / "iaf"), "--samples", "10", "--limit", "30",
                   "--out", str(out), "--json")  # fmt: skip
    result = json.loads(proc.stdout)  # stdout: exactly one JSON object; progress goes to stderr
    assert [r["run"] for r in result["rows"]] == ["diag", "iaf"] and result["n"] == 30
    assert "iaf iwae: 30/30 examples" in proc.stderr and "ETA" in proc.stderr
    for name in ("comparison.md", "comparison.tex", "comparison.csv", "comparison.json", "curves.png",
                 "curves.pdf"):  # fmt: skip
        assert (out / name).stat().st_size > 0, name
    tex = (out / "comparison.tex").read_text()
    assert "\\toprule" in tex and "\\bottomrule" in tex and "iaf" in tex
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "curves.pdf").read_bytes()[:4] == b"%PDF"


def test_active_units_counts_dimensions_whose_posterior_mean_varies():
    torch.manual_seed(0)
    model = random_linear_gaussian_vae(shape=(1, 4, 4), latent_dim=3)
    with torch.no_grad():
        model.posterior.gaussian.weight[0].zero_()  # E_q[z_0] no longer depends on x
    x = model.decode_sample(model.sample_prior((200,)))
    assert active_units(model, x, samples=50) == 2


def test_active_units_draws_do_not_depend_on_the_global_rng(monkeypatch):
    """Its E_q[z] draws come from per-example seeded streams: two calls under different global
    seeds see the same z (so the count cannot change from one compare to the next)."""
    from flowvae.core import Posterior

    model = random_linear_gaussian_vae(shape=(1, 4, 4), latent_dim=3)
    with torch.no_grad():
        x = model.decode_sample(model.sample_prior((30,)))
    seen, real = [], Posterior.rsample_and_log_prob

    def recording(self, sample_shape=()):
        z, log_q = real(self, sample_shape)
        seen.append(z.clone())
        return z, log_q

    monkeypatch.setattr(Posterior, "rsample_and_log_prob", recording)
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        active_units(model, x, samples=4, batch_size=7)
    half = len(seen) // 2
    assert half == 5 and all(torch.equal(a, b) for a, b in zip(seen[:half], seen[half:], strict=True))


def test_tables_escape_every_cell_and_separate_thousands_in_number_columns_only():
    from flowvae.compare import model_cells, render_latex, render_markdown

    cells = ["run_a", "iaf", "—", *model_cells(-84.5, 20.25, 12.5, 32, 1234567, 10, None)]
    header = ["run", "posterior", "Δ", "test ELBO", "KL", "active units", "params", "epochs", "min"]
    assert cells[3:] == ["-84.50", "20.25", "12.5/32", "1,234,567", "10", "—"]
    assert model_cells(0, 0, 3, 4, 5, 430.668, 600)[4:] == ["430.7", "10.0"]  # a budget stop mid-epoch
    tex = render_latex(header, [cells]).splitlines()
    assert tex[0] == r"\begin{tabular}{llrrrrrrr}"
    assert tex[4] == r"run\_a & iaf & --- & -84.50 & 20.25 & 12.5/32 & 1{,}234{,}567 & 10 & --- \\"
    assert render_latex(["a", "b", "c"], [["x,y", "1,000", "p, q"]], text=(0, 2)).splitlines()[4] == (
        r"x,y & 1{,}000 & p, q \\"
    )
    md = render_markdown("caption", header, [cells]).splitlines()
    assert md[:2] == ["caption", ""] and md[3] == "|" + "---|" * 9 and md[4].count("|") == 10
