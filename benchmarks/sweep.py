"""Train several configurations side by side, one thread each, for the same wall time, and
score each on the validation split (model selection never looks at the test set).

Each configuration is a name and a list of ``key=value`` overrides on ``--preset``; every run
gets ``train.max_minutes=--minutes`` and the ``cosine-budget`` schedule, so each ends its
learning-rate decay when its time is up. After training, ``flowvae eval`` scores the best-valid
checkpoint with IWAE on a seeded subset of the valid split. One JSON line per run, then a
markdown table sorted by the valid IWAE.

    python benchmarks/sweep.py --data ../shared/data/binarized_mnist --minutes 10 --jobs 2 \\
        --config "diag=" --config "iaf=model.posterior=iaf model.flow_hidden=64"
    python benchmarks/sweep.py --grid hour --jobs 14 --minutes 8 --out sweep   # the issue-17 grid

Runs must not share cores: use ``--jobs`` at most the number of cores.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# the configurations tried for the one-hour static-MNIST preset (issue 17); overrides on mnist-mlp
HOUR_GRID = {
    "diag": "",
    "diag-iw4": "train.objective=iwae train.samples=4",
    "iaf64": "model.posterior=iaf model.flow_hidden=64",
    "iaf320": "model.posterior=iaf",
    "iaf64-iw4": "model.posterior=iaf model.flow_hidden=64 train.objective=iwae train.samples=4",
    "iaf64-iw8": "model.posterior=iaf model.flow_hidden=64 train.objective=iwae train.samples=8",
    "iaf64-drop0.1": "model.posterior=iaf model.flow_hidden=64 model.dropout=0.1",
    "iaf64-wd0.05": "model.posterior=iaf model.flow_hidden=64 train.weight_decay=0.05",
    "iaf64-z64": "model.posterior=iaf model.flow_hidden=64 model.latent_dim=64",
    "iaf64-lr2e-3": "model.posterior=iaf model.flow_hidden=64 train.lr=0.002",
    "iaf64-b50": "model.posterior=iaf model.flow_hidden=64 train.batch_size=50",
    "iaf64-8steps": "model.posterior=iaf model.flow_hidden=64 model.flow_steps=8",
    "iaf64-500": "model.posterior=iaf model.flow_hidden=64 model.hidden=[500,500]",
    "iaf64-noema": "model.posterior=iaf model.flow_hidden=64 train.ema=0",
}
GRIDS = {"hour": HOUR_GRID}


def run_one(args: argparse.Namespace, name: str, overrides: list[str]) -> dict:
    run_dir = Path(args.out) / name
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    train = [
        sys.executable, "-m", "flowvae", "train", "--preset", args.preset, "--run-dir", str(run_dir),
        "--no-progress", "--overwrite", f"data.root={args.data}", "train.epochs=100000", "train.threads=1",
        f"train.max_minutes={args.minutes}", "train.lr_schedule=cosine-budget", *overrides,
    ]  # fmt: skip
    t0 = time.perf_counter()
    done = subprocess.run(train, env=env, capture_output=True, text=True)
    row: dict = {"name": name, "overrides": " ".join(overrides), "minutes": args.minutes}
    if done.returncode != 0:
        return {**row, "error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    row["train_seconds"] = round(time.perf_counter() - t0, 1)
    with open(run_dir / "metrics.csv") as f:
        metrics = list(csv.DictReader(f))
    best = max(metrics, key=lambda r: float(r["valid_elbo"]))
    row.update(epochs=int(metrics[-1]["epoch"]), best_valid_elbo=round(float(best["valid_elbo"]), 3),
               best_epoch=int(best["epoch"]), train_elbo=round(float(metrics[-1]["train_elbo"]), 3))  # fmt: skip
    score = [
        sys.executable, "-m", "flowvae", "eval", str(run_dir), "--split", "valid", "--limit", str(args.limit),
        "--samples", str(args.samples), "--threads", "1", "--json", "--no-progress",
    ]  # fmt: skip
    done = subprocess.run(score, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        return {**row, "error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    result = json.loads(done.stdout)
    row.update(valid_iwae_nll=round(result["nll"], 3), valid_stderr=round(result["stderr"], 3),
               eval_seconds=round(result.get("seconds", 0.0), 1))  # fmt: skip
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/binarized_mnist")
    p.add_argument("--preset", default="mnist-mlp")
    p.add_argument("--minutes", type=float, default=10.0, help="training wall time of every run")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    p.add_argument("--config", action="append", default=[], help="NAME=OVERRIDES (space-separated)")
    p.add_argument("--grid", choices=sorted(GRIDS), help="a built-in list of configurations")
    p.add_argument("--samples", type=int, default=1000, help="IWAE K on the valid subset")
    p.add_argument("--limit", type=int, default=1000, help="valid images scored")
    p.add_argument("--out", default="runs/sweep")
    args = p.parse_args()
    configs = dict(GRIDS[args.grid]) if args.grid else {}
    for text in args.config:
        name, _, overrides = text.partition("=")
        configs[name] = overrides
    if not configs:
        p.error("give --config NAME=OVERRIDES or --grid")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(run_one, args, n, o.split()) for n, o in configs.items()]
        rows = []
        for future in futures:
            rows.append(future.result())
            print(json.dumps(rows[-1]), flush=True)
    with open(Path(args.out) / "sweep.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    print(f"\n{args.minutes:g} min each, valid IWAE K={args.samples} on {args.limit} valid images")
    print("| config | valid −log p(x) | ± | best valid ELBO (epoch) | epochs | final train ELBO |")
    print("|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: r.get("valid_iwae_nll", float("inf"))):
        if "error" in r:
            print(f"| `{r['name']}` | error: {r['error']} | | | | |")
            continue
        print(
            f"| `{r['name']}` | {r['valid_iwae_nll']:.2f} | {r['valid_stderr']:.2f} | "
            f"{r['best_valid_elbo']:.2f} ({r['best_epoch']}) | {r['epochs']} | {r['train_elbo']:.2f} |"
        )


if __name__ == "__main__":
    main()
