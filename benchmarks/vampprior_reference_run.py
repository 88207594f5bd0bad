"""The VampPrior paper's code trained to the end, resumably: the reference column of issue 32's table.

The reference's loop (``utils/perform_experiment.py::experiment_vae`` in ``../shared/peers/vae_vampprior``)
keeps its state in local variables and saves only the best model, so a run of a few hundred epochs
(about 4 h on one core) must finish in one sitting. ``train`` runs the same loop on the same objects
and checkpoints after every epoch, so it can stop and continue:

- setup as ``../shared/peers/run_vampprior.py``: ``experiment.py`` parses its own argv (its defaults)
  and seeds torch; numpy is seeded with the same seed (the loader's one shuffle of the training set);
  ``load_dataset``, the model class and ``AdamNormGrad(lr)`` as in ``experiment.run``;
- each epoch: the reference's ``train_vae`` and ``evaluate_vae(mode='validation')``, unchanged; then
  its rule, copied: a strictly lower valid loss resets the counter and keeps the model as the best;
  otherwise the counter grows, is reset to 0 while ``epoch < warmup``, and the run stops once it
  exceeds ``early_stopping_epochs``; a NaN valid loss stops it;
- after each epoch ``DIR/checkpoint.pt`` (written to a temporary file, then renamed): the weights,
  AdamNormGrad's state, torch's RNG state (the loader's shuffle and every noise draw come from it),
  the loop's counters and the best weights (the per-epoch losses go to ``DIR/epochs.jsonl``).
  ``train`` on a folder that has one continues from it; a resumed run draws what the uninterrupted
  one would.

``score`` (in flowvae's environment) puts the best weights into our preset
``vampprior-mnist-ROW`` through the weight map of ``tests/test_reference_network.py`` (whose test
checks that both compute the same log-weights, to 1e-10) and scores it with our IWAE. The folder holds
only state dicts (tensors and numbers), read with ``weights_only=True``.

``compare`` prints, every ``--every`` epochs, the reference run's valid loss and its best so far beside
those of our finished or running members of the same row (their ``metrics.csv``: valid −ELBO, β = 1,
one sample, the 10,000 valid images, as the reference's), so the two trainings can be set side by
side while the reference is still running.

    $VAMP_VENV/bin/python benchmarks/vampprior_reference_run.py train --row vae-vamp --seed 0 --out D
    python benchmarks/vampprior_reference_run.py score --out D --data ../shared/data/binarized_mnist
    python benchmarks/vampprior_reference_run.py compare --out D R/vae-vamp/seed-0 R/vae-vamp/seed-1
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import sys
import time
import warnings
from pathlib import Path

from vampprior_pair import PEERS, REFERENCE, ROOT  # the row -> (model, prior) map of the pair


def early_stopping_step(state: dict, epoch: int, val_loss: float, warmup: int, patience: int) -> bool:
    """experiment_vae's rule after an epoch, as written there: a strictly lower valid loss is the
    new best (returns True) and resets the counter; otherwise the counter grows, is reset to 0
    while ``epoch < warmup``, and the run is done once it exceeds ``patience``. A NaN loss ends it."""
    improved = val_loss < state["best_loss"]
    if improved:
        state["e"], state["best_loss"], state["best_epoch"] = 0, float(val_loss), epoch
    else:
        state["e"] += 1
        if epoch < warmup:
            state["e"] = 0
        if state["e"] > patience:
            state["done"] = True
    if val_loss != val_loss:  # NaN
        state["done"] = True
    return improved


def train(opt: argparse.Namespace) -> None:
    out = Path(opt.out).resolve()
    work = Path(opt.work).resolve()
    if not (work / "datasets" / "MNIST_static" / "binarized_mnist_test.amat").is_file():
        sys.exit(
            f"no static MNIST under {work}/datasets/MNIST_static: run ../shared/peers/setup_vampprior.sh"
        )
    out.mkdir(parents=True, exist_ok=True)
    meta = {"row": opt.row, "seed": opt.seed, "epochs": opt.epochs, "threads": opt.threads}
    meta_file = out / "run.json"
    if meta_file.exists() and json.loads(meta_file.read_text()) != meta:
        sys.exit(f"{out} holds a run of other settings: {meta_file.read_text().strip()}")
    meta_file.write_text(json.dumps(meta) + "\n")
    if not (out / "datasets").exists():
        os.symlink(work / "datasets", out / "datasets")
    os.chdir(out)  # the reference reads datasets/ and writes its snapshots and plots under the cwd
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(opt.threads)
    os.environ.setdefault("MPLBACKEND", "Agg")
    warnings.filterwarnings("ignore")
    sys.path.insert(0, str(PEERS / "vae_vampprior"))
    sys.dont_write_bytecode = True

    import numpy as np
    import torch

    torch.set_num_threads(opt.threads)
    model_name, prior = REFERENCE[opt.row]
    sys.argv = ["experiment.py", "--dataset_name", "static_mnist", "--no-cuda", "--model_name", model_name,
                "--prior", prior, "--seed", str(opt.seed), "--epochs", str(opt.epochs)]  # fmt: skip
    with contextlib.redirect_stdout(sys.stderr):
        import experiment  # parses sys.argv, torch.manual_seed(args.seed)
        from utils.evaluation import evaluate_vae
        from utils.load_data import load_dataset
        from utils.optimizer import AdamNormGrad
        from utils.training import train_vae
    args = experiment.args
    np.random.seed(args.seed)
    with contextlib.redirect_stdout(sys.stderr):
        train_loader, val_loader, _test_loader, args = load_dataset(args, **experiment.kwargs)
        if model_name == "vae":
            from models.VAE import VAE
        else:
            from models.HVAE_2level import VAE
        model = VAE(args)
    optimizer = AdamNormGrad(model.parameters(), lr=args.lr)
    snapshot_dir = str(out / "snapshots") + "/"
    os.makedirs(snapshot_dir, exist_ok=True)

    ckpt_path = out / "checkpoint.pt"
    state = {"epoch": 0, "best_loss": 100000.0, "e": 0, "best_epoch": 0, "done": False, "seconds": 0.0}
    best = None
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, weights_only=True)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["rng"])
        state, best = ckpt["state"], ckpt["best"]
        print(f"resumed after epoch {state['epoch']}", file=sys.stderr)

    def save() -> None:
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state(),
                    "state": state, "best": best}, tmp)  # fmt: skip
        os.replace(tmp, ckpt_path)

    log = open(out / "epochs.jsonl", "a")
    epoch = state["epoch"]
    while not state["done"] and epoch < args.epochs:
        epoch += 1
        start = time.time()
        with contextlib.redirect_stdout(sys.stderr):
            model, train_loss, train_re, train_kl = train_vae(epoch, args, train_loader, model, optimizer)
            val_loss, val_re, val_kl = evaluate_vae(args, model, train_loader, val_loader, epoch, snapshot_dir,
                                                    mode="validation")  # fmt: skip
        state["seconds"] += time.time() - start
        if early_stopping_step(state, epoch, val_loss, args.warmup, args.early_stopping_epochs):
            best = {k: v.detach().clone() for k, v in model.state_dict().items()}
        state["epoch"] = epoch
        save()
        line = {"epoch": epoch, "train_loss": float(train_loss), "valid_loss": float(val_loss),
                "valid_kl": float(val_kl), "best_epoch": state["best_epoch"], "counter": state["e"],
                "seconds": round(state["seconds"], 1)}  # fmt: skip
        log.write(json.dumps(line) + "\n")
        log.flush()
        print(json.dumps(line), flush=True)
        if opt.stop_after and epoch >= opt.stop_after:
            break
    if state["done"] or epoch >= args.epochs:
        torch.save(best, out / "best.pt")
        print(
            f"finished: best valid loss {state['best_loss']:.4f} at epoch {state['best_epoch']}",
            file=sys.stderr,
        )


def score(opt: argparse.Namespace) -> None:
    import torch

    import flowvae
    from flowvae.data import load_data

    sys.path[:0] = [str(ROOT / "tests")]
    import test_reference_network as maps  # the weight map whose log-weights the test checks

    out = Path(opt.out)
    meta = json.loads((out / "run.json").read_text())
    best = torch.load(out / "best.pt", weights_only=True)
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    torch.set_num_threads(opt.threads)
    row = meta["row"]
    prior = REFERENCE[row][1]
    cfg = flowvae.preset(f"vampprior-mnist-{row}")
    model = flowvae.build_model(cfg.model, maps.SHAPE, True)
    maps.copy_into(model, (maps.hvae_tensors if row.startswith("hvae") else maps.vae_tensors)(best, prior))
    cfg.data.root = opt.data
    x = load_data(cfg.data).test[: opt.limit or None]
    start = time.time()
    est = flowvae.evaluate(model.eval(), x, "iwae", opt.samples, seed=cfg.eval.seed)
    result = {"row": row, "seed": meta["seed"], "n": est.n, "samples": opt.samples, "test_nll": est.nll,
              "test_stderr": est.stderr, "best_epoch": ckpt["state"]["best_epoch"],
              "epochs": ckpt["state"]["epoch"], "train_hours": round(ckpt["state"]["seconds"] / 3600, 2),
              "score_minutes": round((time.time() - start) / 60, 1)}  # fmt: skip
    (out / "score.json").write_text(json.dumps(result) + "\n")
    print(json.dumps(result))


def valid_curve(run: Path) -> dict[int, float]:
    """Epoch -> valid loss (−ELBO) of a reference folder (epochs.jsonl) or one of our runs (metrics.csv)."""
    if (run / "epochs.jsonl").exists():
        rows = [json.loads(line) for line in (run / "epochs.jsonl").read_text().splitlines() if line]
        return {r["epoch"]: r["valid_loss"] for r in rows}
    with open(run / "metrics.csv") as f:
        return {int(float(r["epoch"])): -float(r["valid_elbo"]) for r in csv.DictReader(f) if r["valid_elbo"]}


def compare(opt: argparse.Namespace) -> None:
    runs = [Path(opt.out), *map(Path, opt.members)]
    curves = [valid_curve(r) for r in runs]
    print("valid loss (−ELBO, β = 1), that epoch / best so far\n")
    print(
        "| epoch | "
        + " | ".join(["reference", *(f"ours `{r.parent.name}/{r.name}`" for r in runs[1:])])
        + " |"
    )
    print("|---|" + "---|" * len(runs))
    last = max(curves[0])
    for e in sorted({*range(opt.every, last + 1, opt.every), last}):
        cells = [
            f"{c[e]:.2f} / {min(v for k, v in c.items() if k <= e):.2f}" if e in c else "—" for c in curves
        ]
        print(f"| {e} | " + " | ".join(cells) + " |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train or continue (in the reference's venv)")
    t.add_argument("--row", choices=sorted(REFERENCE), required=True)
    t.add_argument("--seed", type=int, required=True)
    t.add_argument("--out", required=True, help="the run's folder (outside the repository)")
    t.add_argument("--epochs", type=int, default=2000)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--stop-after", type=int, default=0, help="stop (resumably) after this epoch")
    t.add_argument("--work", default=os.environ.get("VAMP_WORK") or "/tmp/vampprior-peer-work")
    s = sub.add_parser("score", help="our IWAE on the reference's best weights (in flowvae's venv)")
    s.add_argument("--out", required=True)
    s.add_argument("--data", required=True, help="the static-MNIST folder")
    s.add_argument("--samples", type=int, default=5000)
    s.add_argument("--limit", type=int, default=0, help="first N test images (0: all)")
    s.add_argument("--threads", type=int, default=1)
    c = sub.add_parser("compare", help="the reference's valid loss per epoch beside our members'")
    c.add_argument("--out", required=True, help="the reference run's folder")
    c.add_argument("members", nargs="*", help="our run folders of the same row")
    c.add_argument("--every", type=int, default=25)
    opt = p.parse_args()
    {"train": train, "score": score, "compare": compare}[opt.command](opt)


if __name__ == "__main__":
    main()
