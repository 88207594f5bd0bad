"""How far the bf16 training objective is from the float32 one, on a trained run.

Training runs its forward pass under bf16 autocast (``train.amp``); evaluation stays float32. For
a trained run's best-valid model, on the first ``--limit`` valid images, this computes the
single-sample ELBO (the training objective at KL weight 1) twice on the same draws of z, once
under bf16 autocast and once in float32, and prints one JSON line: the mean of each, the mean
difference bf16 − float32 with its standard error (± over valid images), the sd of the per-image
difference, and the same difference for the KL term.

    python benchmarks/bf16_objective.py RUN [RUN ...] --limit 3000
"""

from __future__ import annotations

import argparse
import json
import math

import torch

import flowvae


@torch.no_grad()
def objective(
    model: torch.nn.Module, x: torch.Tensor, bf16: bool, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image single-sample ELBO and KL, the draws of z fixed by ``seed``."""
    torch.manual_seed(seed)
    elbos, kls = [], []
    for xb in x.split(100):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            terms = model(xb, 1)
        elbos.append(terms.log_weight.float().mean(0))
        kls.append(terms.kl.float().reshape(-1, xb.shape[0]).mean(0))
    return torch.cat(elbos), torch.cat(kls)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--limit", type=int, default=3000)
    p.add_argument("--seed", type=int, default=7)
    opt = p.parse_args()
    torch.set_num_threads(1)
    for path in opt.runs:
        run = flowvae.load_run(path, "best")
        model = run.model.eval()
        x = flowvae.load_data(run.config.data).split("valid")[: opt.limit]
        elbo32, kl32 = objective(model, x, False, opt.seed)
        elbo16, kl16 = objective(model, x, True, opt.seed)
        d, dk = elbo16 - elbo32, kl16 - kl32
        se = lambda t: t.std().item() / math.sqrt(len(t))  # noqa: E731
        print(json.dumps({
            "run": path, "images": len(x), "elbo_fp32": round(elbo32.mean().item(), 4),
            "elbo_bf16": round(elbo16.mean().item(), 4), "diff": round(d.mean().item(), 4),
            "diff_se": round(se(d), 4), "diff_sd_per_image": round(d.std().item(), 4),
            "kl_diff": round(dk.mean().item(), 4), "kl_diff_se": round(se(dk), 4),
        }))  # fmt: skip


if __name__ == "__main__":
    main()
