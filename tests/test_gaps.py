"""The gap report: its arithmetic, its sanity checks, the linear-Gaussian ground truth, and
``flowvae gaps`` end to end on a tiny trained model."""

from __future__ import annotations

import copy
import csv
import json
import math

import pytest
import torch
from conftest import run_cli

from flowvae.data import subset_indices
from flowvae.gaps import (
    GapSettings,
    add_gaps,
    check_ordering,
    compute_gaps,
    flag_examples,
    local_flow_family,
    markdown_table,
    plot_gaps,
)
from flowvae.linear_gaussian import best_diag_elbo, exact_log_marginal
from flowvae.local import LocalOptions
from flowvae.testing import random_linear_gaussian_vae

# ----------------------------------------------------------------------------- ground truth


@pytest.fixture(scope="module")
def linear_report():
    """Gaps of a linear-Gaussian VAE whose posterior is strongly correlated; a local IAF step
    (a triangular map: any Gaussian) can fit it, a factorised Gaussian cannot."""
    model = random_linear_gaussian_vae(seed=0).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        x = model.decode_sample(model.sample_prior((4,)))
    settings = GapSettings(
        estimator="exact", elbo_samples=1000, local_flow="iaf",
        flow_options={"flow_steps": 1, "flow_hidden": 16}, batch_size=4, seed=0,
        local=LocalOptions(samples=10, max_steps=3000, check_every=50),
    )  # fmt: skip
    report = compute_gaps(model, x, "diag", settings, name="linear-gaussian")
    return report, exact_log_marginal(model, x).double(), best_diag_elbo(model, x).double()


def test_gaps_match_the_linear_gaussian_truth(linear_report):
    report, exact, best_diag = linear_report
    c = report.columns
    true_ffg_gap = (exact - best_diag).mean().item()
    assert true_ffg_gap > 1.0
    # L[q*_FFG] is the analytic optimum up to MC noise (se ~0.02) and optimisation slack (<0.05)
    assert abs((c["elbo_ffg_star"] - best_diag).mean().item()) < 0.1
    torch.testing.assert_close(c["log_p"], exact)
    assert abs(c["approximation_gap_ffg"].mean().item() - true_ffg_gap) < 0.1
    # the local flow closes the approximation gap
    flow_gap = c["approximation_gap_flow"].mean().item()
    assert flow_gap < 0.1 and flow_gap < true_ffg_gap / 10, (flow_gap, true_ffg_gap)
    assert c["converged_ffg"].all() and c["converged_flow"].all()


def test_the_gaps_add_up_exactly(linear_report):
    report, _, _ = linear_report
    c = report.columns
    assert report.q_star == "ffg"  # q = diag: q* = q*_FFG, as in the paper's FFG column
    assert torch.equal(c["approximation_gap"], c["approximation_gap_ffg"])
    torch.testing.assert_close(
        c["approximation_gap"] + c["amortization_gap"], c["inference_gap"], rtol=0, atol=1e-12
    )
    torch.testing.assert_close(c["inference_gap"], c["log_p"] - c["elbo_q"], rtol=0, atol=0)
    for family in ("ffg", "flow"):
        total = c[f"approximation_gap_{family}"] + c[f"amortization_gap_{family}"]
        torch.testing.assert_close(total, c["inference_gap"], rtol=0, atol=1e-12)
    s = report.summary()
    assert math.isclose(
        s["approximation_gap"]["mean"] + s["amortization_gap"]["mean"],
        s["inference_gap"]["mean"],
        abs_tol=1e-9,
    )
    # a flow q takes q* = q*_flow
    flow = {k: v for k, v in c.items() if not k.endswith("_gap")}
    add_gaps(flow, "flow")
    assert torch.equal(flow["approximation_gap"], c["approximation_gap_flow"])
    assert torch.equal(flow["amortization_gap"], c["amortization_gap_flow"])


