"""Foundation benchmark: an `mlp` diag VAE on static binarized MNIST under a wall-time budget.

Reports test -log p(x) (IWAE, K samples, on the full test set or a fixed seeded subset),
training throughput (images/s) and IWAE evaluation throughput (importance samples/s).

    python benchmarks/mnist_mlp.py --data ../shared/data/binarized_mnist --minutes 20 --limit 2000
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
from flowvae.config import apply_overrides, preset
from flowvae.data import load_data, subset_indices
from flowvae.estimators import evaluate
from flowvae.train import train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", default="../shared/data/binarized_mnist")
    p.add_argument("--minutes", type=float, default=20.0, help="training wall-time budget")
    p.add_argument("--samples", type=int, default=5000, help="IWAE K")
    p.add_argument("--limit", type=int, default=0, help="seeded random test subset (0 = all 10k)")
    p.add_argument("--run-dir", default="runs/bench-mnist-mlp")
    p.add_argument("--preset", default="mnist-mlp")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()

    cfg = apply_overrides(preset(args.preset), [f"data.root={args.data}", "train.epochs=1000",
                                                f"train.max_minutes={args.minutes}", *args.overrides])
    run_dir = Path(args.run_dir)
    t0 = time.perf_counter()
    state = train(cfg, run_dir, progress=False)
    train_seconds = time.perf_counter() - t0
    n_train = load_data(cfg.data).train.shape[0]
    images = state.step * cfg.train.batch_size
    _, model, _ = load_run(run_dir, "best")
    data = load_data(cfg.data)
    x = data.test
    if args.limit:
        x = x[subset_indices(x.shape[0], args.limit, 0)]
    torch.manual_seed(0)
    result = evaluate(model, x.split(100), "iwae", "test", dims=784, samples=args.samples, chunk=500)
    elbo = evaluate(model, x.split(100), "elbo", "test", dims=784, samples=1)
    out = {
        "preset": args.preset, "posterior": cfg.model.posterior, "minutes": args.minutes,
        "epochs": round(state.step * cfg.train.batch_size / n_train, 2), "steps": state.step,
        "best_valid_elbo": state.best_valid, "test_elbo": -elbo.nll,
        "test_nll_iwae": result.nll, "stderr": result.stderr, "K": args.samples, "n_test": result.n,
        "train_images_per_s": images / train_seconds,
        "iwae_samples_per_s": result.n * args.samples / result.seconds, "iwae_seconds": result.seconds,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d"),
    }  # fmt: skip
    print(json.dumps(out))
    assert math.isfinite(result.nll)


if __name__ == "__main__":
    main()
