"""The command line end to end on `digits`, as a new user would run it."""

import json
import math

import pytest
from conftest import run_cli

from flowvae.checkpoint import load_checkpoint

SMALL = ["model.hidden=[32]", "model.latent_dim=4", "train.epochs=2", "eval.samples=20"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli") / "run"
    proc = run_cli("train", "--run-dir", str(d), "--no-progress", *SMALL, subprocess_=True)
    assert "best valid ELBO" in proc.stdout and str(d) in proc.stdout
    return d


def test_train_writes_the_run_directory(run_dir):
    names = {p.name for p in run_dir.iterdir()}
    expected = {"config.yaml", "metrics.csv", "checkpoint.pt", "best.pt", "samples.png"}
    assert expected | {"reconstructions.png"} <= names
    assert any(n.startswith("events.out.tfevents") for n in names)
    header = (run_dir / "metrics.csv").read_text().splitlines()[0]
    for col in ("epoch", "step", "seconds", "train_elbo", "valid_elbo", "kl", "lr"):
        assert col in header
    assert "latent_dim: 4" in (run_dir / "config.yaml").read_text()


def test_eval_json_is_one_object_with_the_promised_fields(run_dir):
    out = run_cli("eval", str(run_dir), "--samples", "50", "--json").stdout
    result = json.loads(out)
    for key in ("estimator", "split", "n", "samples", "nll", "stderr", "bits_per_dim", "seconds"):
        assert key in result
    assert result["estimator"] == "iwae" and result["samples"] == 50 and result["n"] == 250
    assert 0 < result["nll"] < 64 * math.log(2) and result["stderr"] > 0
    elbo = json.loads(run_cli("eval", str(run_dir), "--estimator", "elbo", "--json").stdout)
    assert elbo["nll"] > result["nll"] - 3 * result["stderr"]  # IWAE(50) is the tighter bound


def test_eval_limit_uses_a_seeded_random_subset(run_dir):
    a = json.loads(run_cli("eval", str(run_dir), "--limit", "40", "--samples", "5", "--json").stdout)
    b = json.loads(run_cli("eval", str(run_dir), "--limit", "40", "--samples", "5", "--json").stdout)
    assert a["n"] == 40 and a["nll"] == b["nll"] and "random subset" in a["subset"]


def test_sample_writes_a_png(run_dir, tmp_path):
    from PIL import Image

    out = tmp_path / "s.png"
    run_cli("sample", str(run_dir), "--n", "16", "--out", str(out))
    assert Image.open(out).size[0] >= 4 * 64  # 8x8 digits drawn 8x larger


def test_autoregressive_decoder_trains_evaluates_and_samples(tmp_path):
    """model.decoder=made from the command line: train, IWAE (the fused per-image-bias path)
    tighter than the ELBO, a sample grid drawn pixel by pixel."""
    from PIL import Image

    d = tmp_path / "made"
    made = ["model.decoder=made", "model.posterior=iaf"]
    run_cli("train", "--run-dir", str(d), "--no-progress", *SMALL, *made)
    iwae = json.loads(run_cli("eval", str(d), "--samples", "50", "--json").stdout)
    elbo = json.loads(run_cli("eval", str(d), "--estimator", "elbo", "--json").stdout)
    assert 0 < iwae["nll"] < 64 * math.log(2) and elbo["nll"] > iwae["nll"] - 3 * iwae["stderr"]
    run_cli("sample", str(d), "--n", "9", "--out", str(tmp_path / "s.png"))
    assert Image.open(tmp_path / "s.png").size[0] >= 3 * 64


def test_presets_lists_one_line_each():
    lines = run_cli("presets").stdout.strip().splitlines()
    assert any(line.startswith("digits ") for line in lines)
    assert all(len(line.split(None, 1)) == 2 for line in lines)


@pytest.mark.parametrize(
    "args, words",
    [
        (["train", "model.latent_dimm=3"], "unknown config key 'model.latent_dimm'"),
        (["train", "train.lr=fast"], "train.lr: expected a number"),
        (["train", "model.posterior=nope"], "model.posterior: 'nope' is not a valid value"),
        (["train", "data.name=binarized_mnist", "data.root=/nonexistent"], "binarized_mnist"),
        (["train", "--preset", "nope"], "unknown preset"),
        (["eval", "/nonexistent/run"], "run directory not found"),
        (["train", "model.encoder=made"], "model.encoder: 'made' is not a valid value"),
        (["train", "model.decoder=made", "model.decoder_hidden=[16,8]"], "hidden layers of equal width"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(args, words):
    proc = run_cli(*args, check=False, subprocess_=args[-1] == "model.latent_dimm=3")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert words in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_corrupt_checkpoint_is_reported(run_dir, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(run_dir, bad)
    (bad / "best.pt").write_bytes(b"not a checkpoint")
    proc = run_cli("eval", str(bad), check=False)
    assert proc.returncode != 0 and "not a readable checkpoint" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_existing_run_dir_is_not_overwritten(run_dir):
    before = load_checkpoint(run_dir / "checkpoint.pt")["state"]["step"]
    proc = run_cli("train", "--run-dir", str(run_dir), *SMALL, check=False)
    assert proc.returncode != 0 and "--resume" in proc.stderr
    assert load_checkpoint(run_dir / "checkpoint.pt")["state"]["step"] == before


@pytest.fixture(scope="module")
def linear_gaussian_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli") / "lg"
    run_cli(
        "train", "--run-dir", str(d), "--no-progress", "model.encoder=linear", "model.decoder=linear",
        "model.likelihood=gaussian", "data.binarize=none", "model.latent_dim=3", "train.epochs=3",
    )  # fmt: skip
    return d


def test_estimators_from_the_cli_agree_with_the_exact_value(linear_gaussian_run):
    def nll(*args):
        out = json.loads(run_cli("eval", str(linear_gaussian_run), "--limit", "30", "--json", *args).stdout)
        return out

    exact = nll("--estimator", "exact")
    iwae = nll("--estimator", "iwae", "--samples", "500")
    elbo = nll("--estimator", "elbo", "--samples", "50")
    ais = nll("--estimator", "ais", "--chains", "8", "--steps", "100", "--init", "posterior")
    # wiring and ordering only: both are lower bounds on log p(x) that beat the ELBO (0.05 nats of
    # slack for their Monte Carlo noise); their accuracy against the exact value, with tolerances
    # from their standard errors, is tested in test_ais.py / test_estimators.py
    assert elbo["nll"] > iwae["nll"] > exact["nll"] - 0.05
    assert elbo["nll"] > ais["nll"] > exact["nll"] - 0.05
    for key in ("steps", "leapfrog", "schedule", "init", "target_accept", "step_size"):
        assert key in ais["settings"]
    assert ais["samples"] == 8 and ais["settings"]["init"] == "posterior"
    assert ais["settings"]["steps"] == 100 and 0 < ais["diagnostics"]["acceptance"]["mean"] <= 1
    bdmc = ["bdmc", str(linear_gaussian_run), "--n", "30", "--chains", "4", "--steps", "50", "--json"]
    bdmc = json.loads(run_cli(*bdmc).stdout)
    assert bdmc["n"] == 30 and bdmc["lower"] <= bdmc["upper"] + 0.05 and bdmc["gap"] >= -0.05
    assert bdmc["chains"] == 4 and bdmc["steps"] == 50
    assert bdmc["crossed"] == (bdmc["gap"] < 0) and (bdmc["warning"] is None) == (bdmc["gap"] >= 0)


@pytest.mark.parametrize("json_out", [False, True], ids=["text", "json"])
def test_crossed_bdmc_bounds_are_not_printed_as_a_bracket(linear_gaussian_run, monkeypatch, json_out):
    """Tiny settings can leave forward AIS above reverse AIS (-26.258 vs -26.464 in the sweep):
    the run's real bounds, the upper moved below the lower by the sweep's 0.205 nats."""
    import dataclasses

    from flowvae import ais

    real = ais.bdmc

    def crossed(*args, **kwargs):
        result = real(*args, **kwargs)
        return dataclasses.replace(result, upper=result.lower - 0.205)

    monkeypatch.setattr(ais, "bdmc", crossed)
    argv = ["bdmc", str(linear_gaussian_run), "--n", "4", "--chains", "2", "--steps", "3"]
    proc = run_cli(*argv, *(["--json"] if json_out else []))
    (warning,) = proc.stderr.strip().splitlines()
    assert warning.startswith("flowvae: warning: the BDMC bounds crossed")
    assert "have not converged at steps=3" in warning
    if json_out:
        out = json.loads(proc.stdout)
        assert out["crossed"] is True and out["gap"] == pytest.approx(-0.205)
        assert "raise the AIS steps" in out["warning"]
    else:
        assert "<= log p(x) <=" not in proc.stdout and "bounds crossed, not converged" in proc.stdout


def test_exact_refuses_models_without_an_exact_likelihood(run_dir):
    proc = run_cli("eval", str(run_dir), "--estimator", "exact", check=False)
    assert proc.returncode != 0 and "linear-Gaussian" in proc.stderr


def _subcommands():
    from flowvae.cli import parser

    (sub,) = [a for a in parser()._actions if a.dest == "command"]
    return sub.choices


@pytest.mark.parametrize("command", ["train", "eval", "sample", "gaps", "config", "compare"])
def test_every_option_says_what_it_does_and_its_default(command):
    for action in _subcommands()[command]._actions:
        if action.dest == "help":
            continue
        assert action.help and len(action.help) > 10, action.dest
        if action.option_strings:
            assert "default" in action.help, f"{command} {action.option_strings[0]}: no default stated"


def test_help_states_the_samples_default_per_estimator_and_how_to_list_keys():
    from flowvae.estimators import ESTIMATORS

    samples = [a.help for a in _subcommands()["eval"]._actions if a.dest == "samples"][0]  # --chains too
    assert "iwae: importance samples K (default: the run's eval.samples)" in samples
    assert f"elbo: draws of z per example (default: {ESTIMATORS['elbo'].default_samples})" in samples
    assert f"(default: {ESTIMATORS['ais'].default_samples})" in samples.split("ais:")[1]
    usage = run_cli("eval", "--help").stdout
    assert "--samples K" in usage and "--chains N" in usage and "SAMPLES" not in usage
    assert "flowvae config" in run_cli("train", "--help").stdout


def test_config_lists_every_key_as_an_override():
    from flowvae.config import parse_override, set_key, valid_keys
    from flowvae.presets import preset

    lines = run_cli("config", "--preset", "mnist-mlp").stdout.strip().splitlines()
    assert [line.split("=", 1)[0] for line in lines] == valid_keys()
    assert any(line.startswith("train.lr_schedule=constant") and "exponential" in line for line in lines)
    assert any(line.startswith("train.device=") and "cuda:N | auto" in line for line in lines)
    cfg = preset("digits")
    for line in lines:  # each line is a valid override, together they make the preset
        set_key(cfg, *parse_override(line.split("  (")[0]))
    assert cfg == preset("mnist-mlp")


def test_train_without_preset_says_which_preset_it_starts_from(tmp_path):
    proc = run_cli(
        "train", "--run-dir", str(tmp_path / "r"), "data.name=binarized_mnist", f"data.root={tmp_path}",
        check=False,
    )  # fmt: skip
    assert proc.returncode != 0 and "binarized_mnist" in proc.stderr  # no data files here
    assert "starting from preset mnist-mlp, the default for data.name=binarized_mnist" in proc.stdout


def test_eval_and_sample_show_progress_with_an_eta(run_dir, tmp_path, monkeypatch):
    from flowvae import cli, progress

    monkeypatch.setattr(cli, "progress_bar", lambda *a, **k: progress.progress_bar(*a, **k, interval=0))
    proc = run_cli("eval", str(run_dir), "--samples", "5", "--json")
    assert "eval iwae (K=5): 250/250 examples" in proc.stderr and "ETA" in proc.stderr
    assert json.loads(proc.stdout)["n"] == 250  # stdout: still exactly one JSON object
    proc = run_cli("sample", str(run_dir), "--n", "9", "--out", str(tmp_path / "s.png"))
    assert "sample: 9/9 images" in proc.stderr
    quiet = run_cli("eval", str(run_dir), "--samples", "5", "--limit", "10", "--no-progress")
    assert quiet.stderr == ""
    assert "khat over examples: k̂ needs K ≥ 21 importance samples (K = 5)" in quiet.stdout  # not nan


@pytest.mark.parametrize(
    "model",
    [
        ["model.prior=vampprior", "model.prior_components=5"],
        ["model.prior=flow", "model.prior_flow_steps=2", "model.prior_flow_hidden=8"],
        ["model.stochastic_layers=2", "model.prior=vampprior", "model.prior_components=3",
         "model.posterior=iaf", "model.flow_steps=1", "model.flow_hidden=8", "model.context_dim=4"],
    ],
    ids=["vampprior", "flow-prior", "hvae-vamp-iaf"],
)
def test_learned_priors_and_two_layers_train_resume_evaluate_sample_and_gap(tmp_path, model):
    """model.prior and model.stochastic_layers end to end: train one epoch, resume for a second,
    IWAE (tighter than the ELBO) and AIS, a sample grid, the gap report."""
    from PIL import Image

    d = tmp_path / "run"
    tiny = ["model.hidden=[16]", "model.latent_dim=3", "train.epochs=1", "eval.samples=20", "train.threads=1"]
    run_cli("train", "--run-dir", str(d), "--no-progress", *tiny, *model)
    run_cli("train", "--resume", str(d), "--no-progress", "train.epochs=2")
    assert load_checkpoint(d / "checkpoint.pt")["state"]["epoch"] == 2
    iwae = json.loads(run_cli("eval", str(d), "--samples", "50", "--limit", "40", "--json").stdout)
    elbo = json.loads(run_cli("eval", str(d), "--estimator", "elbo", "--limit", "40", "--json").stdout)
    assert 0 < iwae["nll"] < 64 * math.log(2) and elbo["nll"] > iwae["nll"] - 3 * iwae["stderr"]
    ais = ["--estimator", "ais", "--limit", "8", "--chains", "2", "--steps", "10", "--json"]
    assert math.isfinite(json.loads(run_cli("eval", str(d), *ais).stdout)["nll"])
    run_cli("sample", str(d), "--n", "4", "--out", str(tmp_path / "s.png"))
    assert Image.open(tmp_path / "s.png").size[0] >= 2 * 64
    gaps = [
        "--n", "6", "--batch-size", "6", "--samples", "20", "--ais-steps", "5", "--chains", "2",
        "--elbo-samples", "20", "--steps-cap", "20", "--local-samples", "2", "--check-every", "10",
        "--patience", "1", "--threads", "1", "--json", "--out", str(tmp_path / "gaps"),
    ]  # fmt: skip
    summary = json.loads(run_cli("gaps", str(d), *gaps).stdout)["summary"]
    assert summary
