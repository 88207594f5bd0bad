import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT

from flowvae.checkpoint import load_checkpoint, load_run
from flowvae.config import apply_overrides
from flowvae.core import ElboTerms
from flowvae.data import load_data
from flowvae.optim import (
    budget_horizon,
    evaluate_elbo,
    kl_weight,
    learning_rate,
    optimizer_for,
    train_step,
    training_loss,
)
from flowvae.presets import preset
from flowvae.rundir import TrainingError, prepare_run
from flowvae.train import train

SMALL = [
    "model.hidden=[32]", "model.latent_dim=4", "train.batch_size=100", "train.epochs=3",
    "train.ema=0.9", "train.kl_warmup_epochs=2", "train.lr_schedule=cosine", "eval.samples=10",
]  # fmt: skip


def small_cfg(*extra):
    return apply_overrides(preset("digits"), SMALL + list(extra))


def rows(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


@pytest.mark.parametrize("optimizer", ["adam", "adam-normgrad", "adamax"])
def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path, optimizer):
    a, b = tmp_path / "a", tmp_path / "b"
    train(small_cfg(f"train.optimizer={optimizer}"), a, progress=False)
    state = train(small_cfg(f"train.optimizer={optimizer}", "train.max_steps=17"), b, progress=False)
    assert state.stopped == "max_steps=17" and state.batch == 4
    # evaluated at the stop: the last row (epochs done: 1 + 4/13) and best.pt are the final weights
    assert [(r["epoch"], r["step"]) for r in rows(b)] == [("1", "13"), (str(round(1 + 4 / 13, 3)), "17")]
    valid = [float(r["valid_elbo"]) for r in rows(b)]
    assert load_checkpoint(b / "best.pt")["state"]["step"] == (17 if valid[1] > valid[0] else 13)
    cfg = prepare_run(None, b, True, ["train.max_steps=0"])
    train(cfg, b, resume=True, progress=False)
    epoch_ends = [r for r in rows(b) if "." not in r["epoch"]]
    assert rows(a) == epoch_ends and len(rows(a)) == 3
    ma, mb = load_checkpoint(a / "checkpoint.pt"), load_checkpoint(b / "checkpoint.pt")
    for key in ma["model"]:
        assert torch.equal(ma["model"][key], mb["model"][key]), key
    for key in ma["ema"]:
        assert torch.equal(ma["ema"][key], mb["ema"][key]), key


def test_resume_refuses_changes_that_break_exactness(tmp_path):
    train(small_cfg("train.epochs=1"), tmp_path / "r", progress=False)
    with pytest.raises(Exception, match="cannot change model.latent_dim"):
        prepare_run(None, tmp_path / "r", True, ["model.latent_dim=3"])
    with pytest.raises(TrainingError, match="already holds a run"):
        prepare_run(small_cfg(), tmp_path / "r", False, [])


def _cli_env():
    return {**os.environ, "PYTHONPATH": str(ROOT / "src")}


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path):
    args = ["--run-dir={}", "--no-progress", *SMALL, "train.epochs=4", "train.checkpoint_every_steps=3"]
    full = tmp_path / "full"
    cmd = [sys.executable, "-m", "flowvae", "train"]
    subprocess.run(cmd + [a.format(full) for a in args], check=True, env=_cli_env(), timeout=300)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(cmd + [a.format(killed) for a in args], env=_cli_env())
    deadline = time.time() + 120
    while time.time() < deadline:  # wait for a mid-run checkpoint, then kill -9
        ckpt = killed / "checkpoint.pt"
        if ckpt.exists() and load_checkpoint(ckpt)["state"]["step"] >= 20:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step = load_checkpoint(killed / "checkpoint.pt")["state"]["step"]  # never torn
    assert step >= 20
    subprocess.run(cmd + ["--resume", str(killed), "--no-progress"], check=True, env=_cli_env(), timeout=300)
    assert rows(full) == rows(killed) and len(rows(full)) == 4


def test_free_bits_change_the_objective_not_the_reported_elbo(tmp_path):
    log_lik = torch.tensor([[-10.0, -12.0]])
    log_q = torch.tensor([[1.0, 1.2]], requires_grad=True)
    terms = ElboTerms(log_lik, torch.tensor([[-0.5, -0.5]]), log_q)
    loss = training_loss(terms, beta=1.0, kl_min=1.0, latent_dim=4)  # KL 1.6 < 4 nats: clamped
    loss.backward()
    assert torch.equal(log_q.grad, torch.zeros_like(log_q))
    assert loss.item() == pytest.approx(11.0 + 4.0)
    assert terms.log_weight.mean().item() == pytest.approx(-11.0 - 1.6)
    # end to end: the valid ELBO logged under free bits is the true ELBO of the saved model
    cfg = small_cfg("train.kl_min=2.0", "train.epochs=1", "train.ema=0")
    train(cfg, tmp_path / "fb", progress=False)
    model = load_run(tmp_path / "fb", "best").model
    logged = float(rows(tmp_path / "fb")[0]["valid_elbo"])
    assert evaluate_elbo(model, load_data(cfg.data), "valid", cfg) == pytest.approx(logged, abs=1e-6)


