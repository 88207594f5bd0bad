"""Fingerprints of training and evaluation, to show that a refactoring changed no number.

Trains a few short runs from presets (one thread, fixed seeds), then prints one line per run: the
SHA-256 of its final state dict (every tensor's bytes, in key order), and the SHA-256 of the
per-example values of each estimator on a fixed subset. Run it on two commits of the same machine
and diff the outputs: equal lines mean bitwise-equal weights and estimates.

    python benchmarks/fingerprint.py --out /tmp/before.txt     # on the old commit
    python benchmarks/fingerprint.py --out /tmp/after.txt      # on the new one
    diff /tmp/before.txt /tmp/after.txt

Same machine only: bitwise results across processors are not expected.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
from pathlib import Path

import torch

import flowvae

RUNS = {
    "digits-diag": ("digits", ["train.epochs=2"]),
    "digits-iaf": ("digits", ["train.epochs=2", "model.posterior=iaf", "model.flow_steps=2"]),
    "digits-realnvp-aux": ("digits", ["train.epochs=1", "model.posterior=realnvp-aux"]),
    "digits-realnvp": ("digits", ["train.epochs=1", "model.posterior=realnvp"]),
    "digits-iaf-mean-flowprior": (
        "digits", ["train.epochs=1", "model.posterior=iaf-mean", "model.prior=flow"]
    ),
    "digits-sylvester": ("digits", ["train.epochs=1", "model.posterior=sylvester-orthogonal"]),
    "hierarchical": (
        "iaf-cifar10-small",
        ["data.name=digits", "data.binarize=dynamic", "model.depths=[1]", "model.n_h=8", "model.n_z=2",
         "model.likelihood=bernoulli", "train.batch_size=32", "train.max_steps=6", "train.epochs=1"],
    ),  # fmt: skip
}
ESTIMATES = {"elbo": (5, {}), "iwae": (50, {"chunk": 20}), "ais": (2, {"steps": 5, "leapfrog": 2})}


def state_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for key, value in model.state_dict().items():
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="also write the lines to this file")
    p.add_argument("--runs", nargs="*", default=list(RUNS), choices=list(RUNS))
    args = p.parse_args()
    torch.set_num_threads(1)
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.runs:
            preset, overrides = RUNS[name]
            cfg = flowvae.preset(preset)
            from flowvae.config import apply_overrides

            apply_overrides(cfg, [*overrides, "train.amp=none", "train.threads=1"])
            flowvae.fit(cfg, Path(tmp) / name, progress=False)
            run = flowvae.load_run(Path(tmp) / name, "latest")
            data = flowvae.load_data(run.config.data)
            x = data.test[:40]
            parts = [f"{name}: weights {state_digest(run.model)}"]
            for estimator, (samples, options) in ESTIMATES.items():
                est = flowvae.evaluate(run.model, x, estimator, samples, seed=7, batch_size=16, **options)
                values = est.per_example.numpy().tobytes()
                parts.append(f"{estimator} {hashlib.sha256(values).hexdigest()[:16]} ({est.nll:.6f})")
            lines.append("; ".join(parts))
            print(lines[-1], flush=True)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
