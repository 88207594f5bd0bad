"""Two seeds side by side vs one after the other, on CPU, at equal total threads (issue 25).

A: ``flowvae train --preset mnist-mlp --seeds 2`` (the members run concurrently, each with
cores/2 intra-op threads); B: the same two seeds as two ``flowvae train`` commands one after the
other, each with ``train.threads`` = all cores. Both train ``train.max_steps`` steps per seed
and are timed as whole commands (start-up, data loading, evaluations and checkpoints included),
in interleaved repeats (A B, B A, A B, ...); the median wall times and their ratio are printed,
with the machine's load average before and after (other processes sharing the cores skew both).

    python benchmarks/seeds_cpu.py --data PATH/binarized_mnist --steps 1000 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from flowvae.group_training import cores as flowvae_cores


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def timed(cmds: list[list[str]], env: dict[str, str]) -> float:
    start = time.perf_counter()
    for cmd in cmds:
        subprocess.run(cmd, check=True, capture_output=True, env=env)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="folder holding the binarized_mnist files")
    p.add_argument("--steps", type=int, default=1000, help="training steps per seed (default: 1000)")
    p.add_argument("--repeats", type=int, default=3, help="A/B pairs (default: 3)")
    args = p.parse_args()
    cores = flowvae_cores()
    env = {**os.environ, "OMP_NUM_THREADS": str(cores)}
    common = [
        "--preset",
        "mnist-mlp",
        "--no-progress",
        f"data.root={args.data}",
        f"train.max_steps={args.steps}",
    ]
    times: dict[str, list[float]] = {"concurrent": [], "sequential": []}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            order = ["concurrent", "sequential"] if repeat % 2 == 0 else ["sequential", "concurrent"]
            for kind in order:
                run = Path(tmp) / f"{kind}-{repeat}"
                train = [sys.executable, "-m", "flowvae", "train", *common]
                if kind == "concurrent":
                    cmds = [[*train, "--seeds", "2", "--run-dir", str(run)]]
                else:
                    cmds = [[*train, f"train.seed={s}", f"train.threads={cores}", "--run-dir", f"{run}/seed-{s}"]
                            for s in (0, 1)]  # fmt: skip
                times[kind].append(timed(cmds, env))
                print(f"repeat {repeat} {kind}: {times[kind][-1]:.1f} s", file=sys.stderr, flush=True)
    medians = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({
        "steps_per_seed": args.steps, "seeds": 2, "cores": cores, "cpu": cpu_model(),
        "seconds": {k: [round(t, 1) for t in v] for k, v in times.items()},
        "median_seconds": {k: round(v, 1) for k, v in medians.items()},
        "ratio_concurrent_to_sequential": round(medians["concurrent"] / medians["sequential"], 3),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "date": time.strftime("%Y-%m-%d"),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
