"""Cost of a flow posterior's training step relative to ``diag`` (issue 14).

Every posterior gets the ``mnist-mlp`` model (MLP 784-300-300, z=32) and trains on one fixed batch
of 100 binary images with :func:`flowvae.optim.train_step`, once with the optimizer the config
gives (:func:`flowvae.optim.optimizer_for`) and once with ``torch.optim.Adam(fused=True)``.
Repeats are interleaved over posteriors and optimizers, so that load from other processes hits
all of them alike; the table shows the median ms per step and its ratio to ``diag``'s. The clock
is this process's CPU time (``--clock cpu``, the default): at one thread it is the wall time of
an idle machine, and it does not count the time other processes hold the core.

    python benchmarks/flow_overhead.py --threads 1 --data ../shared/data/binarized_mnist

``--count`` prints instead the multiply-adds of the matrix products of one training forward and
backward pass, and the parameters, of each posterior's model: the work no scheduling removes.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from flowvae.config import DataConfig
from flowvae.data import load_data
from flowvae.model import build_model
from flowvae.optim import optimizer_for, train_step, training_loss
from flowvae.presets import preset

POSTERIORS = ["diag", "iaf", "iaf-mean", "realnvp", "planar", "sylvester-orthogonal"]
OPTIMIZERS = ["optimizer_for", "fused-adam"]


def batch(data: str | None, size: int) -> Tensor:
    """The first ``size`` validation images of static MNIST, or Bernoulli(0.13) noise without data."""
    if data is None:
        return torch.bernoulli(torch.full((size, 1, 28, 28), 0.13))
    return load_data(DataConfig(name="binarized_mnist", root=data)).valid[:size]


def make_optimizer(kind: str, cfg, model: nn.Module) -> torch.optim.Optimizer:
    if kind == "optimizer_for":
        return optimizer_for(cfg, model)
    return torch.optim.Adam(model.parameters(), lr=cfg.train.lr, fused=True)


def count(runs: dict, names: list[str], x: Tensor) -> None:
    """Multiply-adds of one training forward + backward, and parameters, relative to diag's."""
    work = {}
    for name in names:
        model, _, cfg = runs[name, OPTIMIZERS[0]]
        with FlopCounterMode(display=False) as mode:  # counts 2 FLOPs per multiply-add
            training_loss(model(x, 1), 1.0, 0.0, cfg.model.latent_dim).backward()
        work[name] = mode.get_total_flops() // 2, sum(p.numel() for p in model.parameters())
    base = work.get("diag", (math.nan, math.nan))
    print(f"{'posterior':<22}{'multiply-adds':>16}{'ratio':>7}{'parameters':>12}{'ratio':>7}")
    for name, (macs, params) in work.items():
        print(f"{name:<22}{macs / 1e6:>14.1f} M{macs / base[0]:>7.2f}{params:>12,}{params / base[1]:>7.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="folder of binarized_mnist_valid.amat.gz (default: noise)")
    p.add_argument("--posteriors", default=",".join(POSTERIORS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=15, help="interleaved timings per (posterior, optimizer)")
    p.add_argument("--steps", type=int, default=20, help="train steps per timing")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    p.add_argument("--count", action="store_true", help="count multiply-adds and parameters instead")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = batch(args.data, 100)
    names = args.posteriors.split(",")
    runs = {}
    for name in names:
        for kind in OPTIMIZERS:
            cfg = preset("mnist-mlp")
            cfg.model.posterior = name
            torch.manual_seed(0)
            model = build_model(cfg.model, (1, 28, 28), binary=True)
            runs[name, kind] = (model, make_optimizer(kind, cfg, model), cfg)
    if args.count:
        count(runs, names, x)
        return
    times: dict[tuple[str, str], list[float]] = {key: [] for key in runs}

    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    def run(key: tuple[str, str], steps: int) -> float:
        model, optimizer, cfg = runs[key]
        start = clock()
        for _ in range(steps):
            train_step(model, optimizer, x, cfg, beta=1.0, lr=cfg.train.lr)
        return (clock() - start) / steps * 1e3

    for key in runs:
        run(key, args.warmup)
    for _ in range(args.repeats):
        for key in runs:
            times[key].append(run(key, args.steps))
    median = {key: statistics.median(t) for key, t in times.items()}
    print(
        f"threads={args.threads} batch=100 repeats={args.repeats}x{args.steps} steps, "
        f"median {args.clock} ms per train_step and its ratio to diag's"
    )
    print(f"{'posterior':<22}" + "".join(f"{k:>16}{'ratio':>7}" for k in OPTIMIZERS))
    for name in names:
        row = f"{name:<22}"
        for kind in OPTIMIZERS:
            ms = median[name, kind]
            ratio = ms / median["diag", kind] if ("diag", kind) in median else math.nan
            row += f"{ms:>16.2f}{ratio:>7.2f}"
        print(row)


if __name__ == "__main__":
    main()
