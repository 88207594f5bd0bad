"""Does a configuration survive its first training steps? Each variant (a preset plus overrides)
trains for ``--steps`` updates from the same seed and data order, with the trainer's own pieces
(``build_model``, ``data_init``, ``optimizer_for``, ``kl_weight``, ``learning_rate``,
``train_step``), and the script prints, per variant: the largest per-batch KL (nats), the first
step whose KL exceeds ``--blowup`` nats, the updates skipped for a non-finite loss or gradient,
and the mean train ELBO of the last 10 steps.

    python benchmarks/early_stability.py --data ../shared/data/binarized_mnist \\
        --preset sylvester-mnist-iaf --steps 60 \\
        --variant "preset (Adamax 5e-4), bf16=train.amp=bf16" \\
        --variant "preset, float32=train.amp=none" \\
        --variant "Adam 1e-3, bf16=train.amp=bf16 train.optimizer=adam train.lr=0.001" \\
        --variant "Adam 1e-3, float32=train.amp=none train.optimizer=adam train.lr=0.001"
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

import flowvae
from flowvae.config import apply_overrides
from flowvae.data import iterate_batches, load_data
from flowvae.model import build_model
from flowvae.optim import kl_weight, learning_rate, optimizer_for, train_step


def run(args: argparse.Namespace, overrides: list[str]) -> dict:
    cfg = apply_overrides(flowvae.preset(args.preset), [f"data.root={args.data}", *overrides])
    data = load_data(cfg.data)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, data.shape, data.binary)
    t = cfg.train
    model.data_init(next(iterate_batches(data, "train", t.batch_size, shuffle=True, seed=t.seed)))
    optimizer = optimizer_for(cfg, model)
    per_epoch = -(-len(data.split("train")) // t.batch_size)
    rows, started = [], time.perf_counter()
    batches = iterate_batches(data, "train", t.batch_size, shuffle=True, seed=t.seed)
    for step, x in zip(range(args.steps), batches, strict=False):
        beta = kl_weight(cfg, step / per_epoch)
        rows.append(train_step(model, optimizer, x, cfg, beta, learning_rate(cfg, step / per_epoch)))
    kl = [r["kl"] for r in rows]
    blowup = next((i for i, v in enumerate(kl) if not v < args.blowup), None)
    return {
        "max_kl": max(kl), "first_blowup_step": blowup, "skipped": int(sum(r["skipped"] for r in rows)),
        "last10_train_elbo": statistics.mean(r["elbo"] for r in rows[-10:]),
        "seconds": round(time.perf_counter() - started, 1),
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/binarized_mnist")
    p.add_argument("--preset", default="sylvester-mnist-iaf")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--blowup", type=float, default=1e4, help="a KL above this many nats counts as a blow-up")
    p.add_argument("--variant", action="append", required=True, help="NAME=key=value key=value ...")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(json.dumps({"preset": args.preset, "steps": args.steps, "threads": args.threads,
                      "cpu": platform.processor() or platform.machine(), "torch": torch.__version__}))  # fmt: skip
    for variant in args.variant:
        name, _, overrides = variant.partition("=")
        print(json.dumps({"variant": name, **run(args, overrides.split())}), flush=True)


if __name__ == "__main__":
    main()
