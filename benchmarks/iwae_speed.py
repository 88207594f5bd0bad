"""IWAE throughput on `mnist-mlp`: flowvae's estimator against a hand-written loop (issue 14).

Times (a) ``flowvae.estimators.iwae`` and (b) the ~20-line loop a researcher would write with
the same model's encoder and decoder (encode once, draw K z from the diagonal Gaussian in
chunks, decoder logits, Bernoulli log-likelihood by ``binary_cross_entropy_with_logits``,
log N(z; 0, I), log q, logsumexp). They run interleaved ``--repeats`` times; the median of
each is reported as samples/s, with their ratio and the projected minutes of the paper
protocol (10,000 test images x K=5000). Both estimates of log p(x) are compared on the timed
images: their samples differ, so they agree within Monte Carlo error (the mean difference over
images against its standard error), not bitwise.

    python benchmarks/iwae_speed.py --images 100 --samples 5000 --threads 2
    python benchmarks/iwae_speed.py --run RUN_DIR   # a trained mnist-mlp run
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowvae.config import DataConfig
from flowvae.data import load_data
from flowvae.estimators import iwae
from flowvae.model import build_model
from flowvae.presets import preset

PROTOCOL_IMAGES, PROTOCOL_SAMPLES = 10_000, 5000


def hand_written_iwae(model: nn.Module, x: Tensor, samples: int, chunk: int) -> Tensor:
    """The obvious IWAE loop for a diagonal-Gaussian VAE with Bernoulli pixels: (B,)."""
    q = model.encode(x)
    mean, log_std = q.mean, q.log_std  # (B, D)
    pixels = x.flatten(1)
    log_w = []
    for start in range(0, samples, chunk):
        n = min(chunk, samples - start)
        eps = torch.randn(n, *mean.shape)
        z = mean + log_std.exp() * eps  # (n, B, D)
        logits = model.decoder(z.reshape(-1, z.shape[-1])).view(n, x.shape[0], -1)
        log_lik = -F.binary_cross_entropy_with_logits(
            logits, pixels.expand_as(logits), reduction="none"
        ).sum(-1)
        log_prior = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_q = (-0.5 * eps**2 - 0.5 * math.log(2 * math.pi) - log_std).sum(-1)
        log_w.append(log_lik + log_prior - log_q)
    return torch.logsumexp(torch.cat(log_w).double(), 0) - math.log(samples)


def load_images(folder: Path, n: int) -> Tensor:
    """The first ``n`` static-MNIST test images (n, 1, 28, 28), or random binary images."""
    if not (folder / "binarized_mnist_test.amat.gz").exists():
        print(f"no static MNIST in {folder}: timing random binary images (pixel mean 0.13) instead")
        return torch.bernoulli(torch.full((n, 1, 28, 28), 0.13))
    return load_data(DataConfig(name="binarized_mnist", root=str(folder))).test[:n]


def build(run: str | None) -> nn.Module:
    if run is None:
        torch.manual_seed(0)
        return build_model(preset("mnist-mlp").model, (1, 28, 28), True)
    from flowvae.checkpoint import load_run

    return load_run(run, "best").model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", help="a trained mnist-mlp run folder (default: a freshly built model)")
    p.add_argument("--data", type=Path, default=Path("../shared/data/binarized_mnist"))
    p.add_argument("--images", type=int, default=100, help="images timed (one batch; default 100)")
    p.add_argument("--samples", type=int, default=PROTOCOL_SAMPLES, help="K (default 5000)")
    p.add_argument("--chunk", type=int, default=500, help="samples per chunk, both loops (default 500)")
    p.add_argument("--hand-chunk", type=int, help="the hand-written loop's chunk (default: --chunk)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved timings of each (default 5)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = build(args.run).eval()
    x = load_images(args.data, args.images)
    runs = {
        "flowvae": lambda: iwae(model, x, samples=args.samples, chunk=args.chunk),
        "hand-written": lambda: hand_written_iwae(model, x, args.samples, args.hand_chunk or args.chunk),
    }
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    estimates: dict[str, list[Tensor]] = {name: [] for name in runs}
    with torch.no_grad():
        for _ in range(args.repeats):
            for name, fn in runs.items():
                start = time.perf_counter()
                estimates[name].append(fn().double())
                seconds[name].append(time.perf_counter() - start)
    rows = x.shape[0] * args.samples
    rate = {name: rows / statistics.median(s) for name, s in seconds.items()}
    print(f"threads={args.threads} images={x.shape[0]} K={args.samples} chunk={args.chunk} "
          f"hand chunk={args.hand_chunk or args.chunk} repeats={args.repeats} (median)")  # fmt: skip
    for name, r in rate.items():
        minutes = PROTOCOL_IMAGES * PROTOCOL_SAMPLES / r / 60
        print(f"{name:>13}: {r:10.0f} samples/s  -> {minutes:.2f} min for 10,000 x 5000")
    print(f"ratio flowvae / hand-written: {rate['flowvae'] / rate['hand-written']:.2f}")
    # per image, the repeats' means differ by Monte Carlo error only; images are independent,
    # so the mean difference over images is compared with its standard error
    a, b = (torch.stack(estimates[name]).mean(0) for name in runs)  # (B,)
    diff = a - b
    se = diff.std().item() / math.sqrt(diff.numel())
    print(f"log p̂ per image: flowvae {a.mean().item():.3f}, hand-written {b.mean().item():.3f} nats; "
          f"difference {diff.mean().item():+.4f} ± {se:.4f} (standard error over {diff.numel()} images)")

if __name__ == "__main__":
    main()