def test_schedules():
    cfg = small_cfg("train.lr=0.01", "train.lr_min=0.001")
    assert learning_rate(cfg, 0) == pytest.approx(0.01)
    assert learning_rate(cfg, 3) == pytest.approx(0.001)
    assert kl_weight(cfg, 1.0) == pytest.approx(0.5) and kl_weight(cfg, 5) == 1.0
    cfg = apply_overrides(cfg, ["train.lr_schedule=exponential", "train.lr_decay=0.5"])
    assert learning_rate(cfg, 2.5) == pytest.approx(0.0025)


def test_cosine_budget_ends_its_decay_when_the_time_is_up():
    cfg = small_cfg("train.lr=0.01", "train.lr_min=0.001", "train.lr_schedule=cosine-budget")
    cfg = apply_overrides(cfg, ["train.epochs=100"])
    assert budget_horizon(cfg, 2, 2.0, 10.0) == 100.0  # no time budget: train.epochs
    cfg = apply_overrides(cfg, ["train.max_minutes=1"])
    # 2 epochs took 10 s of the 60: 50 s left at 5 s an epoch -> ends after epoch 12
    assert budget_horizon(cfg, 2, 2.0, 10.0) == pytest.approx(12.0)
    assert budget_horizon(cfg, 30, 30.0, 70.0) == pytest.approx(30.0)  # over time: now
    assert budget_horizon(cfg, 2, 2.0, 0.5) == 100.0  # fast epochs: train.epochs comes first
    assert learning_rate(cfg, 6.0, 12.0) == pytest.approx(0.0055)  # half way: the mean of lr, lr_min
    assert learning_rate(cfg, 12.0, 12.0) == pytest.approx(0.001)
    assert learning_rate(cfg, 20.0, 12.0) == pytest.approx(0.001)
    assert learning_rate(cfg, 50.0, 0.0) == pytest.approx(0.0055)  # before any epoch: train.epochs


