"""Static binarized MNIST under a wall-time budget: train runs as a user would, side by side,
then score each on the full test set (or, to choose between configurations, on valid).

Every run is ``flowvae train --preset PRESET data.root=DATA train.max_minutes=MINUTES
[model.posterior=P] OVERRIDES`` in its own process; ``--jobs 2`` trains two at once with one
thread each (how issue 17's baseline was measured), ``--jobs 1`` one after the other with
``--threads``. Then ``flowvae eval`` scores each best-valid checkpoint (IWAE, K=5000 by
default, all 10,000 test images unless ``--limit``) with ``--eval-threads`` threads, timed,
and the ELBO, cached, so that ``flowvae compare`` then pairs every run with the first (the
difference of their mean −log p̂(x) and its paired standard error over the same images). One
JSON line per run, then a markdown table.

Runs are named: ``--posteriors a,b`` makes runs ``a`` and ``b`` (``model.posterior=a`` ...),
``--config NAME=OVERRIDES`` a run with its own overrides, ``--grid hour`` the configurations
tried for issue 17 (to choose between them: ``--split valid --limit 1000 --samples 1000
--score-in-jobs``).

    python benchmarks/mnist_static.py --preset mnist-static-hour --posteriors preset,diag --jobs 2 \\
        --curves hour_curves.png               # 60 minutes each: the issue-17 benchmark
    python benchmarks/mnist_static.py --preset mnist-static-hour --posteriors preset,diag --jobs 2 --minutes 10
    python benchmarks/mnist_static.py --posteriors diag,iaf --minutes 4 --limit 500 train.lr_schedule=cosine-budget
    python benchmarks/mnist_static.py --grid hour --jobs 12 --minutes 7 --split valid --limit 1000 --samples 1000 \
        train.lr_schedule=cosine-budget train.epochs=100000

``--posteriors preset`` keeps the preset's own posterior; ``--curves`` draws every run's valid
ELBO (test-free) against epochs and wall time into one PNG.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from flowvae.compare import plot_curves
from flowvae.config import apply_overrides
from flowvae.presets import preset

# the configurations tried for the one-hour static-MNIST preset (issue 17): overrides on mnist-mlp
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
    "iaf64-8steps": "model.posterior=iaf model.flow_hidden=64 model.flow_steps=8",
    "iaf64-500": "model.posterior=iaf model.flow_hidden=64 model.hidden=[500,500]",
}
GRIDS = {"hour": HOUR_GRID}


def flowvae(args: list[str], threads: int) -> subprocess.CompletedProcess:
    """``python -m flowvae ARGS`` with ``threads`` OpenMP threads; a failure ends the benchmark."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    done = subprocess.run([sys.executable, "-m", "flowvae", *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"flowvae {args[0]} failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    return done


def train(args: argparse.Namespace, name: str, own: list[str], threads: int) -> dict:
    run_dir = Path(args.run_dir) / name
    overrides = [f"data.root={args.data}", f"train.max_minutes={args.minutes}", *args.overrides, *own]
    t0 = time.perf_counter()
    flowvae(["train", "--preset", args.preset, "--run-dir", str(run_dir), "--no-progress", "--overwrite",
             f"train.threads={threads}", *overrides], threads)  # fmt: skip
    with open(run_dir / "metrics.csv") as f:
        metrics = list(csv.DictReader(f))
    best = max(metrics, key=lambda r: float(r["valid_elbo"]))
    cfg = apply_overrides(preset(args.preset), overrides)
    return {
        "run": name, "overrides": " ".join(own), "posterior": cfg.model.posterior, "preset": args.preset, "minutes": args.minutes,
        "train_threads": threads, "wall_seconds": round(time.perf_counter() - t0, 1),
        "epochs": float(metrics[-1]["epoch"]), "steps": int(metrics[-1]["step"]),
        "best_valid_elbo": round(float(best["valid_elbo"]), 3), "best_epoch": float(best["epoch"]),
        "final_train_elbo": round(float(metrics[-1]["train_elbo"]), 3),
    }  # fmt: skip


