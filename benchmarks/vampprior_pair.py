"""Ours against the VampPrior paper's code, epoch for epoch, at the same settings (issue 32, item 3).

For a row of Tomczak & Welling's Table 2 (``vae``, ``vae-vamp``, ``hvae``, ``hvae-vamp``) and each
seed, trains

- ours: ``flowvae train --preset vampprior-mnist-ROW data.root=DATA train.epochs=E train.seed=S``
  (the preset is the reference network: gated layers, Hardtanh log-variances, He init,
  AdamNormGrad, beta = epoch / 100);
  With ``--clamp``, our training likelihood clamps the logits as the reference's Bernoulli clamps
  its probabilities (to [1e-5, 1 - 1e-5]); evaluation stays exact;
- the reference: ``../shared/peers/run_vampprior.py --model M --prior P --epochs E --seed S``
  (jmtomczak/vae_vampprior through its own training loop, in the peer venv that
  ``../shared/peers/setup_vampprior.sh`` builds),

``--jobs`` processes at a time with ``--threads`` threads each, then scores every best-valid model
on the first ``--limit`` test images in file order with importance sampling, K = ``--samples``
(ours: ``flowvae.evaluate(..., "iwae")``; the reference: its ``calculate_likelihood``, in passes of
100). Prints, per epoch, the valid loss (−ELBO, β = 1, one sample, mean over the 10,000 valid
images) of each side as mean ± sd over seeds and their difference, then the test −log p(x).
Resumable: a finished side/seed is read back from OUT, not retrained.

    python benchmarks/vampprior_pair.py --data ../shared/data/binarized_mnist --row vae-vamp \\
        --epochs 10 --seeds 0 1 --jobs 2 --threads 1 --limit 500 --samples 1000 --out /tmp/pair
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT.parent / "shared" / "peers"
CLAMPED = """
import sys
import flowvae.likelihoods as L
from flowvae.cli import main
log_prob = L.Bernoulli.log_prob
L.Bernoulli.log_prob = lambda self, x, out: log_prob(self, x, out.clamp(-11.5129, 11.5129))
sys.exit(main(sys.argv[1:]))
"""
REFERENCE = {"vae": ("vae", "standard"), "vae-vamp": ("vae", "vampprior"),
             "hvae": ("hvae_2level", "standard"), "hvae-vamp": ("hvae_2level", "vampprior")}  # fmt: skip


def ours(opt: argparse.Namespace, seed: int) -> dict:
    """Train (or resume) our run and score it; returns {"valid": [per epoch], "test_nll", ...}."""
    run = Path(opt.out) / f"ours-{opt.row}-e{opt.epochs}-s{seed}{'-clamp' if opt.clamp else ''}"
    done = run / "pair.json"
    if done.exists():
        return json.loads(done.read_text())
    cmd = [sys.executable, "-m", "flowvae", "train", "--preset", f"vampprior-mnist-{opt.row}",
           f"data.root={opt.data}", f"train.epochs={opt.epochs}", f"train.seed={seed}",
           f"train.threads={opt.threads}", f"train.amp={opt.amp}", "--run-dir", str(run), "--no-progress"]  # fmt: skip
    if (run / "checkpoint.pt").exists():
        cmd = [sys.executable, "-m", "flowvae", "train", "--resume", str(run), "--no-progress"]
    if opt.clamp:  # the reference's Bernoulli: training logits clamped to logit(1 - 1e-5)
        cmd = [sys.executable, "-c", CLAMPED, *cmd[3:]]
    start = time.time()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=open(run.with_suffix(".err"), "w"))
    train_s = time.time() - start
    with open(run / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f)]
    valid = [-float(r["valid_elbo"]) for r in rows if float(r["epoch"]).is_integer()]
    score = subprocess.run(
        [sys.executable, __file__, "--score", str(run), "--limit", str(opt.limit), "--samples", str(opt.samples),
         "--threads", str(opt.threads)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    out = {"side": "ours", "seed": seed, "valid": valid, "train_s": train_s, **json.loads(score.stdout)}
    done.write_text(json.dumps(out))
    return out


def score(run: str, limit: int, samples: int, threads: int) -> dict:
    """Our best-valid model's −log p̂(x) on the first ``limit`` test images (file order)."""
    import torch

    import flowvae

    torch.set_num_threads(threads)
    loaded = flowvae.load_run(run, "best")
    data = flowvae.load_data(loaded.config.data)
    start = time.time()
    est = flowvae.evaluate(loaded.model, data.test[:limit], "iwae", samples, seed=loaded.config.eval.seed)
    return {"test_nll": est.nll, "test_stderr": est.stderr, "n": est.n, "score_s": time.time() - start,
            "best_epoch": loaded.checkpoint["state"]["best_epoch"]}  # fmt: skip


