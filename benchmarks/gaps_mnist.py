"""Inference suboptimality on static MNIST: the gaps of an FFG-trained and a flow-trained VAE.

For each run, on a fixed seeded random subset of N test examples (data.subset_indices): log p̂(x)
(AIS by default, with the paired difference to IWAE as a check), L[q*_flow] (q's own flow
family and size unless --local-flow says otherwise) and L[q*_FFG] by local optimisation,
L[q] of the amortized posterior, and the approximation and amortization gaps, as in Table 2 of
Cremer, Li & Duvenaud 2018 (arXiv 1801.03558; their MNIST FFG column: log p̂ −89.80,
L[q*_FFG] −91.23, L[q] −92.57 on training examples, a dynamically binarized model).

Prints one JSON object (both reports' summaries, warnings, settings, seconds, machine) and the
markdown table; writes per-run gaps.{csv,json,md,png} under OUT/RUN_NAME and the combined
gaps.md and gaps.png under OUT.

    flowvae train --preset gaps-mnist-ffg data.name=binarized_mnist data.binarize=auto --run-dir runs/ffg
    flowvae train --preset gaps-mnist-flow data.name=binarized_mnist data.binarize=auto --run-dir runs/flow
    python benchmarks/gaps_mnist.py runs/ffg runs/flow --n 100 --out runs/gaps-mnist
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from flowvae.gaps import GapSettings, markdown_table, plot_gaps, run_gaps, write_report
from flowvae.local import LocalOptions


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", nargs="+", help="trained runs, e.g. an FFG one and a flow one")
    p.add_argument("--n", type=int, default=100, help="seeded random subset of N examples")
    p.add_argument("--split", default="test", choices=["train", "valid", "test"])
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--estimator", default="ais", choices=["ais", "iwae"])
    p.add_argument("--samples", type=int, default=5000, help="IWAE K")
    p.add_argument("--chains", type=int, default=16)
    p.add_argument("--ais-steps", type=int, default=1000)
    p.add_argument("--elbo-samples", type=int, default=1000)
    p.add_argument("--local-flow", default="same", help="same: q's own family and size")
    p.add_argument("--steps-cap", type=int, default=10000)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--local-samples", type=int, default=50)
    p.add_argument("--check-every", type=int, default=100)
    p.add_argument("--patience", type=int, default=5)
    p.add_argument("--tolerance", type=float, default=0.01)
    p.add_argument("--lr-decay", type=float, default=0.5)
    p.add_argument("--decays", type=int, default=4)
    p.add_argument("--drop-flagged", action="store_true")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", default="runs/gaps-mnist")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    settings = GapSettings(
        estimator=args.estimator, samples={"iwae": args.samples, "ais": args.chains},
        options={"ais": {"steps": args.ais_steps}},
        elbo_samples=args.elbo_samples, local_flow=args.local_flow, batch_size=args.batch_size,
        seed=args.seed, drop_flagged=args.drop_flagged,
        local=LocalOptions(
            lr=args.lr, samples=args.local_samples, max_steps=args.steps_cap, check_every=args.check_every,
            patience=args.patience, tolerance=args.tolerance, lr_decay=args.lr_decay, decays=args.decays,
        ),
    )  # fmt: skip
    out = Path(args.out)
    reports = []
    for run_dir in args.run_dirs:
        report = run_gaps(run_dir, args.split, args.n, settings, args.seed, device=args.device)
        write_report(report, out / report.name)
        reports.append(report)
    table = markdown_table(reports)
    (out / "gaps.md").write_text(table + "\n")
    plot_gaps(reports, out / "gaps.png")
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    if args.device.startswith("cuda"):
        machine += f", {torch.cuda.get_device_name()}"
    summary = {
        "runs": [r.to_json() for r in reports], "device": args.device, "machine": machine,
        "date": time.strftime("%Y-%m-%d"), "out": str(out),
    }  # fmt: skip
    for run in summary["runs"]:
        run.pop("definitions")  # the table's notes say it once
    print(json.dumps(summary, ensure_ascii=False))
    print()
    print(table)


if __name__ == "__main__":
    main()