def test_cosine_budget_run_reaches_lr_min_at_its_time_budget(tmp_path):
    cfg = small_cfg("train.lr_schedule=cosine-budget", "train.epochs=100000", "train.max_minutes=0.1",
                    "train.lr_min=0.0001", "train.ema=0")  # fmt: skip
    state = train(cfg, tmp_path / "r", progress=False)
    assert state.stopped == "max_minutes=0.1"
    lrs = [float(r["lr"]) for r in rows(tmp_path / "r")]
    assert len(lrs) >= 4 and all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))
    # the horizon was re-estimated every epoch: the decay ended within the last epochs, not before
    assert state.horizon < state.epoch + 3
    assert lrs[-1] < 0.0001 + 0.1 * (0.001 - 0.0001) and lrs[len(lrs) // 4] > 0.0005


def test_iwae_objective_is_the_importance_weighted_bound(tmp_path):
    log_lik = torch.tensor([[-10.0, -12.0], [-11.0, -9.0], [-13.0, -10.5]])
    log_prior = torch.tensor([[-3.0, -2.0], [-2.5, -4.0], [-1.0, -3.0]])
    log_q = torch.tensor([[1.0, 0.5], [0.0, -0.5], [2.0, 0.3]])
    terms = ElboTerms(log_lik, log_prior, log_q)
    w = log_lik + 0.5 * (log_prior - log_q)
    expected = -(torch.logsumexp(w, 0) - torch.log(torch.tensor(3.0))).mean()
    assert training_loss(terms, 0.5, 0.0, 4, "iwae").item() == pytest.approx(expected.item())
    # tighter than the ELBO (Jensen), and the ELBO with one sample
    assert training_loss(terms, 1.0, 0.0, 4, "iwae") < training_loss(terms, 1.0, 0.0, 4, "elbo")
    one = ElboTerms(log_lik[:1], log_prior[:1], log_q[:1])
    elbo_loss = training_loss(one, 1.0, 0.0, 4).item()
    assert training_loss(one, 1.0, 0.0, 4, "iwae").item() == pytest.approx(elbo_loss)
    # a run with it trains, and reports the ELBO (not the bound) as its valid number
    cfg = small_cfg("train.objective=iwae", "train.samples=3", "train.epochs=1", "train.ema=0")
    train(cfg, tmp_path / "iw", progress=False)
    model = load_run(tmp_path / "iw", "best").model
    logged = float(rows(tmp_path / "iw")[0]["valid_elbo"])
    assert evaluate_elbo(model, load_data(cfg.data), "valid", cfg) == pytest.approx(logged, abs=1e-6)


def test_weight_decay_is_decoupled_for_adam_and_coupled_for_adamax():
    model = torch.nn.Linear(3, 2)
    cfg = small_cfg("train.weight_decay=0.1", "train.lr=0.01")
    opt = optimizer_for(cfg, model)
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["weight_decay"] == 0.1
    before = model.weight.detach().clone()
    model.weight.grad, model.bias.grad = torch.zeros_like(model.weight), torch.zeros_like(model.bias)
    opt.step()  # zero gradient: only the decay acts, w <- w (1 - lr wd)
    assert torch.allclose(model.weight, before * (1 - 0.01 * 0.1), rtol=1e-6, atol=0)
    assert type(optimizer_for(small_cfg(), model)) is torch.optim.Adam
    adamax = optimizer_for(apply_overrides(cfg, ["train.optimizer=adamax"]), model)
    assert isinstance(adamax, torch.optim.Adamax) and adamax.param_groups[0]["weight_decay"] == 0.1


def test_nonfinite_updates_are_skipped_and_divergence_stops_cleanly(tmp_path, monkeypatch):
    from flowvae import train as train_module

    cfg = small_cfg("train.epochs=2")
    real = train_module.train_step
    calls = {"n": 0}

    def poisoned(model, optimizer, x, cfg, beta, lr):
        calls["n"] += 1
        if calls["n"] == 3:  # one NaN batch: skipped, counted, training goes on
            x = x * float("nan")
        return real(model, optimizer, x, cfg, beta, lr)

    monkeypatch.setattr(train_module, "train_step", poisoned)
    state = train(cfg, tmp_path / "one", progress=False)
    assert state.skipped == 1 and state.epoch == 2
    always_nan = lambda m, o, x, c, b, lr: real(m, o, x * float("nan"), c, b, lr)  # noqa: E731
    monkeypatch.setattr(train_module, "train_step", always_nan)
    cfg = small_cfg("train.epochs=60", "train.checkpoint_every_steps=1")
    with pytest.raises(TrainingError, match="diverged"):
        train(cfg, tmp_path / "nan", progress=False)


@pytest.mark.parametrize(
    "model", [[], ["model.prior=flow", "model.prior_flow_hidden=8"], ["model.stochastic_layers=2"]],
    ids=["standard", "flow-prior", "two-layer"],
)
def test_new_encoder_on_a_frozen_trained_decoder(tmp_path, model):
    """The generative model (everything but the encoder and posterior: a learned prior, p(z1|z2)
    too) is copied from the trained run and never updated (Cremer et al.'s protocol)."""
    base = small_cfg("train.epochs=1", *model)
    train(base, tmp_path / "base", progress=False)
    trained = load_run(tmp_path / "base", "best").model
    cfg = small_cfg("train.epochs=1", "train.freeze=decoder", f"train.init_from={tmp_path / 'base'}", *model)
    train(cfg, tmp_path / "new", progress=False)
    new = load_checkpoint(tmp_path / "new" / "checkpoint.pt")["model"]
    old = trained.state_dict()
    assert any(key.startswith("prior.") for key in new) == bool(model)
    for key in new:
        if not key.startswith(("encoder.", "posterior.")):
            assert torch.equal(new[key], old[key]), key  # loaded and never updated
        else:
            assert not torch.equal(new[key], old[key]), key  # a fresh encoder, trained
    with pytest.raises(Exception, match="needs train.init_from"):
        train(small_cfg("train.freeze=decoder"), tmp_path / "x", progress=False)


def test_decoder_widths_are_separate_from_the_encoders():
    from flowvae.model import build_model

    cfg = apply_overrides(preset("digits"), ["model.hidden=[40]", "model.decoder_hidden=[]"])
    model = build_model(cfg.model, (1, 8, 8), True)
    assert [m.out_features for m in model.encoder.modules() if isinstance(m, torch.nn.Linear)] == [40]
    assert [m.out_features for m in model.decoder.modules() if isinstance(m, torch.nn.Linear)] == [64]
    cfg = apply_overrides(cfg, ["model.decoder_hidden=null"])
    assert cfg.model.decoder_hidden is None


def test_bf16_autocast_trains_and_reports_in_float32(tmp_path):
    import json

    state = train(small_cfg("train.epochs=1", "train.amp=bf16"), tmp_path / "amp", progress=False)
    row = rows(tmp_path / "amp")[0]
    assert state.skipped == 0 and -100 < float(row["valid_elbo"]) < 0
    (entry,) = [json.loads(line) for line in open(tmp_path / "amp" / "invocations.jsonl")]
    assert entry["precision"].startswith("bf16 autocast (train.amp=bf16")
    # the reported valid ELBO is the float32 one of the saved weights (same process: equal)
    run = load_run(tmp_path / "amp", "best")
    cfg = small_cfg("train.epochs=1")
    assert evaluate_elbo(run.model.float(), load_data(cfg.data), "valid", cfg) == pytest.approx(
        float(row["valid_elbo"]), rel=1e-6
    )
    with pytest.raises(
        Exception, match="train.amp: .fp8. is not a valid value; valid values: auto, none, bf16"
    ):  # noqa: E501
        train(small_cfg("train.amp=fp8"), tmp_path / "bad", progress=False)


@pytest.mark.parametrize("clip", [0.0, 0.5])
def test_a_training_step_syncs_with_the_host_once(clip, monkeypatch):
    """One transfer per step (loss, ELBO, KL and gradient norm together), whatever the
    clipping; the reported gradient norm is that of the gradients before clipping."""
    from flowvae.model import build_model

    cfg = small_cfg(f"train.grad_clip={clip}", "train.amp=none")
    model = build_model(cfg.model, (1, 8, 8), True)
    x = (torch.rand(16, 1, 8, 8) < 0.5).float()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # keeps the weights: grads stay readable
    syncs = []
    for name in ("item", "tolist", "__float__", "__bool__"):
        real = getattr(torch.Tensor, name)
        counted = lambda self, *a, _r=real, _n=name: syncs.append(_n) or _r(self, *a)  # noqa: E731
        monkeypatch.setattr(torch.Tensor, name, counted)
    torch.manual_seed(0)
    out = train_step(model, optimizer, x, cfg, beta=1.0, lr=0.0)
    monkeypatch.undo()
    assert syncs == ["tolist"]
    torch.manual_seed(0)
    model.zero_grad()
    terms = model(x, 1)
    training_loss(terms, 1.0, 0.0, model.latent_dim).backward()
    norm = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).norm()
    assert out["grad_norm"] == pytest.approx(norm.item(), rel=1e-4)


