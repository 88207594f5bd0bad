"""Local optimisation against the closed form: linear-Gaussian VAEs, default LocalOptions.

For each model (random W with correlated columns, so the posterior is far from factorised; with
``--trained``, a float32 model fitted by the ELBO to data from such a model, so that W, sigma and
the encoder are learned ones; ``--train-lr 3e-3`` makes that fit diverge, leaving an encoder
whose widths are off by orders of magnitude, a stress test of the start) and a batch of examples
simulated from it, in float32:

- q*_FFG: L of the returned Gaussian, evaluated exactly (no Monte Carlo), against the closed-form
  best diagonal-Gaussian ELBO (:func:`flowvae.linear_gaussian.best_diag_elbo`): mean shortfall and
  the fraction of examples within 0.15 nat;
- q*_flow (``--flow``, a one-step IAF: a triangular affine map, which holds every Gaussian):
  its Monte Carlo L[q*] against the exact log p(x).

Prints one JSON line per case.

    python benchmarks/local_linear_gaussian.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from flowvae.linear_gaussian import (
    best_diag_elbo,
    exact_log_marginal,
    gaussian_elbo,
)
from flowvae.local import local_optimise
from flowvae.testing import random_linear_gaussian_vae

CASES = [((1, 6, 6), 8, 0.5), ((1, 6, 6), 8, 0.1), ((1, 16, 16), 16, 0.5), ((1, 16, 16), 16, 0.05)]


def fit(truth: torch.nn.Module, steps: int, seed: int, lr: float) -> torch.nn.Module:
    """A fresh linear-Gaussian VAE of truth's shape trained by the ELBO on 512 of truth's samples."""
    from flowvae.estimators import elbo

    with torch.no_grad():
        data = truth.decode_sample(truth.sample_prior((512,)))
    shape = tuple(data.shape[1:])
    model = random_linear_gaussian_vae(shape, latent_dim=truth.latent_dim, seed=seed + 100).float()
    torch.nn.init.normal_(model.decoder.out.weight, std=0.1)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        (-elbo(model, data, samples=1).mean()).backward()
        optimizer.step()
    return model.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=16, help="examples per model")
    p.add_argument("--seeds", type=int, default=2, help="models per case")
    p.add_argument("--flow", default="iaf", help="local flow family checked against log p(x) (none: skip)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--trained", action="store_true", help="fit each model by the ELBO first")
    p.add_argument("--train-steps", type=int, default=2000)
    p.add_argument("--train-lr", type=float, default=1e-3, help="Adam's rate of the fit (3e-3 diverges)")
    p.add_argument("--case", type=int, action="append", help="indices into CASES (default: all)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for shape, latents, noise in [CASES[i] for i in args.case] if args.case else CASES:
        for seed in range(args.seeds):
            model = random_linear_gaussian_vae(shape, latent_dim=latents, noise_std=noise, seed=seed)
            model = model.float().eval()
            torch.manual_seed(seed)
            with torch.no_grad():
                x = model.decode_sample(model.sample_prior((args.n,)))
            if args.trained:
                model = fit(model, args.train_steps, seed, args.train_lr)
            start = time.perf_counter()
            ffg = local_optimise(model, x, "diag")
            with torch.no_grad():
                best = best_diag_elbo(model, x)
                shortfall = best - gaussian_elbo(model, x, ffg.mean, ffg.log_std)
                log_px = exact_log_marginal(model, x)
            row = {
                "pixels": shape[1] * shape[2], "latents": latents, "noise_std": noise, "seed": seed, "n": args.n,
                "trained": args.trained and args.train_lr,
                "ffg_shortfall_mean": shortfall.mean().item(), "ffg_shortfall_max": shortfall.max().item(),
                "ffg_within_0.15": (shortfall < 0.15).double().mean().item(),
                "ffg_gap_to_log_p": (log_px - best).mean().item(), "ffg_capped": ffg.capped,
                "ffg_steps_mean": ffg.steps.double().mean().item(),
            }  # fmt: skip
            if args.flow != "none":
                flow = local_optimise(
                    model, x, args.flow, init=(ffg.mean, ffg.log_std), flow_steps=1, flow_hidden=2 * latents
                )
                row["flow_gap_to_log_p"] = (log_px - flow.elbo).mean().item()
                row["flow_gap_stderr"] = flow.stderr.pow(2).sum().sqrt().item() / args.n
                row["flow_capped"] = flow.capped
            row["seconds"] = round(time.perf_counter() - start, 1)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
