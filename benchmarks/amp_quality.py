"""Does bf16 training lose quality? The same run (preset, seed, data order) trained with
``train.amp=none`` (float32) and ``train.amp=bf16`` for a number of epochs, run one after the
other on the same machine; the valid ELBO (always computed in float32) after each epoch and the
training throughput of both. Issue 14 asks for the bf16 run's valid ELBO to stay within 0.2 nat
of the float32 run's after the same number of epochs.

    python benchmarks/amp_quality.py --data ../shared/data/binarized_mnist --epochs 10
    python benchmarks/amp_quality.py --data ../shared/data/binarized_mnist --epochs 2 \\
        model.encoder=gated-conv model.decoder=gated-conv model.latent_dim=64 train.optimizer=adamax \\
        train.lr=0.0005
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

import flowvae
from flowvae.config import apply_overrides


def run(args: argparse.Namespace, amp: str, root: Path) -> dict:
    cfg = apply_overrides(
        flowvae.preset(args.preset),
        [f"data.root={args.data}", f"train.epochs={args.epochs}", "train.eval_every=1",
         f"train.threads={args.threads}", f"train.seed={args.seed}", *args.overrides, f"train.amp={amp}"],
    )  # fmt: skip
    started = time.perf_counter()
    flowvae.fit(cfg, root / amp, progress=False)
    seconds = time.perf_counter() - started
    with open(root / amp / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    steps = int(rows[-1]["step"])
    train_seconds = float(rows[-1]["seconds"])
    return {
        "amp": amp, "valid_elbo": [float(r["valid_elbo"]) for r in rows], "steps": steps,
        "steps_per_s": steps / train_seconds, "seconds": seconds,
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/binarized_mnist")
    p.add_argument("--preset", default="mnist-mlp")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("overrides", nargs="*", help="config key=value overrides for both runs")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = [run(args, amp, Path(tmp)) for amp in ("none", "bf16")]
    fp32, bf16 = results
    print(json.dumps({
        "preset": args.preset, "overrides": args.overrides, "epochs": args.epochs, "threads": args.threads,
        "cpu": torch.cpu.get_capabilities().get("cpu_name", platform.machine()), "torch": torch.__version__, "runs": results,
    }))  # fmt: skip
    print("\n| epoch | valid ELBO float32 | valid ELBO bf16 | bf16 - float32 |\n|---|---|---|---|")
    for epoch, (a, b) in enumerate(zip(fp32["valid_elbo"], bf16["valid_elbo"], strict=True), 1):
        print(f"| {epoch} | {a:.2f} | {b:.2f} | {b - a:+.2f} |")
    print(
        f"\ntraining steps/s (evaluations included): float32 {fp32['steps_per_s']:.1f}, bf16 {bf16['steps_per_s']:.1f} "
        f"(bf16 / float32 = {bf16['steps_per_s'] / fp32['steps_per_s']:.2f})"
    )


if __name__ == "__main__":
    main()
