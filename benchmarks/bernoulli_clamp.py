"""What the VampPrior code's Bernoulli clamp changes in a trained model's numbers.

Their ``log_Bernoulli`` clamps the decoder's probabilities to [1e-5, 1 - 1e-5] (logits to
±11.51); ours is exact in the logits. For a trained run, on the first ``--limit`` test images,
this draws K samples of z per image from q once and computes, on the same draws, the ELBO and the
IWAE estimate with the exact likelihood and with the clamped one, and the share of pixels whose
logit lies beyond the clamp. Prints one JSON line (± over test images).

    python benchmarks/bernoulli_clamp.py RUN --limit 500 --samples 1000
"""

from __future__ import annotations

import argparse
import json
import math

import torch
import torch.nn.functional as F

import flowvae

CLAMP = math.log((1 - 1e-5) / 1e-5)  # logit(1 - 1e-5)


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run")
    p.add_argument("--limit", type=int, default=500)
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--chunk", type=int, default=100)
    opt = p.parse_args()
    run = flowvae.load_run(opt.run, "best")
    model = run.model.double()
    x = flowvae.load_data(run.config.data).test[: opt.limit].double()
    torch.manual_seed(0)
    rows = {"exact": [], "clamped": []}
    beyond = 0.0
    for xb in x.split(10):
        weights = {"exact": [], "clamped": []}
        q = model.encode(xb)
        for _ in range(0, opt.samples, opt.chunk):
            z, log_q = q.rsample_and_log_prob((opt.chunk,))
            logits = model.decoder(z.flatten(0, 1))[:, 0].view(opt.chunk, *xb.shape)
            base = model.log_prior(z) - log_q
            for name, lg in (("exact", logits), ("clamped", logits.clamp(-CLAMP, CLAMP))):
                ll = -F.binary_cross_entropy_with_logits(lg, xb.expand_as(lg), reduction="none")
                weights[name].append(ll.flatten(2).sum(-1) + base)
            beyond += (logits.abs() > CLAMP).double().mean().item() * xb.shape[0] / x.shape[0]
        for name, w in weights.items():
            w = torch.cat(w)
            rows[name].append(torch.stack([w.mean(0), torch.logsumexp(w, 0) - math.log(w.shape[0])]))
    out = {"run": opt.run, "n": x.shape[0], "samples": opt.samples}
    for name, r in rows.items():
        r = torch.cat(r, 1)  # (2, N): ELBO, log p̂
        out[name] = {"elbo": r[0].mean().item(), "nll": -r[1].mean().item()}
    diff = torch.cat(rows["clamped"], 1) - torch.cat(rows["exact"], 1)
    out["clamped_minus_exact"] = {
        "elbo": diff[0].mean().item(), "elbo_se": diff[0].std().item() / math.sqrt(diff.shape[1]),
        "log_p": diff[1].mean().item(), "log_p_se": diff[1].std().item() / math.sqrt(diff.shape[1]),
    }  # fmt: skip
    out["share_of_pixel_draws_beyond_clamp"] = beyond / (opt.samples / opt.chunk)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
