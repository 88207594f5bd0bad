"""Equal-epoch comparison of finished runs: the valid ELBO (EMA weights) each run logged after
``--epoch`` epochs, read from the runs' metrics.csv. Complements equal-wall-time tables, whose
epochs differ with each model's cost and the machine's load.

    python benchmarks/valid_at_epoch.py runs/bench-mnist-static/* --epoch 9
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--epoch", type=int, required=True)
    args = p.parse_args()
    print(f"| run | valid ELBO after {args.epoch} epochs | steps | seconds |\n|---|---|---|---|")
    for run in map(Path, args.run_dirs):
        with open(run / "metrics.csv") as f:
            row = next((r for r in csv.DictReader(f) if float(r["epoch"]) == args.epoch), None)
        if row is None:
            print(f"| `{run.name}` | (no evaluation at epoch {args.epoch}) | | |")
        else:
            print(f"| `{run.name}` | {float(row['valid_elbo']):.2f} | {row['step']} | {float(row['seconds']):.0f} |")


if __name__ == "__main__":
    main()