def cross(run: str, limit: int, samples: int, threads: int) -> dict:
    """Our trained model (best-valid) scored by both codes on the first ``limit`` test images:
    our IWAE and ELBO, and the reference's ``calculate_likelihood`` (S = ``samples`` in passes of
    100) and ``calculate_lower_bound`` on the reference's model holding our weights. Tells a
    difference in training from one in evaluation."""
    import tempfile
    import warnings

    import torch

    import flowvae

    sys.path[:0] = [str(ROOT / "tests"), str(PEERS / "vae_vampprior")]
    import test_reference_network as maps  # the weight maps the log-weight test checks

    torch.set_num_threads(threads)
    loaded = flowvae.load_run(run, "best")
    row = loaded.config.model
    two, prior = row.stochastic_layers == 2, row.prior
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from models import VAE, HVAE_2level
    args = maps.peer_args("vampprior" if prior == "vampprior" else "standard", row.prior_components)
    theirs = (HVAE_2level.VAE if two else VAE.VAE)(args)
    _load_ours_into(theirs, loaded.model, maps.hvae_tensors if two else maps.vae_tensors, args.prior)
    x = flowvae.load_data(loaded.config.data).test[:limit]
    seed = loaded.config.eval.seed
    out = {"run": run, "n": len(x), "samples": samples}
    out["ours_iwae"] = flowvae.evaluate(loaded.model, x, "iwae", samples, seed=seed).nll
    out["ours_elbo"] = flowvae.evaluate(loaded.model, x, "elbo", 1, seed=seed).nll
    theirs.eval()
    with torch.no_grad(), tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flat = x.flatten(1).float()
        out["reference_elbo"] = float(theirs.calculate_lower_bound(flat, MB=100))
        out["reference_iwae"] = float(theirs.calculate_likelihood(flat, tmp + "/", mode="test", S=samples, MB=100))
    return out


def _load_ours_into(theirs, ours, tensor_map, prior: str) -> None:
    """The inverse of the test's map (reference state -> our parameters): each reference element
    tagged by its index, mapped, then our values scattered back to the tagged places."""
    import torch

    named = dict(theirs.named_parameters())
    sizes = [p.numel() for p in named.values()]
    tags = torch.arange(sum(sizes), dtype=torch.float64).split(sizes)
    tagged = {k: t.view(p.shape) for (k, p), t in zip(named.items(), tags, strict=True)}
    flat = torch.empty(sum(sizes), dtype=torch.float64)
    for where, value in zip(tensor_map(tagged, prior), ours.parameters(), strict=True):
        flat[where.flatten().long()] = value.detach().double().flatten()
    with torch.no_grad():
        for p, part in zip(named.values(), flat.split(sizes), strict=True):
            p.copy_(part.view(p.shape))


