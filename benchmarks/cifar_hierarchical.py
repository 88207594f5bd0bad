"""CIFAR-10 subset: the hierarchical ResNet VAE (``iaf-cifar10-small``) under a wall-time budget on CPU.

Trains the preset on the 4000-image CIFAR-10 subset for ``--minutes``, then reports on the test
split (500 images): bits/dim by the ELBO and by IWAE with K samples, training throughput
(images/s, the whole training call including its validation passes), sampling speed (images/s,
ancestral sampling through the top-down pass and decoding) and writes a samples PNG. It also
builds the full ``iaf-cifar10`` preset (the openai/iaf Table-3 model) to report its parameter
count and the mean time of one training step at the preset's batch size on this machine
(random 8-bit images; the full CIFAR-10 is not needed for timing). Prints one JSON line.

Cost: a test pass of the small model is about 0.1 GFLOP per (image, sample) and IWAE needs two
passes per sample, so K=100 on the 500 test images is ~10 TFLOP (minutes on a few CPU cores);
a step of the full preset is ~0.6 TFLOP (tens of seconds on CPU).

    python benchmarks/cifar_hierarchical.py --data ../shared/data/cifar10_subset --minutes 30 --samples 100
    python benchmarks/cifar_hierarchical.py --minutes 0.2 --samples 4 model.posterior=down-diag
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
from flowvae.config import Config, apply_overrides
from flowvae.data import evaluation_images, load_data
from flowvae.estimators import evaluate
from flowvae.images import save_grid
from flowvae.model import build_model
from flowvae.optim import optimizer_for, train_step
from flowvae.presets import preset
from flowvae.train import train

IMAGE_SHAPE = (3, 32, 32)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def full_preset_step_time(steps: int, seed: int = 0) -> dict:
    """Parameter count of ``iaf-cifar10`` and the mean wall time of a training step (after one
    warm-up step) at its batch size, on random 8-bit images."""
    cfg = preset("iaf-cifar10")
    torch.manual_seed(seed)
    model = build_model(cfg.model, IMAGE_SHAPE, binary=False)
    x = torch.randint(0, 256, (cfg.train.batch_size, *IMAGE_SHAPE)).float() / 255
    model.data_init(x)
    optimizer = optimizer_for(cfg, model)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        train_step(model, optimizer, x, cfg, beta=1.0, lr=cfg.train.lr)
        times.append(time.perf_counter() - start)
    return {
        "full_preset_params": count_parameters(model),
        "full_preset_batch_size": cfg.train.batch_size,
        "full_preset_step_seconds": round(sum(times[1:]) / steps, 3),
    }


@torch.no_grad()
def sampling_speed(model: torch.nn.Module, n: int, path: Path, temperature: float) -> float:
    """Images per second of ancestral sampling + decoding; the images go to ``path``."""
    model.decode_mean(model.sample_prior((2,)))  # warm-up
    start = time.perf_counter()
    images = model.decode_mean(model.sample_prior((n,), temperature=temperature))
    seconds = time.perf_counter() - start
    save_grid(images, path, nrow=int(math.ceil(math.sqrt(n))))
    return n / seconds


def run(args: argparse.Namespace) -> dict:
    cfg: Config = apply_overrides(
        preset(args.preset),
        [f"data.root={args.data}", "train.epochs=100000", f"train.max_minutes={args.minutes}",
         *args.overrides],
    )  # fmt: skip
    if args.threads:
        torch.set_num_threads(args.threads)
    run_dir = Path(args.run_dir)
    start = time.perf_counter()
    state = train(cfg, run_dir, progress=False)
    train_seconds = time.perf_counter() - start
    # the budget usually stops the run inside an epoch, before any evaluation: take the latest
    # weights (their EMA average when the preset keeps one)
    model = load_run(run_dir, "latest").model
    data = load_data(cfg.data)
    dims = math.prod(data.shape)
    x, _, subset = evaluation_images(data, "test", args.limit, args.seed)
    elbo = evaluate(model, x.split(100), "elbo", split="test", dims=dims, samples=1)
    iwae = evaluate(model, x.split(50), "iwae", split="test", dims=dims, samples=args.samples, chunk=args.chunk)
    samples_per_s = sampling_speed(model, args.n_samples, run_dir / "bench_samples.png", args.temperature)
    return {
        "preset": args.preset, "minutes": args.minutes, "steps": state.step,
        "epochs": round(state.step * cfg.train.batch_size / data.train.shape[0], 2),
        "params": count_parameters(model), "n_test": iwae.n, "subset": subset or None,
        "test_bpd_elbo": round(elbo.bits_per_dim, 4), "test_bpd_iwae": round(iwae.bits_per_dim, 4),
        "iwae_stderr_bpd": round(iwae.stderr / (dims * math.log(2)), 4), "K": args.samples,
        "best_valid_bpd_elbo": round(-state.best_valid / (dims * math.log(2)), 4)
        if math.isfinite(state.best_valid) else None,
        "train_images_per_s": round(state.step * cfg.train.batch_size / train_seconds, 1),
        "sample_images_per_s": round(samples_per_s, 1), "samples_png": str(run_dir / "bench_samples.png"),
        "iwae_seconds": round(iwae.seconds, 1),
        **full_preset_step_time(args.full_steps),
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--data", default="../shared/data/cifar10_subset", help="folder of cifar10_subset_4000.npz"
    )
    p.add_argument("--minutes", type=float, default=30.0, help="training wall-time budget")
    p.add_argument("--samples", type=int, default=100, help="IWAE K on the test split")
    p.add_argument("--limit", type=int, default=0, help="seeded random test subset (0: all 500)")
    p.add_argument("--seed", type=int, default=1234, help="seed of the subset")
    p.add_argument("--chunk", type=int, default=100, help="IWAE samples per chunk (bounds memory)")
    p.add_argument("--n-samples", type=int, default=64, help="images drawn for the sampling speed and PNG")
    p.add_argument("--temperature", type=float, default=1.0, help="prior temperature of the PNG's samples")
    p.add_argument("--full-steps", type=int, default=2, help="timed training steps of the full preset")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--run-dir", default=f"runs/bench-cifar-hierarchical-{time.strftime('%Y%m%d-%H%M%S')}")
    p.add_argument("--preset", default="iaf-cifar10-small")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = p.parse_args()
    row = run(args)
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    print(json.dumps({**row, "machine": machine, "date": time.strftime("%Y-%m-%d")}), flush=True)


if __name__ == "__main__":
    main()