def test_table_and_plot_for_several_models(linear_report, tmp_path):
    report, _, _ = linear_report
    other = copy.copy(report)
    other.name, other.posterior = "other", "realnvp-aux"
    table = markdown_table([report, other])
    header = table.splitlines()[0]
    assert "q = FFG: linear-gaussian" in header and "q = flow (realnvp-aux): other" in header
    for row in ("log p̂(x)", "L[q*_flow]", "L[q*_FFG]", "L[q]", "Approximation gap", "Amortization gap"):
        assert any(line.startswith(f"| {row}") for line in table.splitlines()), row
    plot_gaps([report, other], tmp_path / "two.png")
    assert (tmp_path / "two.png").stat().st_size > 1000


# ----------------------------------------------------------------------------- sanity checks


def _columns(n: int = 40, log_p: float = -10.0, ffg: float = -11.0, flow: float = -10.5, q: float = -12.0):
    g = torch.Generator().manual_seed(0)

    def noisy(v: float) -> torch.Tensor:
        return v + 0.1 * torch.randn(n, generator=g, dtype=torch.float64)

    se = torch.full((n,), 0.02, dtype=torch.float64)
    ones = torch.ones(n, dtype=torch.float64)
    return {
        "log_p": noisy(log_p), "elbo_q": noisy(q), "elbo_q_se": se, "elbo_ffg_star": noisy(ffg),
        "elbo_ffg_star_se": se, "elbo_flow_star": noisy(flow), "elbo_flow_star_se": se,
        "converged_ffg": ones, "converged_flow": ones.clone(),
    }  # fmt: skip


def test_a_consistent_ordering_gives_no_warning():
    warnings, violations = check_ordering(_columns(), "ffg")
    assert warnings == [] and set(violations.values()) == {0}


@pytest.mark.parametrize(
    ("values", "q_star", "expected"),
    [
        ({"flow": -9.0}, "flow", "log p̂(x) ≥ L[q*_flow] fails"),  # the estimate is too loose
        ({"ffg": -9.5, "flow": -9.6}, "ffg", "log p̂(x) ≥ L[q*_FFG] fails"),
        ({"ffg": -12.5}, "ffg", "L[q*_FFG] ≥ L[q] fails"),  # under-converged local optimisation
        ({"flow": -11.5}, "flow", "L[q*_flow] ≥ L[q*_FFG] fails"),
    ],
)
def test_a_broken_ordering_is_reported(values, q_star, expected):
    warnings, violations = check_ordering(_columns(**values), q_star)
    assert any(w.startswith(expected) for w in warnings), warnings
    assert max(violations.values()) > 0


def test_examples_stopped_by_the_cap_are_reported():
    c = _columns()
    c["converged_flow"][:3] = 0
    warnings, _ = check_ordering(c, "flow")
    assert warnings == ["3 of 40 examples hit the step cap before their local flow optimisation converged "
                        "(raise the local optimisation's step cap)"]  # fmt: skip


def test_gap_runs_with_consecutive_seeds_draw_unrelated_noise():
    """Batch i under seed s drew what batch i - 1 draws under seed s + 1 (torch.manual_seed(seed +
    i)); now every example draws from its own streams, and the caller's generator is left alone."""
    model = random_linear_gaussian_vae(seed=0).eval()
    with torch.no_grad():
        x = model.decode_sample(model.sample_prior((1,))).expand(4, -1, -1, -1)  # one image, 4 times
    local = LocalOptions(samples=2, max_steps=20, check_every=10)

    def ffg(seed: int) -> torch.Tensor:
        settings = GapSettings(estimator="iwae", check=False, samples={"iwae": 5}, elbo_samples=5,
                               local_flow="none", local=local, batch_size=2, seed=seed)  # fmt: skip
        return compute_gaps(model, x, "diag", settings).columns["elbo_ffg_star"]

    state = torch.get_rng_state()
    s, s1 = ffg(7), ffg(8)
    assert torch.equal(torch.get_rng_state(), state)
    assert not torch.equal(s[2:], s1[:2])  # batch 1 of seed 7 against batch 0 of seed 8
    assert len(set(s.tolist())) == 4  # the same image, its own draws at each index
    assert torch.equal(ffg(7), s)  # a seed reproduces its numbers