@pytest.mark.parametrize("native", [True, False])
def test_amp_auto_uses_bf16_exactly_where_the_hardware_has_it(native, monkeypatch):
    """``train.amp=auto`` (the default) autocasts the training forward pass to bf16 where the
    device multiplies bf16 natively, and stays float32 elsewhere; ``none``/``bf16`` force it."""
    import flowvae.optim as optim_module
    from flowvae.model import build_model

    monkeypatch.setattr(optim_module, "native_bf16", lambda device_type: native)
    assert small_cfg().train.amp == "auto"
    model = build_model(small_cfg().model, (1, 8, 8), True)
    seen = []
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    first.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    x = (torch.rand(16, 1, 8, 8) < 0.5).float()
    for amp, bf16 in (("auto", native), ("none", False), ("bf16", True)):
        cfg = small_cfg(f"train.amp={amp}")
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        out = train_step(model, optimizer, x, cfg, beta=1.0, lr=1e-3)
        assert seen.pop() == (torch.bfloat16 if bf16 else torch.float32), amp
        assert all(isinstance(v, float) for v in out.values())
        note = optim_module.precision_note(amp, "cpu")
        assert note.startswith("bf16 autocast" if bf16 else "float32"), note


def test_torch_compile_trains_and_saves_plain_weights(tmp_path):
    train(small_cfg("train.epochs=1", "train.compile=true", "train.ema=0"), tmp_path / "c", progress=False)
    ckpt = load_checkpoint(tmp_path / "c" / "checkpoint.pt")
    assert not any("_orig_mod" in k for k in ckpt["model"])
    model = load_run(tmp_path / "c", "best").model  # loads into an uncompiled model
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_asking_for_cuda_without_it_is_a_clear_error(tmp_path):
    with pytest.raises(Exception, match="CUDA is not available"):
        train(small_cfg("train.device=cuda"), tmp_path / "cuda", progress=False)


def test_ema_forgets_its_initialisation_early_and_averages_later():
    from flowvae.optim import EMA

    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    ema = EMA(model, 0.999)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model, step=1)  # decay min(0.999, 2/11): mostly the new weights
    assert ema.model.weight.item() == pytest.approx(1 - 2 / 11)
    ema.update(model, step=100_000)  # decay 0.999 once warmed up
    assert ema.model.weight.item() == pytest.approx(1 - (2 / 11) * 0.999)


# ----------------------------------------------------------------------------- divergence, Ctrl-C, budgets