def score(args: argparse.Namespace, row: dict) -> dict:
    run_dir = str(Path(args.run_dir) / row["run"])
    # cached (RUN/eval-cache): a fresh run never hits the cache, so the time is measured, and
    # `flowvae compare` then pairs the runs' per-image values without recomputing them
    common = ["--json", "--no-progress", "--threads", str(args.eval_threads), "--split", args.split]
    common += ["--limit", str(args.limit)] if args.limit else []
    iwae = json.loads(flowvae(["eval", run_dir, "--samples", str(args.samples), *common], args.eval_threads).stdout)
    elbo = json.loads(flowvae(["eval", run_dir, "--estimator", "elbo", *common], args.eval_threads).stdout)
    return {
        **row, "split": args.split, "nll_iwae": round(iwae["nll"], 3), "stderr": round(iwae["stderr"], 3),
        "K": args.samples, "n": iwae["n"], "iwae_minutes": round(iwae["seconds"] / 60, 2),
        "eval_threads": args.eval_threads, "elbo": round(-elbo["nll"], 3),
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/binarized_mnist")
    p.add_argument("--preset", default="mnist-mlp")
    p.add_argument("--posteriors", default="", help="comma-separated runs; 'preset': the preset's own")
    p.add_argument("--config", action="append", default=[], help="a run: NAME=OVERRIDES (space-separated)")
    p.add_argument("--grid", choices=sorted(GRIDS), help="a built-in list of runs")
    p.add_argument("--split", choices=["test", "valid"], default="test", help="scored on (valid: to choose)")
    p.add_argument("--minutes", type=float, default=60.0, help="training wall-time budget of every run")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once, one thread each if > 1")
    p.add_argument("--threads", type=int, default=2, help="training threads when --jobs 1")
    p.add_argument("--eval-threads", type=int, default=2)
    p.add_argument("--score-in-jobs", action="store_true", help="score each run in its job, one thread")
    p.add_argument("--samples", type=int, default=5000, help="IWAE K")
    p.add_argument("--limit", type=int, default=0, help="seeded random test subset (0 = all 10k)")
    p.add_argument("--run-dir", default="runs/bench-mnist-static")
    p.add_argument("--curves", default="", help="PNG of the valid ELBO against epochs and wall time")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = p.parse_args()
    runs = {n: ([] if n == "preset" else [f"model.posterior={n}"]) for n in args.posteriors.split(",") if n}
    runs.update({n: o.split() for n, o in (GRIDS[args.grid] if args.grid else {}).items()})
    runs.update({n: o.split() for n, _, o in (text.partition("=") for text in args.config)})
    if not runs:
        p.error("name the runs: --posteriors, --config or --grid")
    threads = 1 if args.jobs > 1 else args.threads
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    stamp = {"machine": machine, "date": time.strftime("%Y-%m-%d")}
    if args.score_in_jobs:  # a sweep: each job scores its own run at once (evaluation times overlap)
        args.eval_threads = threads

        def job(run):
            row = score(args, train(args, run[0], run[1], threads))
            print(json.dumps({**row, **stamp}), flush=True)
            return row

        with ThreadPoolExecutor(args.jobs) as pool:
            rows = list(pool.map(job, runs.items()))
    else:  # training side by side, then each evaluation alone: its time is the one a user sees
        with ThreadPoolExecutor(args.jobs) as pool:
            trained = list(pool.map(lambda run: train(args, run[0], run[1], threads), runs.items()))
        rows = []
        for row in trained:
            rows.append(score(args, row))
            print(json.dumps({**rows[-1], **stamp}), flush=True)
    if len(rows) > 1:  # paired differences to the first run, from the cached per-image values
        compared = ["compare", *(str(Path(args.run_dir) / r["run"]) for r in rows), "--json", "--no-progress",
                    "--samples", str(args.samples), "--split", args.split, "--threads", str(args.eval_threads)]
        compared += ["--limit", str(args.limit)] if args.limit else []
        paired = {Path(c["run"]).name: c for c in json.loads(flowvae(compared, args.eval_threads).stdout)["rows"]}
        for r in rows:
            c = paired.get(r["run"], {})
            r["paired_to"], r["paired_diff"], r["paired_stderr"] = rows[0]["run"], c.get("diff"), c.get("diff_stderr")
    with open(Path(args.run_dir) / "results.jsonl", "w") as f:
        f.writelines(json.dumps({**r, **stamp}) + "\n" for r in rows)
    if args.curves:
        plot_curves([Path(args.run_dir) / r["run"] for r in rows], args.curves)
    print(f"\n{args.minutes:g} min of training each ({args.jobs} at a time, {threads} thread(s) each)")
    print(f"| run | posterior | {args.split} −log p(x) IWAE | ± | minus `{rows[0]['run']}` (paired ±) | "
          f"{args.split} ELBO | best valid ELBO (epoch) | epochs | final train ELBO | IWAE minutes |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: r["nll_iwae"]):
        diff = r.get("paired_diff")
        paired = f"{diff:+.2f} ± {r['paired_stderr']:.2f}" if diff is not None and r["paired_stderr"] else ""
        print(
            f"| `{r['run']}` | {r['posterior']} | {r['nll_iwae']:.2f} | {r['stderr']:.2f} | {paired} | "
            f"{r['elbo']:.2f} | {r['best_valid_elbo']:.2f} ({r['best_epoch']}) | {r['epochs']} | "
            f"{r['final_train_elbo']:.2f} | {r['iwae_minutes']:.1f} |"
        )


if __name__ == "__main__":
    main()