def peer(opt: argparse.Namespace, seed: int) -> dict:
    """Train the reference (or read its finished JSON lines) and return the same fields."""
    out = Path(opt.out) / f"peer-{opt.row}-e{opt.epochs}-s{seed}.jsonl"
    lines = [json.loads(x) for x in out.read_text().splitlines()] if out.exists() else []
    if not any(x.get("type", x.get("kind")) == "final" or "test_nll_is" in x for x in lines):
        out.unlink(missing_ok=True)
        model, prior = REFERENCE[opt.row]
        venv = os.environ.get("VAMP_VENV", "/tmp/vampprior-peer-venv")
        cmd = [f"{venv}/bin/python", str(PEERS / "run_vampprior.py"), "--model", model, "--prior", prior,
               "--epochs", str(opt.epochs), "--seed", str(seed), "--threads", str(opt.threads),
               "--S", str(opt.samples), "--MB", "100", "--limit", str(opt.limit), "--out", str(out)]  # fmt: skip
        start = time.time()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=open(out.with_suffix(".err"), "w"))
        lines = [json.loads(x) for x in out.read_text().splitlines()]
        lines.append({"train_s_wall": time.time() - start})
    epochs = [x for x in lines if "valid_loss" in x and "epoch" in x]
    final = next(x for x in lines if "test_nll_is" in x)
    return {"side": "peer", "seed": seed, "valid": [x["valid_loss"] for x in epochs],
            "test_nll": final["test_nll_is"], "best_epoch": final.get("best_epoch"),
            "train_s": sum(x.get("seconds", 0.0) for x in epochs)}  # fmt: skip


def mean_sd(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.2f}" if values else "—"
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"


def report(results: list[dict], opt: argparse.Namespace) -> None:
    sides = {s: [r for r in results if r["side"] == s] for s in ("ours", "peer")}
    n = {s: len(v) for s, v in sides.items()}
    print(f"\nrow {opt.row}, {opt.epochs} epochs, seeds {opt.seeds}; ± is the sd over seeds "
          f"(ours n={n['ours']}, reference n={n['peer']})\n")  # fmt: skip
    print("| epoch | ours valid −ELBO | reference valid −ELBO | ours − reference |")
    print("|---|---|---|---|")
    for e in range(opt.epochs):
        cols = {s: [r["valid"][e] for r in v if len(r["valid"]) > e] for s, v in sides.items()}
        diff = (statistics.fmean(cols["ours"]) - statistics.fmean(cols["peer"])
                if cols["ours"] and cols["peer"] else float("nan"))  # fmt: skip
        print(f"| {e + 1} | {mean_sd(cols['ours'])} | {mean_sd(cols['peer'])} | {diff:+.2f} |")
    print(f"\ntest −log p(x), IS K={opt.samples} on the first {opt.limit} test images, best-valid model:")
    for s, v in sides.items():
        per_seed = ", ".join(f"{r['test_nll']:.2f}" for r in v)
        train = ", ".join(f"{r['train_s'] / 60:.1f}" for r in v)
        print(f"- {s}: {mean_sd([r['test_nll'] for r in v])} (seeds: {per_seed}; train minutes: {train})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "binarized_mnist"))
    p.add_argument("--row", choices=sorted(REFERENCE), default="vae-vamp")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--limit", type=int, default=500)
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--amp", default="none", help="ours' train.amp (none: float32, as the reference)")
    p.add_argument("--side", choices=["both", "ours", "peer"], default="both")
    p.add_argument("--clamp", action="store_true",
                   help="ours with the reference's Bernoulli clamp in training (probabilities in [1e-5, 1 - 1e-5])")
    p.add_argument("--out", default="/tmp/vampprior-pair")
    p.add_argument("--score", help=argparse.SUPPRESS)
    p.add_argument("--cross", metavar="RUN", help="score our trained RUN with both codes (IWAE, ELBO) and exit")
    opt = p.parse_args()
    if opt.score:
        print(json.dumps(score(opt.score, opt.limit, opt.samples, opt.threads)))
        return
    if opt.cross:
        print(json.dumps(cross(opt.cross, opt.limit, opt.samples, opt.threads)))
        return
    opt.data = str(Path(opt.data).resolve())
    Path(opt.out).mkdir(parents=True, exist_ok=True)
    tasks = [(f, s) for s in opt.seeds for f in (ours, peer) if opt.side in ("both", f.__name__)]
    with ThreadPoolExecutor(opt.jobs) as pool:
        results = list(pool.map(lambda t: t[0](opt, t[1]), tasks))
    Path(opt.out, f"pair-{opt.row}-e{opt.epochs}.json").write_text(json.dumps(results))
    report(results, opt)


if __name__ == "__main__":
    main()