def _poison_from(monkeypatch, first_bad_call: int):
    """From the ``first_bad_call``-th training step on, the weights are set to NaN before the step."""
    from flowvae import train as train_module

    real, calls = train_module.train_step, {"n": 0}

    def poisoned(model, optimizer, x, cfg, beta, lr):
        calls["n"] += 1
        if calls["n"] >= first_bad_call:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
        return real(model, optimizer, x, cfg, beta, lr)

    monkeypatch.setattr(train_module, "train_step", poisoned)


def test_diverged_weights_never_reach_a_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "r"
    cfg = small_cfg("train.ema=0", "train.checkpoint_every_steps=1")
    n = len(load_data(cfg.data).train) // cfg.train.batch_size + 1  # batches per epoch (13)
    _poison_from(monkeypatch, n + 3)  # epoch 2 goes bad
    with pytest.raises(TrainingError, match=f"the last good checkpoint is .*checkpoint.pt .step {n + 2}"):
        train(cfg, run, progress=False)
    for name, step in (("checkpoint.pt", n + 2), ("best.pt", n)):
        ckpt = load_checkpoint(run / name)
        assert ckpt["state"]["step"] == step
        assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_a_diverging_learning_rate_stops_without_writing_a_checkpoint(tmp_path):
    # one step takes |w| to ~1e6, after which every loss is NaN and every update skipped
    with pytest.raises(TrainingError, match=r"of 13 updates of epoch 1 were skipped .*; no checkpoint was"):
        train(small_cfg("train.lr=1e6"), tmp_path / "r", progress=False)
    assert not (tmp_path / "r" / "checkpoint.pt").exists() and not (tmp_path / "r" / "best.pt").exists()


def test_a_nan_valid_elbo_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from flowvae import train as train_module

    real = train_module.evaluate_elbo
    values = iter([None, float("nan")])
    monkeypatch.setattr(train_module, "evaluate_elbo", lambda *a: next(values) or real(*a))
    with pytest.raises(TrainingError, match="valid ELBO after epoch 2 is nan; the last good .*step 13"):
        train(small_cfg(), tmp_path / "r", progress=False)
    for name in ("checkpoint.pt", "best.pt"):
        assert load_checkpoint(tmp_path / "r" / name)["state"]["step"] == 13


def test_eval_of_a_model_with_nan_weights_exits_nonzero(tmp_path):
    from conftest import run_cli

    from flowvae.checkpoint import save_atomic

    train(small_cfg("train.epochs=1", "train.ema=0"), tmp_path / "r", progress=False)
    ckpt = load_checkpoint(tmp_path / "r" / "best.pt")
    first = next(iter(ckpt["model"]))
    ckpt["model"][first].fill_(float("nan"))
    save_atomic(ckpt, tmp_path / "r" / "best.pt")
    proc = run_cli("eval", str(tmp_path / "r"), "--samples", "2", "--json", check=False)
    assert proc.returncode == 1 and "not finite" in proc.stderr and proc.stdout == ""


@pytest.mark.parametrize("at", [5, 13], ids=["mid-epoch", "epoch-end"])
def test_ctrl_c_writes_a_checkpoint_and_resume_matches_uninterrupted(tmp_path, monkeypatch, at):
    from conftest import run_cli

    from flowvae import train as train_module

    args = [*SMALL, "train.epochs=2"]
    run_cli("train", "--run-dir", str(tmp_path / "full"), "--no-progress", *args)
    real, calls = train_module.train_step, {"n": 0}

    def ctrl_c_at(*a):
        calls["n"] += 1
        if calls["n"] == at:
            os.kill(os.getpid(), signal.SIGINT)  # as a terminal's Ctrl-C: handled, not raised here
        return real(*a)

    monkeypatch.setattr(train_module, "train_step", ctrl_c_at)
    run = tmp_path / "int"
    proc = run_cli("train", "--run-dir", str(run), "--no-progress", *args, check=False)
    assert proc.returncode == 130 and f"--resume {run}" in proc.stderr
    lines = proc.stderr.strip().splitlines()  # the start-up line(s), then one line saying where it stopped
    assert [line for line in lines if line.startswith("flowvae:")] == lines[-1:]
    assert load_checkpoint(run / "checkpoint.pt")["state"]["step"] == at  # nothing lost
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    monkeypatch.setattr(train_module, "train_step", real)
    run_cli("train", "--resume", str(run), "--no-progress")
    assert rows(run) == rows(tmp_path / "full")
    a, b = load_checkpoint(run / "checkpoint.pt"), load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_temp_files_left_by_a_kill_are_removed_at_the_next_start(tmp_path):
    run = tmp_path / "r"
    train(small_cfg("train.epochs=1"), run, progress=False)
    (run / ".checkpoint.pt.k1ll3d").write_bytes(b"torn")
    (run / ".metrics.csv.tmp").write_bytes(b"torn")
    train(prepare_run(None, run, True, ["train.epochs=2"]), run, resume=True, progress=False)
    assert not [p for p in run.iterdir() if p.name.startswith(".")]


