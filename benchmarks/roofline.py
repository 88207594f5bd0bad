"""How close a preset's training step comes to this CPU's matmul peak (issue 32, item 5).

For a preset, in one process at ``--threads`` threads:

- FLOPs of one training step at the preset's batch size (forward + backward; FlopCounterMode
  counts matrix products only, so elementwise work and the optimizer are free);
- the step's median time (``flowvae.optim.train_step``, the trainer's own, after a warm-up) in
  float32 and in bf16 autocast, and the GFLOP/s that makes;
- the matmul peak at the same thread count, float32 and bf16: the best of a few large square
  products before and after the steps (the step's achieved rate as a share of it is what the
  table reports);
- with ``--peer`` (the ``vampprior-mnist-*`` presets), the reference's step at the same network:
  jmtomczak/vae_vampprior's model, loss and AdamNormGrad (``../shared/peers/vae_vampprior``),
  timed alternately with ours (float32 both, then ours in bf16), medians of ``--steps`` steps;
- the ceiling: the step's own matrix products (their shapes from ``torch.profiler``), each timed
  alone at the same precision: the rate the step would reach if nothing else took time.

    python benchmarks/roofline.py --preset vampprior-mnist-vae-vamp --threads 1 --steps 30 --peer
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from flowvae.config import apply_overrides
from flowvae.model import build_model
from flowvae.optim import native_bf16, optimizer_for, train_step
from flowvae.presets import preset

PEER = Path(__file__).resolve().parents[2] / "shared" / "peers" / "vae_vampprior"
PEER_MODELS = {"vae": ("VAE", "standard"), "vae-vamp": ("VAE", "vampprior"),
               "hvae": ("HVAE_2level", "standard"), "hvae-vamp": ("HVAE_2level", "vampprior")}  # fmt: skip


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of the best of ``repeats`` (n, n) @ (n, n) products in ``dtype``."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    best = min(_seconds(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def ours_step(cfg, x: torch.Tensor):
    torch.manual_seed(0)
    model = build_model(cfg.model, tuple(x.shape[1:]), True)
    optimizer = optimizer_for(cfg, model)
    return lambda: train_step(model, optimizer, x, cfg, 1.0, cfg.train.lr)


def peer_step(row: str, x: torch.Tensor, lr: float):
    sys.path.insert(0, str(PEER))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = __import__(f"models.{PEER_MODELS[row][0]}", fromlist=["VAE"])
        from utils.optimizer import AdamNormGrad
    args = argparse.Namespace(
        input_size=[1, 28, 28], z1_size=40, z2_size=40, prior=PEER_MODELS[row][1], number_components=500,
        input_type="binary", cuda=False, pseudoinputs_mean=0.05, pseudoinputs_std=0.01,
        use_training_data_init=False,
    )  # fmt: skip
    torch.manual_seed(0)
    model = module.VAE(args)
    optimizer = AdamNormGrad(model.parameters(), lr=lr)
    flat = x.flatten(1)

    def step():  # utils/training.py::train_vae's loop body
        model.train()
        optimizer.zero_grad()
        loss, _, _ = model.calculate_loss(flat, 1.0, average=True)
        loss.backward()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optimizer.step()

    return step


def product_shapes(step) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """The (M, K), (K, N) operands of every matrix product one call of ``step`` makes (forward
    and backward, as ``torch.profiler`` records ``aten::mm`` and ``aten::addmm``)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    shapes = []
    for e in prof.events():
        if e.name in ("aten::mm", "aten::addmm"):
            a, b = e.input_shapes[:2] if e.name == "aten::mm" else e.input_shapes[1:3]
            shapes.append((tuple(a), tuple(b)))
    return shapes


def ceiling(shapes, dtype: torch.dtype, repeats: int = 20) -> tuple[float, float]:
    """(FLOPs, seconds) of the step's products timed alone in ``dtype``, each the best of
    ``repeats``: the rate the step would reach if everything but its products took no time."""
    total_flops, total_s = 0.0, 0.0
    for (m, k), (_, n) in shapes:
        a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
        a @ b
        total_s += min(_seconds(lambda a=a, b=b: a @ b) for _ in range(repeats))
        total_flops += 2.0 * m * k * n
    return total_flops, total_s


