"""Static binarized MNIST: train one or more posteriors under a fixed wall-time budget each.

For every posterior: test -log p(x) by IWAE (K samples; full test set or a fixed seeded
subset), test ELBO, best valid ELBO, training throughput (images/s) and IWAE throughput
(importance samples/s). One JSON line per posterior, then a markdown table.

    python benchmarks/mnist_static.py --data ../shared/data/binarized_mnist --minutes 10 --limit 1000
    python benchmarks/mnist_static.py --posteriors diag,iaf,planar --minutes 4 --limit 500
    python benchmarks/mnist_static.py --posteriors diag,iaf --minutes 10 --curves curves.png train.threads=2

``--curves`` draws every run's valid ELBO (test-free) against epochs and wall time into one PNG.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch

from flowvae.checkpoint import load_run
from flowvae.compare import plot_curves
from flowvae.config import apply_overrides
from flowvae.data import evaluation_images, load_data
from flowvae.estimators import evaluate
from flowvae.presets import preset
from flowvae.train import train


def run(args: argparse.Namespace, posterior: str) -> dict:
    cfg = apply_overrides(
        preset(args.preset),
        [f"data.root={args.data}", "train.epochs=1000", f"train.max_minutes={args.minutes}",
         f"model.posterior={posterior}", *args.overrides],
    )  # fmt: skip
    run_dir = Path(args.run_dir) / posterior
    t0 = time.perf_counter()
    state = train(cfg, run_dir, progress=False)
    train_seconds = time.perf_counter() - t0
    _, model, _ = load_run(run_dir, "best")
    data = load_data(cfg.data)
    x = evaluation_images(data, "test", args.limit, seed=0).images
    iwae = evaluate(model, x.split(100), "iwae", split="test", dims=784, samples=args.samples, chunk=500)
    elbo = evaluate(model, x.split(100), "elbo", split="test", dims=784, samples=1)
    assert math.isfinite(iwae.nll)
    return {
        "posterior": posterior, "preset": args.preset, "minutes": args.minutes,
        "epochs": round(state.step * cfg.train.batch_size / data.train.shape[0], 2), "steps": state.step,
        "best_valid_elbo": round(state.best_valid, 3), "test_elbo": round(-elbo.nll, 3),
        "test_nll_iwae": round(iwae.nll, 3), "stderr": round(iwae.stderr, 3), "K": args.samples,
        "n_test": iwae.n, "train_images_per_s": round(state.step * cfg.train.batch_size / train_seconds, 1),
        "iwae_samples_per_s": round(iwae.n * args.samples / iwae.seconds),
        "iwae_seconds": round(iwae.seconds, 1),
        "params": sum(p.numel() for p in model.parameters()),
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/binarized_mnist")
    p.add_argument("--posteriors", default="diag", help="comma-separated posterior names")
    p.add_argument("--minutes", type=float, default=10.0, help="training wall-time budget per posterior")
    p.add_argument("--samples", type=int, default=5000, help="IWAE K")
    p.add_argument("--limit", type=int, default=0, help="seeded random test subset (0 = all 10k)")
    p.add_argument("--run-dir", default="runs/bench-mnist-static")
    p.add_argument("--preset", default="mnist-mlp")
    p.add_argument("--curves", default="", help="PNG of the valid ELBO against epochs and wall time")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = p.parse_args()
    rows = []
    for posterior in args.posteriors.split(","):
        row = run(args, posterior)
        rows.append(row)
        # after train(), which applies train.threads
        machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
        print(json.dumps({**row, "machine": machine, "date": time.strftime("%Y-%m-%d")}), flush=True)
    if args.curves:
        plot_curves([Path(args.run_dir) / r["posterior"] for r in rows], args.curves)
    print("\n| posterior | test −log p(x) IWAE | ± | test ELBO | epochs | train img/s | IWAE samples/s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| `{r['posterior']}` | {r['test_nll_iwae']:.2f} | {r['stderr']:.2f} | {r['test_elbo']:.2f} | "
            f"{r['epochs']} | {r['train_images_per_s']:.0f} | {r['iwae_samples_per_s']:.0f} |"
        )


if __name__ == "__main__":
    main()