def test_budgets_count_per_invocation_and_each_resume_is_recorded(tmp_path):
    import json

    run = tmp_path / "r"
    cfg = small_cfg("train.max_steps=5")
    assert train(cfg, run, progress=False, overrides=["train.max_steps=5"]).step == 5
    resumed = prepare_run(None, run, True, ["train.max_minutes=1e-9"])  # the case: one step
    assert train(resumed, run, resume=True, progress=False, overrides=["train.max_minutes=1e-9"]).step == 6
    resumed = prepare_run(None, run, True, ["train.max_steps=3"])
    assert train(resumed, run, resume=True, progress=False, overrides=["train.max_steps=3"]).step == 9
    plain = prepare_run(None, run, True, [])  # no budget: to the end (3 epochs of 13 steps)
    assert plain.train.max_steps == 0 and plain.train.max_minutes == 0
    state = train(plain, run, resume=True, progress=False)
    assert state.step == 39 and state.epoch == 3 and not state.stopped
    lines = [json.loads(line) for line in (run / "invocations.jsonl").read_text().splitlines()]
    assert [(e["resume"], e["step"], e["overrides"]) for e in lines] == [
        (False, 0, ["train.max_steps=5"]), (True, 5, ["train.max_minutes=1e-9"]),
        (True, 6, ["train.max_steps=3"]), (True, 9, []),
    ]  # fmt: skip


def test_progress_keeps_one_line_per_evaluation_and_tensorboard_gets_the_grids(tmp_path, monkeypatch):
    """On a terminal: a bar over the whole run, and one evaluation line per epoch above it."""
    import io

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    err = Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    run = tmp_path / "r"
    train(small_cfg("train.epochs=2"), run, progress=True)
    lines = [line for line in err.getvalue().splitlines() if "valid ELBO" in line]
    assert len(lines) == 2 and lines[0].lstrip("\r ").startswith("epoch 1/2") and "best" in lines[1]
    assert "/26" in err.getvalue()  # one bar over the whole run (2 epochs x 13 steps): its ETA is the run's
    (events,) = run.glob("events.out.tfevents*")
    acc = EventAccumulator(str(events), size_guidance={"images": 0})
    acc.Reload()
    assert {"samples", "reconstructions"} <= set(acc.Tags()["images"])
    assert [e.step for e in acc.Images("samples")] == [13, 26]


def test_the_bar_of_a_timed_run_ends_with_its_time_budget(tmp_path, monkeypatch):
    """Under train.max_minutes the bar's total is the steps that fit in the time left at the pace
    so far, not train.epochs' worth."""
    import io
    import re

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    err = Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    state = train(small_cfg("train.epochs=100000", "train.max_minutes=0.03"), tmp_path / "r", progress=True)
    assert state.stopped == "max_minutes=0.03"
    done, total = map(int, re.findall(r"(\d+)/(\d+) steps", err.getvalue())[-1])  # its last redraw
    assert 0 < done <= state.step and total <= 3 * state.step  # not 100000 x 13


@pytest.mark.parametrize("flag", [[], ["--no-progress"]])
def test_training_into_a_log_file_prints_one_line_per_evaluation(tmp_path, flag):
    """stderr not a terminal (a log file), with or without --no-progress: the start-up lines and
    one line per evaluation with its step, ELBOs, KL, elapsed time and ETA; no carriage return."""
    log = tmp_path / "train.log"
    cmd = [sys.executable, "-m", "flowvae", "train", "--run-dir", str(tmp_path / "r"), *flag, *SMALL]
    with open(log, "w") as f:
        subprocess.run(cmd, check=True, env=_cli_env(), timeout=300, stderr=f, stdout=subprocess.DEVNULL)
    text = log.read_text()
    assert "\r" not in text and text.startswith("training precision: ")
    lines = [line for line in text.splitlines() if "valid ELBO" in line]
    assert [line.split()[1] for line in lines] == ["1/3", "2/3", "3/3"]
    for line in lines:
        assert all(word in line for word in ("step ", "train ELBO", "KL ", "elapsed ", "ETA "))


def test_tensorboard_drops_what_a_killed_invocation_logged_after_its_checkpoint(tmp_path):
    import shutil

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "r"
    train(small_cfg("train.epochs=1"), run, progress=False)
    shutil.copy(run / "checkpoint.pt", tmp_path / "step13.pt")
    train(prepare_run(None, run, True, ["train.epochs=2"]), run, resume=True, progress=False)
    shutil.copy(tmp_path / "step13.pt", run / "checkpoint.pt")  # as if killed before its last save
    train(prepare_run(None, run, True, ["train.epochs=2"]), run, resume=True, progress=False)
    acc = EventAccumulator(str(run), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("valid_elbo")] == [13, 26]
    assert [e.step for e in acc.Images("samples")] == [13, 26]