def flops(step) -> int:
    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


def medians(steps: dict, n: int, warmup: int = 5) -> dict[str, float]:
    """Median seconds per step of each, timed alternately step by step after ``warmup`` steps."""
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(n):
        for k, fn in steps.items():
            times[k].append(_seconds(fn))
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="vampprior-mnist-vae-vamp")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--peer", action="store_true", help="also time the reference's step (vampprior-mnist-*)")
    p.add_argument("overrides", nargs="*")
    opt = p.parse_args()
    torch.set_num_threads(opt.threads)
    cfg = apply_overrides(preset(opt.preset), opt.overrides)
    c, h, w = 1, 28, 28
    x = (torch.rand(cfg.train.batch_size, c, h, w) < 0.13).float()  # static MNIST's share of ones
    fp32, bf16 = ours_step(_amp(cfg, "none"), x), ours_step(_amp(cfg, "bf16"), x)
    steps = {"ours fp32": fp32, "ours bf16": bf16}
    work = {"ours fp32": flops(fp32), "ours bf16": flops(bf16)}
    if opt.peer:
        steps["reference fp32"] = peer_step(opt.preset.removeprefix("vampprior-mnist-"), x, cfg.train.lr)
        work["reference fp32"] = flops(steps["reference fp32"])
    before = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    seconds = medians(steps, opt.steps)
    peak = {k: max(v, matmul_peak(getattr(torch, {"fp32": "float32", "bf16": "bfloat16"}[k])))
            for k, v in before.items()}  # fmt: skip
    caps = torch.backends.cpu.get_cpu_capability()
    print(f"preset {opt.preset} {' '.join(opt.overrides)}; {opt.threads} thread(s); torch {torch.__version__}; "
          f"{platform.processor() or platform.machine()}; capability {caps}; native bf16 {native_bf16('cpu')}")  # fmt: skip
    print(f"matmul peak (2048^3, best of 5 before and 5 after the steps): fp32 {peak['fp32']:.1f} GFLOP/s, bf16 {peak['bf16']:.1f} GFLOP/s\n")
    print("| step | GFLOP/step | ms/step (median) | GFLOP/s | % of fp32 peak | % of bf16 peak |")
    print("|---|---|---|---|---|---|")
    for k, s in seconds.items():
        rate = work[k] / s / 1e9
        print(f"| {k} | {work[k] / 1e9:.3f} | {1e3 * s:.1f} | {rate:.1f} | {100 * rate / peak['fp32']:.0f} % | "
              f"{100 * rate / peak['bf16']:.0f} % |")  # fmt: skip
    for k in ("ours fp32", "ours bf16"):
        dtype = torch.bfloat16 if k.endswith("bf16") else torch.float32
        shapes = product_shapes(steps[k])
        f, s = ceiling(shapes, dtype)
        peak_k = peak["bf16" if dtype == torch.bfloat16 else "fp32"]
        print(f"{k}: its {len(shapes)} products timed alone: {f / s / 1e9:.1f} GFLOP/s "
              f"({100 * f / s / 1e9 / peak_k:.0f} % of the peak), {1e3 * s:.1f} ms of the step's "
              f"{1e3 * seconds[k]:.1f} ms")  # fmt: skip
    if opt.peer:
        ref = seconds["reference fp32"]
        print(f"\nreference / ours (time per step): fp32 {ref / seconds['ours fp32']:.2f}x, "
              f"bf16 {ref / seconds['ours bf16']:.2f}x")  # fmt: skip
    print(json.dumps({"preset": opt.preset, "threads": opt.threads, "seconds": seconds, "flops": work,
                      "peak_gflops": peak}))  # fmt: skip


def _amp(cfg, amp: str):
    import copy

    out = copy.deepcopy(cfg)
    out.train.amp = amp
    return out


if __name__ == "__main__":
    main()