def test_settings_are_checked():
    with pytest.raises(ValueError, match="unknown estimator"):
        GapSettings(estimator="elbo")
    with pytest.raises(ValueError, match="unknown estimator 'max'"):  # biased upward: removed
        GapSettings(estimator="max")
    with pytest.raises(ValueError, match="unknown local flow"):
        GapSettings(local_flow="nope")


# ----------------------------------------------------------------------------- end to end

FAST = [
    "--samples", "50", "--ais-steps", "10", "--chains", "2", "--elbo-samples", "100", "--steps-cap", "100",
    "--lr", "0.01", "--local-samples", "4", "--check-every", "25", "--patience", "2", "--threads", "1",
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny diag VAE on scikit-learn's digits, trained for one epoch with the library's train()."""
    from flowvae.config import apply_overrides
    from flowvae.presets import preset
    from flowvae.train import train

    run_dir = tmp_path_factory.mktemp("gaps") / "run"
    overrides = ["model.hidden=[32]", "model.latent_dim=4", "train.epochs=1", "train.threads=1"]
    train(apply_overrides(preset("digits"), overrides), run_dir, progress=False)
    return run_dir


def test_cli_writes_the_four_files(tiny_run, tmp_path):
    out = tmp_path / "gaps"
    args = ["--n", "12", "--batch-size", "6", "--local-flow", "iaf", "--flow-steps", "1"]
    args += ["--flow-hidden", "8", "--json"]
    proc = run_cli("gaps", str(tiny_run), *FAST, *args, "--out", str(out))
    result = json.loads(proc.stdout)
    assert {p.name for p in out.iterdir()} == {"gaps.csv", "gaps.json", "gaps.md", "gaps.png"}
    assert json.loads((out / "gaps.json").read_text())["summary"] == result["summary"]
    assert result["n"] == 12 and result["q_star"] == "ffg" and "random subset of 12" in result["subset"]
    # a fixed seeded random subset (data.subset_indices), not the first 12 rows
    with open(out / "gaps.csv") as f:
        rows = list(csv.DictReader(f))
    indices = [int(r["index"]) for r in rows]
    assert indices == subset_indices(250, 12, 1234).tolist() and indices != list(range(12))
    for r in rows:
        assert float(r["log_p"]) == float(r["log_p_ais"])  # the default estimator
        assert abs(float(r["log_p_check"]) - (float(r["log_p_ais"]) - float(r["log_p_iwae"]))) < 1e-5
        gaps = float(r["approximation_gap"]) + float(r["amortization_gap"])
        assert abs(gaps - float(r["inference_gap"])) < 1e-5
        assert math.isfinite(float(r["elbo_flow_star"]))
    s = result["summary"]
    # the sanity ordering log p̂ >= L[q*] >= L[q] holds up to noise, or the report says it fails
    for upper, lower, label in [
        ("log_p", "elbo_ffg_star", "log p̂(x) ≥ L[q*_FFG]"),
        ("elbo_ffg_star", "elbo_q", "L[q*_FFG] ≥ L[q]"),
        ("log_p", "elbo_q", "log p̂(x) ≥ L[q]"),
    ]:
        holds = s[upper]["mean"] >= s[lower]["mean"] - 3 * max(s[upper]["stderr"], s[lower]["stderr"])
        assert holds or any(w.startswith(label) for w in result["warnings"]), (label, result["warnings"])
    assert "| Approximation gap |" in (out / "gaps.md").read_text()
    assert result["ok"] and result["flagged"] == [] and result["dropped"] == 0
    ais = {"estimator": "ais", "samples": 2, "steps": 10, "leapfrog": 10, "schedule": "sigmoid",
           "init": "prior", "target_accept": 0.65, "step_size": 0.1}  # fmt: skip
    assert result["log_p_estimator"] == ais
    assert result["log_p_check"]["against"] == "iwae"
    assert result["q_star_family"] == "iaf"  # a richer local flow than q = diag, named
    assert result["q_star_options"] == {"flow_steps": 1, "flow_hidden": 8}
    assert set(result["local"]) == {"ffg", "flow"} and set(result["local"]["ffg"]) == {"capped", "skipped"}


@pytest.fixture(scope="module")
def k1000_run(tmp_path_factory):
    """A tiny run whose eval.samples (K of the paper protocol) is 1000."""
    run_dir = tmp_path_factory.mktemp("k1000") / "run"
    run_cli("train", "--run-dir", str(run_dir), "--no-progress", "model.hidden=[16]", "model.latent_dim=2",
            "train.epochs=1", "train.threads=1", "eval.samples=1000")  # fmt: skip
    return run_dir


QUICK_LOCAL = ["--steps-cap", "20", "--check-every", "10", "--elbo-samples", "5", "--threads", "1", "--json"]


def test_gaps_resolves_k_as_eval_does_and_its_flags_do_not_share_a_destination(k1000_run, tmp_path):
    """gaps' IWAE K came from the estimator's default, not the run's eval.samples, and
    --local-samples wrote the destination of --samples."""
    from flowvae.evaluation import evaluate_run

    quick = ["--estimator", "iwae", "--no-check", "--local-flow", "none", "--n", "3", *QUICK_LOCAL]
    plain = json.loads(run_cli("gaps", str(k1000_run), *quick, "--out", str(tmp_path / "a")).stdout)
    evaluated = evaluate_run(k1000_run, "iwae", limit=3, cache=False)
    assert plain["log_p_estimator"]["samples"] == evaluated.estimate.samples == 1000
    assert plain["summary"]["log_p"]["mean"] == pytest.approx(-evaluated.estimate.nll, rel=1e-5)
    both = ["--samples", "9", "--local-samples", "7"]
    given = json.loads(run_cli("gaps", str(k1000_run), *quick, *both, "--out", str(tmp_path / "b")).stdout)
    assert given["log_p_estimator"]["samples"] == 9 and given["settings"]["local"]["samples"] == 7


def test_cli_prints_the_table(tiny_run):
    args = ["--n", "5", "--estimator", "iwae", "--local-flow", "none", "--split", "train"]
    proc = run_cli("gaps", str(tiny_run), *FAST, *args)
    lines = proc.stdout.splitlines()
    # digits are dynamically binarized: the training subset is binarized once, seeded
    assert "train: random subset of 5 of 1297 (seed 1234), binarized once" in proc.stdout
    assert lines[0].startswith("| | q = FFG: run |")
    assert any(line.startswith("| L[q*_FFG] |") for line in lines)
    assert any(line.startswith("| L[q*_flow] (none) | –") for line in lines)
    assert (tiny_run / "gaps" / "gaps.png").is_file()


def test_cli_rejects_an_unknown_local_flow(tiny_run):
    proc = run_cli("gaps", str(tiny_run), "--local-flow", "nope", check=False)
    assert proc.returncode == 2 and "unknown local flow 'nope'" in proc.stderr  # a bad flag, as every other


@pytest.mark.parametrize("estimator", ["iwae", "ais"])  # ais: iwae is its paired check
def test_iwae_at_k_1_is_refused_it_is_the_elbo(tiny_run, estimator):
    before = sorted(p.name for p in tiny_run.iterdir())
    proc = run_cli("gaps", str(tiny_run), "--estimator", estimator, "--samples", "1", check=False)
    (line,) = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "iwae with K=1 is the ELBO (one importance sample)" in line
    assert sorted(p.name for p in tiny_run.iterdir()) == before


def test_negative_gaps_are_marked_not_meaningful(linear_report):
    report = copy.deepcopy(linear_report[0])
    assert report.meaningful and "not meaningful" not in markdown_table([report])
    report.columns["log_p"] = report.columns["elbo_q"] - 0.24  # as IWAE at small K can give
    add_gaps(report.columns, report.q_star)
    assert not report.meaningful and report.to_json()["meaningful"] is False
    gap_rows = [line for line in markdown_table([report]).splitlines() if "gap |" in line]
    assert len(gap_rows) == 3 and all("(not meaningful)" in line for line in gap_rows)


def test_a_gap_report_never_replaces_an_earlier_one(tiny_run, tmp_path):
    argv = ["gaps", str(tiny_run), *FAST, "--n", "3", "--local-flow", "none", "--estimator", "iwae"]
    out = tmp_path / "report"
    first = run_cli(*argv, "--out", str(out))
    assert "zero-element" not in first.stderr and "Warning" not in first.stderr  # torch's warning
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    proc = run_cli(*argv, "--out", str(out), check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"flowvae: error: {out}: holds an earlier gap report (gaps.csv, gaps.json, gaps.md, gaps.png); "
        "choose another --out or move it away"
    ]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    earlier = set(tiny_run.glob("gaps*"))
    for _ in range(2):  # the default folder: RUN/gaps, else the first free gaps-N
        run_cli(*argv)
    new = set(tiny_run.glob("gaps*")) - earlier
    assert len(new) == 2 and all((folder / "gaps.json").is_file() for folder in new)


def test_a_failed_report_write_leaves_no_half_written_file(linear_report, tmp_path, monkeypatch):
    import errno

    from flowvae import gaps

    def full_disk(reports, path):
        path.write_bytes(b"\x89PNG half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gaps, "plot_gaps", full_disk)
    with pytest.raises(OSError, match="No space left on device") as e:
        gaps.write_report(linear_report[0], tmp_path)
    assert e.value.filename == str(tmp_path / "gaps.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gaps.csv", "gaps.json", "gaps.md"]


# ----------------------------------------------------------------------------- honesty


@pytest.mark.parametrize("bad", [-math.inf, math.nan, -1e200])
def test_non_finite_and_far_off_examples_are_flagged(bad):
    c = _columns()
    c["elbo_ffg_star"][5] = bad
    add_gaps(c, "ffg")
    flagged = flag_examples(c, torch.arange(100, 140))
    assert [f["index"] for f in flagged] == [105]
    assert flagged[0]["column"] in ("elbo_ffg_star", "approximation_gap", "amortization_gap")
    assert flag_examples(_columns() | {}, torch.arange(40)) == []  # ordinary spread: nothing flagged


def test_a_large_paired_difference_between_estimators_is_reported():
    c = _columns()
    g = torch.Generator().manual_seed(1)
    c["log_p_check"] = 0.05 * torch.randn(40, generator=g, dtype=torch.float64)
    assert check_ordering(c, "ffg")[0] == []
    c["log_p_check"] += 0.2
    warnings, _ = check_ordering(c, "ffg")
    assert len(warnings) == 1 and warnings[0].startswith("log p̂(x) differs from the other estimator by +0.1")


def test_q_star_is_q_own_family_and_size_by_default():
    size = {"flow_steps": 4, "flow_hidden": 32}
    assert local_flow_family("diag", GapSettings(), size) == ("none", {})
    assert local_flow_family("iaf", GapSettings(), size) == ("iaf", size)
    richer = GapSettings(local_flow="realnvp-aux", flow_options={"flow_steps": 2})
    assert local_flow_family("iaf", richer, size) == ("realnvp-aux", {"flow_steps": 2})


def test_cli_fails_on_a_diverged_example_unless_asked_to_drop_it(tiny_run, tmp_path, monkeypatch):
    import flowvae.gaps as gaps

    original = gaps._batch_columns

    def diverged(*args, **kwargs):
        cols = original(*args, **kwargs)
        cols["elbo_ffg_star"][1] = -math.inf  # a local optimisation that diverged
        return cols

    monkeypatch.setattr(gaps, "_batch_columns", diverged)
    args = ["--n", "6", "--estimator", "iwae", "--no-check", "--local-flow", "none", "--json"]
    proc = run_cli("gaps", str(tiny_run), *FAST, *args, "--out", str(tmp_path / "a"), check=False)
    assert proc.returncode == 1 and "1 example(s) flagged" in proc.stderr
    result = json.loads(proc.stdout)
    assert not result["ok"] and result["flagged"][0]["reason"] == "not finite"
    assert any("flagged" in w for w in result["warnings"])
    proc = run_cli("gaps", str(tiny_run), *FAST, *args, "--drop-flagged", "--out", str(tmp_path / "b"))
    result = json.loads(proc.stdout)
    assert result["ok"] and result["dropped"] == 1 and result["n"] == 5
    assert math.isfinite(result["summary"]["elbo_ffg_star"]["mean"])
    assert any("dropped 1 of 6 examples" in w for w in result["warnings"])