def test_training_without_a_validation_split_keeps_the_latest_weights(tmp_path):
    cfg = small_cfg("train.epochs=2", "data.valid_size=0", "data.test_size=100")
    assert len(load_data(cfg.data).valid) == 0
    state = train(cfg, tmp_path / "all", progress=False)  # raised ZeroDivisionError at epoch 1
    assert [r["valid_elbo"] for r in rows(tmp_path / "all")] == ["nan", "nan"]
    assert state.best_epoch == 2 and (tmp_path / "all" / "best.pt").exists()
    best = load_checkpoint(tmp_path / "all" / "best.pt")
    last = load_checkpoint(tmp_path / "all" / "checkpoint.pt")
    assert all(torch.equal(best["model"][k], last["model"][k]) for k in last["model"])
    with pytest.raises(Exception, match="early_stopping needs a validation split"):
        train(small_cfg("data.valid_size=0", "data.test_size=100", "train.early_stopping=2"), tmp_path / "es")


def _interrupt_at(monkeypatch, at):
    """Ctrl-C (a real SIGINT, handled as a terminal's) during the ``at``-th update."""
    from flowvae import train as train_module

    real, calls = train_module.train_step, {"n": 0}

    def ctrl_c_at(*a):
        calls["n"] += 1
        if calls["n"] == at:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*a)

    monkeypatch.setattr(train_module, "train_step", ctrl_c_at)
    return real


def test_resume_after_ctrl_c_keeps_what_is_left_of_the_budget(tmp_path, monkeypatch):
    """`--resume` after Ctrl-C finishes the interrupted invocation's budget instead of running on
    to train.epochs (a 4-minute run went on toward 100,000 epochs); an override replaces it."""
    from flowvae.train import Interrupted

    real = _interrupt_at(monkeypatch, 5)
    run = tmp_path / "r"
    with pytest.raises(Interrupted) as e:
        train(small_cfg("train.max_steps=20", "train.max_minutes=30"), run, progress=False)
    assert "15 steps left of train.max_steps=20" in e.value.cli
    assert "minutes left of train.max_minutes=30" in str(e.value)
    monkeypatch.setattr("flowvae.train.train_step", real)
    resumed = prepare_run(None, run, True, [])
    assert resumed.train.max_steps == 15 and 29 < resumed.train.max_minutes < 30
    assert prepare_run(None, run, True, ["train.max_steps=0"]).train.max_steps == 0
    state = train(resumed, run, resume=True, progress=False)
    assert state.step == 20 and state.stopped == "max_steps=15"
    after_budget = prepare_run(None, run, True, [])  # a budget stop leaves none: on to train.epochs
    assert after_budget.train.max_steps == 0 and after_budget.train.max_minutes == 0
    done = tmp_path / "done"  # nor does a run that reached its train.epochs within its budget
    train(small_cfg("train.epochs=1", "train.max_minutes=30"), done, progress=False)
    assert prepare_run(None, done, True, ["train.epochs=2"]).train.max_minutes == 0


def test_the_bars_eta_never_exceeds_the_time_budget(tmp_path, monkeypatch):
    """The bar's ETA is the run's own projection, bounded by the time left (tqdm's rate knew
    nothing of the budget: a 4-minute run showed ETA 8:38, then 29:51)."""
    import io
    import re

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    err = Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    train(small_cfg("train.epochs=100000", "train.max_minutes=0.03"), tmp_path / "r", progress=True)
    found = re.findall(r"ETA=(\d+):(\d\d):(\d\d)", err.getvalue())
    etas = [int(h) * 3600 + int(m) * 60 + int(s) for h, m, s in found]
    assert etas and max(etas) <= 0.03 * 60 + 1


def test_a_run_stopped_before_its_warmup_or_decay_ended_says_so(tmp_path):
    from conftest import run_cli

    from flowvae.rundir import schedule_warning

    cfg = small_cfg("train.max_steps=17")  # 1.3 epochs of a 2-epoch warm-up and a 3-epoch cosine
    state = train(cfg, tmp_path / "cut", progress=False)
    warning = schedule_warning(state, cfg.train)
    assert "stopped (max_steps=17) at step 17" in warning
    assert "KL warm-up (KL weight 0.62; 1 after 2 epochs)" in warning
    assert "cosine lr decay" in warning
    assert schedule_warning(train(small_cfg(), tmp_path / "whole", progress=False), cfg.train) == ""
    out = run_cli("train", "--run-dir", str(tmp_path / "cli"), "--no-progress", *SMALL, "train.max_steps=17")
    assert "warning: training stopped (max_steps=17) at step 17 before the end of its KL" in out.stderr


