"""IWAE vs AIS on a trained static-MNIST model, and IWAE throughput against the machine's FLOP rate.

On a fixed seeded subset of test examples: IWAE with K=5000 and AIS (HMC, several numbers of
intermediate distributions), each with estimate, standard error and wall time. Then the
measured matmul FLOP rate of this machine and the FLOPs an importance sample costs the model
(the decoder's matmuls; the encoder runs once per example), to say how close IWAE runs to it.

    python benchmarks/estimators_mnist.py RUN_DIR --limit 50 --ais-steps 100,300,1000
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn

from flowvae.checkpoint import load_run
from flowvae.data import evaluation_images, load_data
from flowvae.estimators import evaluate


def matmul_flops_per_s(m: int, k: int, n: int, repeats: int = 20) -> float:
    a, b = torch.randn(m, k), torch.randn(k, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * m * k * n * repeats / (time.perf_counter() - start)


def decoder_flops_per_sample(model: nn.Module) -> int:
    """2 * (multiply-adds of every Linear in the decoder): what one importance sample costs."""
    return sum(2 * m.in_features * m.out_features for m in model.decoder.modules() if isinstance(m, nn.Linear))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--samples", type=int, default=5000)
    p.add_argument("--ais-steps", default="100,300,1000")
    p.add_argument("--chains", type=int, default=8)
    p.add_argument("--leapfrog", type=int, default=5)
    args = p.parse_args()
    cfg, model = load_run(args.run_dir, "best")[:2]
    data = load_data(cfg.data)
    x = evaluation_images(data, "test", args.limit, seed=0).images
    rows = []
    iwae = evaluate(model, x.split(50), "iwae", split="test", dims=784, samples=args.samples, chunk=500)
    def row(name, r):
        # paired with IWAE on the same examples: the difference's standard error is far smaller
        # than either estimate's (which is dominated by the spread of log p(x) over examples)
        diff = r.per_example - iwae.per_example
        return {"estimator": name, "nll": r.nll, "stderr": r.stderr, "seconds": r.seconds,
                "gain_over_iwae": diff.mean().item(), "gain_stderr": diff.std().item() / len(diff) ** 0.5}

    rows.append(row(f"IWAE K={args.samples}", iwae))
    for steps in map(int, args.ais_steps.split(",")):
        for init in ("prior", "posterior"):
            r = evaluate(
                model, x.split(50), "ais", split="test", dims=784, samples=args.chains, steps=steps,
                leapfrog=args.leapfrog, init=init,
            )  # fmt: skip
            rows.append(row(f"AIS {steps} steps, {args.chains} chains, {args.leapfrog} leapfrog, from {init}", r))
    for r in rows:
        print(json.dumps(r), flush=True)
    # throughput vs the machine: a matmul shaped like the decoder's widest layer over a chunk
    widest = max((m for m in model.decoder.modules() if isinstance(m, nn.Linear)), key=lambda m: m.weight.numel())
    peak = matmul_flops_per_s(500 * 50, widest.in_features, widest.out_features, repeats=5)
    flops = decoder_flops_per_sample(model)
    samples_per_s = x.shape[0] * args.samples / iwae.seconds
    print(json.dumps({
        "iwae_samples_per_s": round(samples_per_s), "decoder_flops_per_sample": flops,
        "achieved_gflops": round(samples_per_s * flops / 1e9, 2), "matmul_gflops": round(peak / 1e9, 2),
        "fraction_of_matmul_rate": round(samples_per_s * flops / peak, 3),
        "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"),
    }))  # fmt: skip
    print("\n| estimator | test −log p(x) | ± | log p̂ − IWAE (paired) | ± | seconds |\n|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['estimator']} | {r['nll']:.2f} | {r['stderr']:.2f} | {r['gain_over_iwae']:+.3f} | "
            f"{r['gain_stderr']:.3f} | {r['seconds']:.1f} |"
        )


if __name__ == "__main__":
    main()
