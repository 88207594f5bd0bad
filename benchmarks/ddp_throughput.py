"""Training throughput with 1 and 2 torchrun processes (gloo on CPU) on static MNIST.

Each run trains `train.max_steps` steps of the `mnist-mlp` preset with the same effective batch;
images/s is read from the run's own clock (startup and data loading excluded).

    python benchmarks/ddp_throughput.py --data ../shared/data/binarized_mnist --steps 300
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from flowvae.checkpoint import load_checkpoint


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/binarized_mnist")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--procs", default="1,2")
    args = p.parse_args()
    for procs in map(int, args.procs.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            threads = max(1, (os.cpu_count() or 1) // procs)
            cmd = [
                sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
                "-m", "flowvae", "train", "--preset", "mnist-mlp", "--run-dir", f"{tmp}/run", "--no-progress",
                f"data.root={args.data}", f"train.max_steps={args.steps}", f"train.batch_size={args.batch_size}",
                f"train.threads={threads}", "train.epochs=1000",
            ]  # fmt: skip
            subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
            state = load_checkpoint(f"{tmp}/run/checkpoint.pt")["state"]
            print(json.dumps({
                "processes": procs, "threads_per_process": threads, "effective_batch": args.batch_size,
                "steps": state["step"], "seconds": round(state["seconds"], 2),
                "images_per_s": round(state["step"] * args.batch_size / state["seconds"], 1),
                "date": time.strftime("%Y-%m-%d"),
            }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