def test_every_result_names_the_weights_it_scored_and_an_unfinished_run(tmp_path, monkeypatch):
    """`flowvae eval` of a run still training scored its epoch-1 best.pt and said nothing: eval and
    gaps name the checkpoint's epoch and step, and warn while the run has not ended."""
    import json

    from conftest import run_cli

    run = tmp_path / "r"
    train(small_cfg("train.max_steps=17"), run, progress=False)  # a budget stop: the run has ended
    out = run_cli("eval", str(run), "--samples", "5", "--json", "--no-cache", "--no-progress")
    trained = json.loads(out.stdout)["trained"]
    assert trained["file"] == "best.pt" and trained["step"] in (13, 17) and trained["unfinished"] is None
    assert "warning" not in out.stderr.replace("k̂", "")  # only the k̂ warning, if any
    latest = run_cli("eval", str(run), "--samples", "5", "--checkpoint", "latest", "--no-progress")
    assert "weights: checkpoint.pt of epoch 1.308 (step 17)" in latest.stdout

    ckpt = load_checkpoint(run / "checkpoint.pt")  # as a run still training (or killed) leaves it
    ckpt["state"]["stopped"] = ""
    torch.save(ckpt, run / "checkpoint.pt")
    out = run_cli("eval", str(run), "--samples", "5", "--no-progress")
    assert "unfinished: no end recorded at step 17, epoch 1 of 3 (still training, or killed)" in out.stderr
    assert "weights: best.pt of epoch" in out.stdout
    gaps = run_cli("gaps", str(run), "--n", "4", "--estimator", "iwae", "--samples", "5", "--no-check",
                   "--local-flow", "none", "--steps-cap", "20", "--elbo-samples", "10", "--json")  # fmt: skip
    report = json.loads(gaps.stdout)
    assert report["trained"]["unfinished"].startswith("no end recorded")
    assert report["warnings"][0].startswith("scored best.pt of epoch")


# a `flowvae` that sends itself SIGNAL just before its first checkpoint.pt is written: best.pt is
# on disk, checkpoint.pt not yet (as `timeout` or a scheduler's kill can land)
SIGNAL_AT_FIRST_CHECKPOINT = """
import os, signal, sys
import flowvae.train as t
from flowvae.cli import main
real = t.save_atomic
def save(obj, path):
    if path.name == "checkpoint.pt" and not path.exists():
        os.kill(os.getpid(), signal.{})
    real(obj, path)
t.save_atomic = save
sys.exit(main(sys.argv[1:]))
"""


def _signalled_run(tmp_path, name: str, signum: str) -> tuple[subprocess.CompletedProcess, object]:
    args = ["train", "--no-progress", *SMALL, "train.epochs=2"]
    full = tmp_path / "full"
    subprocess.run([sys.executable, "-m", "flowvae", *args, "--run-dir", str(full)], check=True,
                   env=_cli_env(), timeout=300)  # fmt: skip
    run = tmp_path / name
    script = SIGNAL_AT_FIRST_CHECKPOINT.format(signum)
    cmd = [sys.executable, "-c", script, *args, "--run-dir", str(run)]
    return subprocess.run(cmd, env=_cli_env(), capture_output=True, text=True, timeout=300), run


def test_sigterm_while_the_first_checkpoint_is_written_stops_with_it_then_resume_matches(tmp_path):
    proc, run = _signalled_run(tmp_path, "term", "SIGTERM")
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("flowvae: interrupted; stopped by SIGTERM at step")
    assert f"--resume {run}" in proc.stderr and "Traceback" not in proc.stderr
    assert load_checkpoint(run / "checkpoint.pt")["state"]["step"] > 0  # the write was finished
    subprocess.run([sys.executable, "-m", "flowvae", "train", "--resume", str(run), "--no-progress"],
                   check=True, env=_cli_env(), timeout=300)  # fmt: skip
    assert rows(run) == rows(tmp_path / "full")


def test_a_run_killed_before_its_first_checkpoint_resumes_from_best_pt(tmp_path):
    proc, run = _signalled_run(tmp_path, "killed", "SIGKILL")
    assert proc.returncode == -signal.SIGKILL
    assert (run / "best.pt").exists() and not (run / "checkpoint.pt").exists()
    resumed = subprocess.run(
        [sys.executable, "-m", "flowvae", "train", "--resume", str(run), "--no-progress"],
        env=_cli_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert f"flowvae: note: {run} has no checkpoint.pt" in resumed.stderr
    assert "resuming from best.pt" in resumed.stderr
    assert rows(run) == rows(tmp_path / "full")
