"""The checkable list of bad inputs: each is refused with one line, an exit code, and no file written.

``BAD_INPUTS`` is the table of inputs refused when parsed or when a file is read: (case, argv,
expected exit code, expected message fragment). Faults that need a run prepared first (malicious,
torn or non-finite checkpoints, run-folder collisions, divergence) are the ``CASES`` table of
``test_bad_inputs_run.py``, with the same columns and the same one-line / nothing-written checks.
Placeholders in argv: ``{run}`` a small trained run, ``{tmp}`` an empty folder, ``{file}`` an
existing plain file, ``{incomplete}`` a run whose best.pt lacks its weights, ``{truncated}`` a
run whose best.pt is cut short, ``{bad_yaml}`` / ``{hier_yaml}`` YAML configs with a bad value /
an ignored key, ``{full}`` a PNG path on a full disk (/dev/full), ``{readonly}`` a read-only
folder, ``{npz}`` a .npz file of 40 images. Exit codes: 2 for a bad value or flag (argparse and
config errors), 1 for a problem met while running (files, OS, data).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import run_cli

NPZ = ["data.name=npz", "data.file={npz}", "model.hidden=[8]"]

BAD_INPUTS: list[tuple[str, list[str], int, str]] = [
    # --- config values, checked when parsed (train) ---
    ("string-choice-typo", ["train", "train.lr_schedule=cosin"], 2,
     "train.lr_schedule: 'cosin' is not a valid value; valid values: constant, exponential, cosine, "
     "cosine-budget"),
    ("objective-typo", ["train", "train.objective=iw"], 2, "train.objective: 'iw' is not a valid value"),
    ("iwae-objective-with-free-bits", ["train", "train.objective=iwae", "train.kl_min=0.5"], 2,
     "train.kl_min=0.5 (free bits) clamps a KL term that train.objective=iwae does not have"),
    ("dropout-one", ["train", "model.dropout=1"], 2, "model.dropout=1.0: must be in [0, 1)"),
    ("weight-decay-negative", ["train", "train.weight_decay=-0.1"], 2,
     "train.weight_decay=-0.1: must be >= 0"),
    ("optimizer-typo", ["train", "train.optimizer=sgd"], 2, "valid values: adam, adamax, adam-normgrad"),
    ("encoder-typo", ["train", "model.encoder=cnn"], 2, "valid values: mlp, gated-conv, resnet, linear"),
    ("dataset-typo", ["train", "data.name=mnits"], 2, "data.name: 'mnits' is not a valid value"),
    ("binarize-typo", ["train", "data.binarize=yes"], 2, "valid values: auto, dynamic, threshold, none"),
    ("posterior-typo", ["train", "model.posterior=iaff"], 2, "model.posterior: 'iaff' is not a valid value"),
    ("freeze-typo", ["train", "train.freeze=both"], 2, 'valid values: "", decoder, encoder'),
    ("freeze-decoder-with-vampprior", ["train", "model.prior=vampprior", "train.freeze=decoder"], 2,
     "train.freeze=decoder keeps the generative model fixed, but model.prior=vampprior is the encoder"),
    ("vampprior-with-batch-norm", ["train", "model.prior=vampprior", "model.prior_components=1",
                                   "model.batch_norm=true"], 2,
     "model.prior=vampprior runs its pseudo-inputs through the encoder, whose batch norm or dropout"),
    ("vampprior-with-dropout", ["train", "model.prior=vampprior", "model.dropout=0.2"], 2,
     "model.prior=vampprior runs its pseudo-inputs through the encoder, whose batch norm or dropout"),
    ("device-typo", ["train", "train.device=gpu"], 2, "train.device=gpu: must be cpu, cuda, cuda:N or auto"),
    ("latent-dim-zero", ["train", "model.latent_dim=0"], 2, "model.latent_dim=0: must be > 0"),
    ("latent-dim-negative", ["train", "model.latent_dim=-3"], 2, "model.latent_dim=-3: must be > 0"),
    ("hidden-width-zero", ["train", "model.hidden=[64,0]"], 2, "model.hidden=0: must be > 0"),
    ("flow-steps-zero-with-flow", ["train", "model.posterior=iaf", "model.flow_steps=0"], 2,
     "model.flow_steps=0: model.posterior=iaf needs >= 1 step"),
    ("flow-steps-negative", ["train", "model.flow_steps=-1"], 2, "model.flow_steps=-1: must be >= 0"),
    ("eval-every-zero", ["train", "train.eval_every=0"], 2, "train.eval_every=0: must be > 0"),
    ("checkpoint-every-negative", ["train", "train.checkpoint_every_steps=-1"], 2,
     "train.checkpoint_every_steps=-1: must be >= 0"),
    ("max-minutes-negative", ["train", "train.max_minutes=-1"], 2, "train.max_minutes=-1.0: must be >= 0"),
    ("max-steps-negative", ["train", "train.max_steps=-5"], 2, "train.max_steps=-5: must be >= 0"),
    ("lr-zero", ["train", "train.lr=0"], 2, "train.lr=0.0: must be > 0"),
    ("lr-negative", ["train", "train.lr=-1e-3"], 2, "train.lr=-0.001: must be > 0"),
    ("lr-infinite", ["train", "train.lr=.inf"], 2, "train.lr=inf: must be a finite number"),
    ("lr-nan", ["train", "train.lr=nan"], 2, "train.lr=nan: must be a finite number"),
    ("epochs-zero", ["train", "train.epochs=0"], 2, "train.epochs=0: must be > 0"),
    ("batch-size-zero", ["train", "train.batch_size=0"], 2, "train.batch_size=0: must be > 0"),
    ("ema-one", ["train", "train.ema=1"], 2, "train.ema=1.0: must be in [0, 1)"),
    ("config-eval-samples-zero", ["train", "eval.samples=0"], 2, "eval.samples=0: must be > 0"),
    ("wrong-type", ["train", "train.epochs=ten"], 2, "train.epochs: expected an integer"),
    ("unknown-key", ["train", "model.latent_dimm=3"], 2, "unknown config key 'model.latent_dimm'"),
    ("flat-key-on-hierarchical", ["train", "model.type=hierarchical", "model.posterior=down-iaf",
                                  "model.hidden=[10]"], 2,
     "model.hidden is ignored by model.type=hierarchical"),
    ("hierarchical-no-levels", ["train", "model.type=hierarchical", "model.posterior=down-iaf",
                                "model.depths=[]"], 2, "model.type=hierarchical needs at least one level"),
    ("hierarchical-key-on-flat", ["train", "model.n_h=16"], 2, "model.n_h is ignored by model.type=flat"),
    ("hierarchical-posterior-on-flat", ["train", "model.posterior=down-iaf"], 2,
     "model.posterior=down-iaf is not a posterior of model.type=flat"),
    ("prior-typo", ["train", "model.prior=vamp"], 2, "model.prior: 'vamp' is not a valid value"),
    ("hierarchical-prior-on-flat", ["train", "model.prior=iaf"], 2,
     "model.prior=iaf is not a prior of model.type=flat; valid values: auto, standard, vampprior, flow"),
    ("flat-prior-on-hierarchical", ["train", "model.type=hierarchical", "model.posterior=down-iaf",
                                    "model.prior=vampprior"], 2,
     "model.prior=vampprior is not a prior of model.type=hierarchical; valid values: auto, diag, iaf"),
    ("components-without-vampprior", ["train", "model.prior=flow", "model.prior_components=10"], 2,
     "model.prior_components is ignored unless model.prior=vampprior (it is flow); remove it"),
    ("log-var-bounds-reversed", ["train", "model.log_var_bounds=[2,-6]"], 2,
     "model.log_var_bounds=[2.0, -6.0]: use [] (unbounded) or [low, high] with low < high"),
    ("log-var-bounds-one-number", ["train", "model.log_var_bounds=[2]"], 2, "model.log_var_bounds=[2.0]"),
    ("two-layer-inputs-without-two-layers", ["train", "model.two_layer_inputs=separate"], 2,
     "model.two_layer_inputs=separate needs model.stochastic_layers=2 and mlp encoder and decoder"),
    ("mlp-layer-typo", ["train", "model.mlp_layer=gate"], 2, "valid values: elu, gated"),
    ("flow-steps-without-flow-prior", ["train", "model.prior_flow_steps=2"], 2,
     "model.prior_flow_steps is ignored unless model.prior=flow (it is auto); remove it"),
    ("prior-components-zero", ["train", "model.prior=vampprior", "model.prior_components=0"], 2,
     "model.prior_components=0: must be > 0"),
    ("three-stochastic-layers", ["train", "model.stochastic_layers=3"], 2,
     "model.stochastic_layers=3: must be 1 or 2"),
    ("stochastic-layers-on-hierarchical", ["train", "model.type=hierarchical", "model.posterior=down-iaf",
                                           "model.stochastic_layers=2"], 2,
     "model.stochastic_layers is ignored by model.type=hierarchical"),
    ("ignored-key-in-yaml", ["train", "--config", "{hier_yaml}"], 2,
     "hier.yaml: model.latent_dim is ignored by model.type=hierarchical"),
    ("bad-value-in-yaml", ["train", "--config", "{bad_yaml}"], 2, "train.lr=-1.0: must be > 0"),
    ("unknown-preset", ["train", "--preset", "nope"], 2, "unknown preset 'nope'"),
    ("mistyped-preset", ["train", "--preset", "digts"], 2, "unknown preset 'digts'; did you mean digits?"),
    ("scalar-for-a-list", ["train", "model.hidden=300"], 2, "model.hidden: expected a list, e.g. [300]"),
    ("valid-size-negative", ["train", "data.valid_size=-2"], 2,
     "data.valid_size=-2: must be >= 0, or -1 for the dataset default"),
    ("test-size-negative", ["train", "data.test_size=-3"], 2,
     "data.test_size=-3: must be >= 0, or -1 for the dataset default"),
    # --- split sizes, checked when the data is read: {npz} holds 40 images ---
    ("npz-no-valid-no-test", ["train", *NPZ, "data.valid_size=0", "data.test_size=0"], 1,
     "npz: data.test_size=0: the test split needs at least 1 example (there is no test file: it is held "
     "out of the 40 examples of images.npz); set data.test_size=N"),
    ("npz-no-valid-test-as-valid", ["train", *NPZ, "data.valid_size=0"], 1,
     "npz: data.test_size=-1 (as data.valid_size=0): the test split needs at least 1 example"),
    ("npz-splits-exceed-file", ["train", *NPZ, "data.valid_size=30", "data.test_size=10"], 1,
     "npz: data.valid_size=30 + data.test_size=10 leave no training examples: at most 39 of the 40 "
     "examples of images.npz can be held out in all"),
    ("digits-splits-exceed-data", ["train", "data.valid_size=1000", "data.test_size=797"], 1,
     "digits: data.valid_size=1000 + data.test_size=797 leave no training examples: at most 1796"),
    ("vampprior-components-beyond-data", ["train", "model.prior=vampprior", "model.prior_components=10000"],
     2,
     "model.prior_components=10000: more pseudo-inputs than the 1297 training examples cannot help"),
    # --- train flags ---
    ("config-file-missing", ["train", "--config", "{tmp}/missing.yaml"], 2, "missing.yaml: file not found"),
    ("run-dir-is-a-file", ["train", "--run-dir", "{file}"], 2, "exists and is a file, not a folder"),
    ("run-dir-below-a-file", ["train", "--run-dir", "{file}/run"], 2, "is a file, not a folder"),
    ("resume-missing-run", ["train", "--resume", "{tmp}/nope"], 2, "nope: run directory not found"),
    ("resume-bad-budget", ["train", "--resume", "{run}", "train.max_minutes=-1"], 2,
     "train.max_minutes=-1.0: must be >= 0"),
    # --- eval flags ---
    ("eval-missing-run", ["eval", "{tmp}/nope"], 2, "nope: run directory not found"),
    ("eval-run-is-a-file", ["eval", "{file}"], 2, "is a file, not a run directory"),
    ("eval-samples-zero", ["eval", "{run}", "--samples", "0"], 2, "argument --samples: 0 must be >= 1"),
    ("eval-samples-negative", ["eval", "{run}", "--samples", "-5"], 2, "argument --samples: -5 must be >= 1"),
    ("eval-samples-not-int", ["eval", "{run}", "--samples", "many"], 2, "'many' is not an integer"),
    ("eval-chains-zero", ["eval", "{run}", "--estimator", "ais", "--chains", "0"], 2,
     "argument --chains: 0 must be >= 1"),
    ("eval-steps-zero", ["eval", "{run}", "--estimator", "ais", "--steps", "0"], 2,
     "argument --steps: 0 must be >= 1"),
    ("eval-leapfrog-zero", ["eval", "{run}", "--leapfrog", "0"], 2, "argument --leapfrog: 0 must be >= 1"),
    ("eval-target-accept-above-one", ["eval", "{run}", "--target-accept", "1.5"], 2,
     "argument --target-accept: 1.5 must be a finite number in (0.0, 1.0)"),
    ("eval-step-size-zero", ["eval", "{run}", "--step-size", "0"], 2, "argument --step-size: 0 must be"),
    ("eval-limit-zero", ["eval", "{run}", "--limit", "0"], 2, "argument --limit: 0 must be >= 1"),
    ("eval-batch-size-zero", ["eval", "{run}", "--batch-size", "0"], 2, "--batch-size: 0 must be >= 1"),
    ("eval-chunk-zero", ["eval", "{run}", "--chunk", "0"], 2, "argument --chunk: 0 must be >= 1"),
    ("eval-threads-negative", ["eval", "{run}", "--threads", "-1"], 2, "argument --threads: -1 must be >= 0"),
    ("eval-device-typo", ["eval", "{run}", "--device", "gpu"], 2, "'gpu': use cpu, cuda, cuda:N or auto"),
    ("eval-cuda-without-cuda", ["eval", "{run}", "--device", "cuda"], 2,
     "cuda: CUDA is not available on this machine"),
    ("eval-incomplete-checkpoint", ["eval", "{incomplete}"], 1, "best.pt: incomplete checkpoint (no model)"),
    ("eval-truncated-checkpoint", ["eval", "{truncated}"], 1, "best.pt: not a readable checkpoint"),
    # --- sample flags ---
    ("sample-n-zero", ["sample", "{run}", "--n", "0"], 2, "argument --n: 0 must be >= 1"),
    ("sample-n-negative", ["sample", "{run}", "--n", "-4"], 2, "argument --n: -4 must be >= 1"),
    ("sample-out-missing-folder", ["sample", "{run}", "--out", "{tmp}/no/such/s.png"], 2,
     "s.png: folder"),
    ("sample-out-unknown-format", ["sample", "{run}", "--out", "{tmp}/s.samples"], 2,
     "unknown image format '.samples'"),
    ("sample-out-is-a-folder", ["sample", "{run}", "--out", "{tmp}"], 2, "unknown image format"),
    ("sample-temperature-negative", ["sample", "{run}", "--temperature", "-1"], 2,
     "argument --temperature: -1 must be a finite number in [0.0, inf)"),
    ("sample-temperature-nan", ["sample", "{run}", "--temperature", "nan"], 2, "must be a finite number"),
    ("sample-incomplete-checkpoint", ["sample", "{incomplete}"], 1, "incomplete checkpoint"),
    ("sample-n-beyond-one-image", ["sample", "{run}", "--n", "30000"], 2,
     "--n 30000: 30000 images of 1x8x8 make a 11420x11486 grid, more than the 89478485 pixels"),
    # --- gaps flags (existing ones; the local-optimisation list may change with issue 11) ---
    ("gaps-n-zero", ["gaps", "{run}", "--n", "0"], 2, "argument --n: 0 must be >= 1"),
    ("gaps-samples-zero", ["gaps", "{run}", "--samples", "0"], 2,
     "argument --iwae-samples/--samples: 0 must be >= 1"),
    ("gaps-chains-zero", ["gaps", "{run}", "--chains", "0"], 2,
     "argument --ais-samples/--chains: 0 must be >= 1"),
    ("gaps-ais-steps-zero", ["gaps", "{run}", "--ais-steps", "0"], 2, "argument --ais-steps: 0 must be >= 1"),
    ("gaps-batch-size-zero", ["gaps", "{run}", "--batch-size", "0"], 2, "argument --batch-size: 0 must be"),
    ("gaps-lr-zero", ["gaps", "{run}", "--lr", "0"], 2, "argument --lr: 0 must be a finite number"),
    ("gaps-cuda-without-cuda", ["gaps", "{run}", "--device", "cuda"], 2, "CUDA is not available"),
    ("gaps-out-is-a-file", ["gaps", "{run}", "--out", "{file}"], 2, "exists and is a file, not a folder"),
    # --- after training: encode, interpolate, traverse, layers, reconstruct (issue 36) ---
    ("encode-out-missing", ["encode", "{run}"], 2, "the following arguments are required: --out"),
    ("encode-out-not-npz", ["encode", "{run}", "--out", "{tmp}/z.txt"], 2, "give a name ending in .npz"),
    ("encode-samples-zero", ["encode", "{run}", "--out", "{tmp}/z.npz", "--samples", "0"], 2,
     "argument --samples: 0 must be >= 1"),
    ("interpolate-steps-one", ["interpolate", "{run}", "--steps", "1"], 2,
     "argument --steps: 1 must be >= 2"),
    ("interpolate-space-typo", ["interpolate", "{run}", "--space", "pixel"], 2, "invalid choice: 'pixel'"),
    ("interpolate-too-many-pairs", ["interpolate", "{run}", "--pairs", "200"], 2,
     "--pairs 200 needs 400 images; --split test has 250"),
    ("traverse-dim-out-of-range", ["traverse", "{run}", "--dims", "0-5"], 2,
     "--dims: latent dimension 5 is out of range: this model has 2 (0 to 1)"),
    ("traverse-dims-not-a-range", ["traverse", "{run}", "--dims", "a-b"], 2, "use a range 0-9, a number"),
    ("traverse-index-out-of-range", ["traverse", "{run}", "--index", "250"], 2,
     "--index 250 is out of range: --split test has 250 images"),
    ("traverse-span-zero", ["traverse", "{run}", "--span", "0"], 2, "argument --span: 0 must be a finite"),
    ("layers-temperature-negative", ["layers", "{run}", "--temperature", "-1"], 2,
     "argument --temperature: -1 must be a finite number in [0.0, inf)"),
    ("layers-out-unknown-format", ["layers", "{run}", "--out", "{tmp}/l.layers"], 2, "unknown image format"),
    ("reconstruct-images-missing", ["reconstruct", "{run}", "--images", "{tmp}/nope"], 2,
     "nope: not a folder of images or an .npz file"),
    ("reconstruct-wrong-size", ["reconstruct", "{run}", "--images", "{big_npz}"], 2,
     "image 0 is 10x10 with 1 channel(s); this run's images are 8x8 with 1"),
    ("reconstruct-gray-for-binary", ["reconstruct", "{run}", "--images", "{gray_npz}"], 2,
     "2 gray levels, but this run models binary images (0 or 255): threshold them first"),
    # --- OS errors: one line naming the path ---
    ("disk-full", ["sample", "{run}", "--out", "{full}"], 1, "full.png: No space left on device"),
    ("read-only-folder", ["train", "--run-dir", "{readonly}/run", "model.hidden=[8]", "train.epochs=1"], 1,
     "run: Permission denied"),
]  # fmt: skip

TINY = ["model.hidden=[8]", "model.latent_dim=2", "train.epochs=1", "eval.samples=2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("bad") / "run"
    run_cli("train", "--run-dir", str(run), "--no-progress", *TINY)
    return run


@pytest.fixture
def places(trained: Path, tmp_path: Path) -> dict[str, str]:
    """The placeholders' paths; every one lives under pytest's tmp dirs."""
    (tmp_path / "file.txt").write_text("not a folder\n")
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    cfg = yaml.safe_load((trained / "config.yaml").read_text())
    torch.save({"config": cfg, "image_shape": [1, 8, 8], "binary": True}, incomplete / "best.pt")
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "best.pt").write_bytes((trained / "best.pt").read_bytes()[:200])
    (truncated / "config.yaml").write_text((trained / "config.yaml").read_text())
    (tmp_path / "bad.yaml").write_text("train:\n  lr: -1\n")
    hierarchical = "model:\n  type: hierarchical\n  posterior: up-iaf\n  latent_dim: 5\n"
    (tmp_path / "hier.yaml").write_text(hierarchical)
    np.savez(tmp_path / "images.npz", x=np.zeros((40, 8, 8), np.uint8))
    np.savez(tmp_path / "big.npz", np.zeros((2, 10, 10), np.uint8))
    np.savez(tmp_path / "gray.npz", np.full((2, 8, 8), 128, np.uint8) * np.eye(8, dtype=np.uint8))
    return {
        "run": str(trained), "tmp": str(tmp_path / "empty"), "file": str(tmp_path / "file.txt"),
        "incomplete": str(incomplete), "truncated": str(truncated), "bad_yaml": str(tmp_path / "bad.yaml"),
        "hier_yaml": str(tmp_path / "hier.yaml"),
        "full": str(tmp_path / "full.png"), "readonly": str(tmp_path / "readonly"),
        "npz": str(tmp_path / "images.npz"), "big_npz": str(tmp_path / "big.npz"),
        "gray_npz": str(tmp_path / "gray.npz"),
    }  # fmt: skip


def _snapshot(*roots: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for root in roots for p in root.rglob("*")}


@pytest.mark.parametrize(
    "argv, code, fragment", [case[1:] for case in BAD_INPUTS], ids=[case[0] for case in BAD_INPUTS]
)
def test_bad_input_is_refused_in_one_line_before_writing(
    argv: list[str], code: int, fragment: str, places: dict[str, str], tmp_path: Path, monkeypatch
) -> None:
    if "--device" in argv and "cuda" in argv and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    if "{full}" in " ".join(argv):
        if not Path("/dev/full").exists():
            pytest.skip("no /dev/full")
        os.symlink("/dev/full", places["full"])
    if "{readonly}" in " ".join(argv):
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        Path(places["readonly"]).mkdir(mode=0o555)
    Path(places["tmp"]).mkdir()
    args = [a.format(**places) for a in argv]
    monkeypatch.chdir(tmp_path)  # a default run folder (runs/...) would land here
    before = _snapshot(tmp_path, Path(places["run"]))
    try:
        proc = run_cli(*args, check=False)
    finally:
        if Path(places["readonly"]).exists():
            Path(places["readonly"]).chmod(0o755)
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert _snapshot(tmp_path, Path(places["run"])) == before  # nothing written, nothing touched


def test_the_table_covers_every_subcommand_and_names_each_case_once() -> None:
    names = [case[0] for case in BAD_INPUTS]
    assert len(names) == len(set(names))
    assert {case[1][0] for case in BAD_INPUTS} == {
        "train", "eval", "sample", "gaps", "encode", "interpolate", "traverse", "layers", "reconstruct"
    }  # fmt: skip


def test_the_two_tables_name_each_case_once() -> None:
    from test_bad_inputs_run import CASES

    names = [case[0] for case in BAD_INPUTS] + [case[0] for case in CASES]
    assert len(names) == len(set(names))
    assert all(len(case) == 4 for case in [*BAD_INPUTS, *CASES])
