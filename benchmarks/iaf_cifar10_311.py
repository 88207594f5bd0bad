"""The ``iaf-cifar10-311`` preset (openai/iaf's 3.11 bits/dim model) on CPU: size, step time,
a smoke run and the peak memory of evaluating it at K importance samples.

1. Parameter count, with the preset's ``iaf-logistic`` likelihood and with ``logistic``.
2. Mean wall time of a training step at batch 32 (one process's share of the preset's global
   batch of 256 over 8 processes), after one warm-up step, on CIFAR-10 subset images.
3. A smoke run: ``train`` of the preset on the 4000-image CIFAR-10 subset (``valid_size=0``:
   every non-test image trains, as in the reference) for ``--steps`` steps at batch 32.
4. ``flowvae eval`` of that run, in a fresh process per K, with default settings
   (``eval.batch_size``, ``eval.chunk``, ``model.row_budget_mb``) on ``--images`` test images:
   the process's peak RSS (VmHWM) and wall time; ``eval_K<K>_progress.log`` beside the run
   directory logs rows done vs peak RSS after every pass.

Cost: a pass of this model is ~10 GMAC per (image, sample) row, so K=100 on 32 images (3200
rows) is ~35 TMAC: several minutes on 2 CPU cores.

    python benchmarks/iaf_cifar10_311.py --ks 10 100 --threads 2
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from flowvae.config import apply_overrides
from flowvae.data import iterate_batches, load_data
from flowvae.model import build_model
from flowvae.optim import optimizer_for, train_step
from flowvae.presets import preset
from flowvae.train import train

PRESET = "iaf-cifar10-311"


def overrides(data_root: str, steps: int) -> list[str]:
    return [
        "data.name=npz", f"data.root={data_root}", "data.file=cifar10_subset_4000.npz",
        "data.test_size=500", "train.batch_size=32", f"train.max_steps={steps}", "train.epochs=1",
    ]  # fmt: skip


def parameter_counts() -> dict:
    counts, rows, per_row = {}, 0, 0
    for likelihood in ("iaf-logistic", "logistic"):
        cfg = apply_overrides(preset(PRESET), [f"model.likelihood={likelihood}"])
        model = build_model(cfg.model, (3, 32, 32), binary=False)
        counts[likelihood] = sum(p.numel() for p in model.parameters())
        if likelihood == "iaf-logistic":  # the preset's
            rows, per_row = model.max_rows, model.bytes_per_row()
    return {"params": counts, "rows_per_pass": rows, "estimated_mb_per_row": round(per_row / 2**20, 2)}


def step_time(data_root: str, steps: int) -> float:
    cfg = apply_overrides(preset(PRESET), overrides(data_root, 0))
    data = load_data(cfg.data)
    torch.manual_seed(0)
    model = build_model(cfg.model, data.shape, data.binary)
    x = next(iterate_batches(data, "train", 32, shuffle=True, seed=0))
    model.data_init(x)
    optimizer = optimizer_for(cfg, model)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        train_step(model, optimizer, x, cfg, beta=1.0, lr=cfg.train.lr)
        times.append(time.perf_counter() - start)
    return sum(times[1:]) / steps


def peak_rss_mb() -> float:
    """This process's peak RSS (MiB): /proc's VmHWM, which exec resets (``ru_maxrss`` keeps the
    forking parent's: 3.6 GB of training here)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def log_progress(path: Path) -> None:
    """Append (seconds, rows decoded so far, peak RSS) to ``path`` after every top-down pass, so
    that a run stopped early still shows how memory evolved with the rows processed."""
    from flowvae.hierarchical import HierarchicalVAE

    top_down, start, rows = HierarchicalVAE.top_down, time.perf_counter(), [0]

    def logged(self, n, *args, **kwargs):
        out = top_down(self, n, *args, **kwargs)
        rows[0] += n
        with path.open("a") as f:
            f.write(f"{time.perf_counter() - start:.1f} s, {rows[0]} rows, peak RSS {peak_rss_mb():.0f} MB\n")
        return out

    HierarchicalVAE.top_down = logged


def measure_eval(run_dir: str, images: int, k: int, threads: int) -> None:
    """(child process) ``flowvae eval`` with default settings; prints its JSON plus peak RSS."""
    import contextlib
    import io

    from flowvae.cli import main

    log_progress(Path(run_dir).parent / f"eval_K{k}_progress.log")

    argv = ["eval", run_dir, "--checkpoint", "latest", "--estimator", "iwae", "--limit", str(images),
            "--samples", str(k), "--json", "--threads", str(threads)]  # fmt: skip
    out = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    result = json.loads(out.getvalue()) if code == 0 else {"error": code}
    wall = round(time.perf_counter() - start, 1)
    print(json.dumps({**result, "peak_rss_mb": round(peak_rss_mb()), "wall_s": wall}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/cifar10_subset", help="folder of cifar10_subset_4000.npz")
    p.add_argument("--steps", type=int, default=2, help="timed training steps (and smoke-run steps)")
    p.add_argument("--images", type=int, default=32, help="test images evaluated")
    p.add_argument("--ks", type=int, nargs="+", default=[100], help="importance samples K to evaluate at")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--measure-eval", nargs=2, metavar=("RUN_DIR", "K"), help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.measure_eval:
        measure_eval(args.measure_eval[0], args.images, int(args.measure_eval[1]), args.threads)
        return
    row: dict = {"preset": PRESET, **parameter_counts()}
    row["step_seconds_batch32"] = round(step_time(args.data, args.steps), 2)
    print(json.dumps(row), flush=True)  # each stage as it completes: the last can take an hour
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        cfg = apply_overrides(preset(PRESET), overrides(args.data, args.steps))
        start = time.perf_counter()
        state = train(cfg, run_dir, progress=False)
        row["smoke_run"] = {"steps": state.step, "seconds": round(time.perf_counter() - start, 1)}
        print(json.dumps(row["smoke_run"]), flush=True)
        row["eval"] = []
        for k in args.ks:
            cmd = [sys.executable, __file__, "--measure-eval", str(run_dir), str(k),
                   "--images", str(args.images), "--threads", str(args.threads)]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            row["eval"].append({"K": k, **json.loads(out.strip().splitlines()[-1])})
            print(json.dumps(row["eval"][-1]), flush=True)
    row["threads"], row["torch"], row["date"] = args.threads, torch.__version__, time.strftime("%Y-%m-%d")
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
