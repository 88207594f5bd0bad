"""One-shot GPU check of flowvae: CLI smoke, training, IWAE and CIFAR-10 step throughput.

Run from the repository root on the GPU machine, with the data carried in the ignored folder
``.devdata/`` (``binarized_mnist/binarized_mnist_{train,valid,test}.amat.gz`` and
``cifar10_subset/cifar10_subset_4000.npz``, copies of ../shared/data), e.g. ``run`` with
``carry=[".devdata"]``:

    PYTHONUNBUFFERED=1 PYTHONPATH=src python3 benchmarks/gpu_check.py --data .devdata --out $OUT

and on a CPU-only machine, to exercise every code path (~40 s, plus ~2 min the first time
torch.compile runs; on a busy 2-core machine 1 thread is many times faster than 2):

    PYTHONPATH=src python benchmarks/gpu_check.py --device cpu --quick --threads 1 --out /tmp/gpu_check

Each result is one JSON line of ``OUT/gpu_check.jsonl`` (written and printed as soon as it is
known); ``OUT/gpu_check.md`` tabulates them at the end. A part or item that fails or runs past
its wall-time cap is recorded as ``{"part": ..., "error": "<one line>"}`` and the script goes on;
the parts share a ``--budget`` (seconds) and ``compile``, last, gets what is left of it.

1. ``env``: GPU name and capability, torch / CUDA / cuDNN versions, CPUs, the torch APIs flowvae
   needs (``torch.nn.utils.get_total_norm``, ...).
2. ``cli``: ``flowvae train`` (mnist-mlp, iaf, 400 steps) on the device, ``flowvae eval`` and
   ``flowvae sample`` of that run, then the same training under ``torchrun --nproc_per_node=1``:
   exit codes, wall seconds, img/s of the run's own clock, the precision line of invocations.jsonl.
3. ``train``: steps/s and img/s of ``flowvae.optim.train_step`` at batch 100, data resident on the
   device, timed after a warm-up with a synchronize at both ends: mnist-mlp diag / iaf and the
   peer's gated-conv architecture (../shared/peers/ours_bench.py) diag / iaf / sylvester-orthogonal,
   in float32 and bf16 autocast; ``compile`` (last): bf16 + ``torch.compile``, with its compile time.
4. ``iwae``: ``flowvae.estimators.iwae`` samples/s on test images (fresh mnist-mlp diag and iaf,
   K=5000) over chunk sizes, image batches and ``VAE.fused_rows_gpu`` (CPU: ``fused_rows``), with
   the projected minutes of 10,000 x 5000; and the eval-mode fused Bernoulli likelihood against
   the train-mode formula in float32 (both against float64), within the rounding bound of tests/test_iwae_fused.py.
5. ``cifar``: seconds per ``train_step`` and img/s of ``iaf-cifar10`` (batch 16) and
   ``iaf-cifar10-311`` (batch 256; 32, one of 8 processes' share, if 256 runs out of memory), on
   subset images, float32 vs bf16, with peak GPU memory.

The results go into BENCHMARKS.md under a GPU heading.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
from iwae_speed import PROTOCOL_IMAGES, PROTOCOL_SAMPLES, load_images

from flowvae.checkpoint import load_checkpoint
from flowvae.config import Config, apply_overrides
from flowvae.data import load_data
from flowvae.estimators import iwae
from flowvae.model import build_model
from flowvae.optim import native_bf16, optimizer_for, train_step
from flowvae.presets import preset
from flowvae.testing import rounding_bound
from flowvae.vae import VAE

SRC = Path(__file__).resolve().parent.parent / "src"
GATED = [  # the peer's architecture, as ../shared/peers/ours_bench.py sets it (ARCH)
    "model.type=flat", "model.encoder=gated-conv", "model.decoder=gated-conv", "model.channels=32",
    "model.latent_dim=64", "model.likelihood=bernoulli", "model.context_dim=256", "model.flow_steps=4",
    "model.flow_hidden=320", "model.flow_layers=2", "model.num_ortho_vecs=8", "model.num_householder=8",
    "train.optimizer=adamax", "train.lr=0.0005", "train.batch_size=100", "train.samples=1",
    "train.grad_clip=0.0",
]  # fmt: skip
MODELS = {"mlp-diag": ("mlp", "diag"), "mlp-iaf": ("mlp", "iaf"), "gated-diag": ("gated", "diag"),
          "gated-iaf": ("gated", "iaf"),
          "gated-sylvester-orthogonal": ("gated", "sylvester-orthogonal")}  # fmt: skip
COMPILE_ORDER = ["gated-iaf", "mlp-iaf", "gated-sylvester-orthogonal", "gated-diag", "mlp-diag"]
SIZES = {  # name: (GPU, --quick)
    "cli_steps": (400, 20), "eval_images": (1000, 20), "eval_K": (1000, 20), "budget": (340, 170),
    "train_batch": (100, 20), "warmup": (20, 1), "steps": (200, 3), "resident": (10_000, 1000),
    "item_cap": (75, 40), "iwae_images": (1000, 20), "K": (5000, 50),
    "chunks": ((500, 2000, 5000), (10, 25, 50)), "batches": ((100, 1000), (10, 20)),
    "fused_rows": ((32768, 2048, 131072), (2048, 64)), "cifar_batches": ((16, 256), (2, 2)),
    "cifar_steps": (3, 1), "cifar_warmup": (1, 0),
}  # fmt: skip
CAPS = {"env": 30, "cli": 100, "train": 60, "iwae": 60, "cifar": 75, "compile": 10_000}  # seconds per part
_deadlines: list[float] = []


class Timeout(Exception):
    pass


def _alarm(signum, frame):
    signal.setitimer(signal.ITIMER_REAL, 2.0)  # again until the capped block exits (a __del__ may eat it)
    raise Timeout("wall-time cap reached")


@contextlib.contextmanager
def cap(seconds: float):
    """Raise Timeout in this block after ``seconds`` (or at the enclosing block's deadline)."""
    _deadlines.append(min([time.monotonic() + seconds, *_deadlines[-1:]]))
    signal.setitimer(signal.ITIMER_REAL, max(_deadlines[-1] - time.monotonic(), 0.01))
    try:
        yield
    finally:
        _deadlines.pop()
        # an enclosing deadline already past fires after 1 s: time for the handler to record this block
        signal.setitimer(signal.ITIMER_REAL, max(_deadlines[-1] - time.monotonic(), 1) if _deadlines else 0)


def one_line(e: BaseException) -> str:
    text = " / ".join(line.strip() for line in str(e).strip().splitlines()[:3])  # wrapped errors: 2 lines
    return f"{type(e).__name__}: {text}"[:300]


class Check:
    def __init__(self, args: argparse.Namespace):
        self.args, self.quick, self.device = args, args.quick, torch.device(args.device)
        self.start, self.rows, self._mnist = time.monotonic(), [], None
        self.deadline = self.start + (args.budget or self.size("budget"))
        args.out.mkdir(parents=True, exist_ok=True)
        self.jsonl = args.out / "gpu_check.jsonl"
        self.jsonl.write_text("")

    def size(self, name: str):
        return SIZES[name][self.quick]

    def emit(self, part: str, item: str = "", **row) -> None:
        row = {"part": part, "item": item, **row, "t": round(time.monotonic() - self.start, 1)}
        self.rows.append(row)
        print(json.dumps(row), flush=True)
        with self.jsonl.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def part(self, name: str, fn) -> None:
        seconds = min(CAPS[name], self.deadline - time.monotonic())
        print(f"--- [{time.monotonic() - self.start:6.1f} s] part {name} (cap {seconds:.0f} s)", flush=True)
        try:
            if seconds <= 0:
                raise Timeout("no time left of --budget")
            with cap(seconds):
                fn()
        except Exception as e:
            self.emit(name, error=one_line(e))

    def item(self, part: str, item: str, fn, seconds: float = 1e9) -> None:
        """``fn()``'s dict as one row, or its error (a Timeout at the part's deadline ends the part)."""
        try:
            with cap(seconds):
                row = fn()
        except Exception as e:
            self.emit(part, item, error=one_line(e))
            if isinstance(e, Timeout) and time.monotonic() >= _deadlines[-1]:
                raise
            return
        self.emit(part, item, **row)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def peak_mb(self) -> float | None:
        return round(torch.cuda.max_memory_allocated() / 2**20) if self.device.type == "cuda" else None

    def reset_peak(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    # 1 -------------------------------------------------------------------------------------------
    def env(self) -> None:
        gpu = {}
        if torch.cuda.is_available():
            gpu = {"gpu": torch.cuda.get_device_name(), "cudnn": torch.backends.cudnn.version(),
                   "capability": ".".join(map(str, torch.cuda.get_device_capability()))}  # fmt: skip
        self.emit("env", "machine", torch=torch.__version__, cuda=torch.version.cuda, **gpu,
                  python=sys.version.split()[0], cpus=os.cpu_count(), cc=shutil.which("cc"),
                  native_bf16=native_bf16(self.device.type),
                  tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
                  tf32_cudnn=torch.backends.cudnn.allow_tf32,
                  # torch APIs flowvae calls that older releases lack
                  get_total_norm=hasattr(torch.nn.utils, "get_total_norm"),
                  safe_globals=hasattr(torch.serialization, "safe_globals"),
                  bf16_including_emulation="including_emulation"
                  in inspect.signature(torch.cuda.is_bf16_supported).parameters)  # fmt: skip

    # 2 -------------------------------------------------------------------------------------------
    def cli(self, item: str, *args: str) -> tuple[int, float, str]:
        """``python -m flowvae ARGS`` (or ``torchrun``'s) in a new session, killed with its children
        at the part's deadline; a non-zero exit is recorded with the last line of stderr."""
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
        if self.args.threads:
            env["OMP_NUM_THREADS"] = str(self.args.threads)
        start = time.monotonic()
        p = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env, start_new_session=True)  # fmt: skip
        try:
            out, err = p.communicate(timeout=max(_deadlines[-1] - time.monotonic() - 1, 1))
        except BaseException:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            raise
        wall = round(time.monotonic() - start, 1)
        if p.returncode:
            last = (err.strip().splitlines() or ["(no stderr)"])[-1]
            self.emit("cli", item, rc=p.returncode, wall_s=wall, error=last[:300])
        return p.returncode, wall, out

    def train_cli(self, run: Path, *launcher: str) -> None:
        rc, wall, out = self.cli(run.name, *launcher, "-m", "flowvae", "train", "--preset", "mnist-mlp",
                                 "--run-dir", str(run), "--no-progress", "model.posterior=iaf",
                                 f"data.root={self.args.data / 'binarized_mnist'}", "train.epochs=1000",
                                 f"train.device={self.device.type}",
                                 f"train.max_steps={self.size('cli_steps')}")  # fmt: skip
        if rc == 0:
            state = load_checkpoint(run / "checkpoint.pt")["state"]
            precision = json.loads((run / "invocations.jsonl").read_text().splitlines()[-1])["precision"]
            self.emit("cli", run.name, rc=rc, wall_s=wall, steps=state["step"], precision=precision,
                      img_per_s=round(state["step"] * 100 / state["seconds"], 1),  # the preset's batch 100
                      summary=out.strip()[-200:])  # fmt: skip

    def cli_part(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            run, png = Path(tmp) / "train", Path(tmp) / "samples.png"
            self.train_cli(run)
            rc, wall, out = self.cli("eval", "-m", "flowvae", "eval", str(run), "--checkpoint", "latest",
                                     "--limit", str(self.size("eval_images")),
                                     "--samples", str(self.size("eval_K")),
                                     "--device", self.device.type, "--json", "--no-progress")  # fmt: skip
            if rc == 0:
                r = json.loads(out)
                self.emit("cli", "eval", rc=rc, wall_s=wall, n=r["n"], K=r["samples"], nll=round(r["nll"], 3),
                          seconds=round(r["seconds"], 2))  # fmt: skip
            rc, wall, _ = self.cli("sample", "-m", "flowvae", "sample", str(run), "--checkpoint", "latest",
                                   "--n", "64", "--out", str(png), "--no-progress")  # fmt: skip
            if rc == 0:
                self.emit("cli", "sample", rc=rc, wall_s=wall, png_bytes=png.stat().st_size)
            # one process: WORLD_SIZE=1, so distributed.setup joins no group (nccl needs 2+ GPUs)
            self.train_cli(
                Path(tmp) / "torchrun", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"
            )

    # 3 -------------------------------------------------------------------------------------------
    def mnist(self) -> torch.Tensor:
        """The first training images, resident on the device (loaded once)."""
        if self._mnist is None:
            images = load_data(self.model_cfg("mlp-diag", "none").data).train[: self.size("resident")]
            self._mnist = images.to(self.device)
        return self._mnist

    def model_cfg(self, name: str, amp: str) -> Config:
        arch, posterior = MODELS[name]
        keys = [f"data.root={self.args.data / 'binarized_mnist'}", f"model.posterior={posterior}",
                f"train.amp={amp}", f"train.batch_size={self.size('train_batch')}"]  # fmt: skip
        if arch == "mlp":
            return apply_overrides(preset("mnist-mlp"), keys)
        return apply_overrides(Config(), ["data.name=binarized_mnist", *GATED, *keys])

    def time_steps(self, cfg: Config, model, x, steps: int, warmup: int, compiled: bool = False) -> dict:
        """Steps/s of train_step on batches sliced from the device-resident ``x``, synchronized at
        the ends only (train_step itself reads its statistics back once a step)."""
        net, optimizer, b = (
            torch.compile(model) if compiled else model,
            optimizer_for(cfg, model),
            cfg.train.batch_size,
        )
        n = x.shape[0] // b
        self.reset_peak()

        def step(i: int) -> dict:
            return train_step(net, optimizer, x[(i % n) * b : (i % n + 1) * b], cfg, 1.0, cfg.train.lr)

        self.sync()
        t0 = time.perf_counter()
        for i in range(warmup):
            step(i)
        self.sync()
        t1 = time.perf_counter()
        for i in range(steps):
            out = step(i)
        self.sync()
        s = time.perf_counter() - t1
        return {"batch": b, "steps": steps, "steps_per_s": round(steps / s, 2),
                "s_per_step": round(s / steps, 4), "img_per_s": round(steps * b / s, 1),
                "warmup_s": round(t1 - t0, 2), "loss": round(out["loss"], 2),
                "peak_mb": self.peak_mb()}  # fmt: skip

    def train_item(self, name: str, amp: str, compiled: bool = False) -> dict:
        cfg = self.model_cfg(name, amp)
        torch.manual_seed(0)
        model = build_model(cfg.model, (1, 28, 28), True).to(self.device)
        try:  # compiled: warmup_s includes the compilation
            row = self.time_steps(cfg, model, self.mnist(), self.size("steps"), self.size("warmup"), compiled)
            return {"amp": amp, "compile": compiled, **row}
        finally:
            if compiled:
                torch._dynamo.reset()

    def train_part(self) -> None:
        for name in MODELS:
            for amp in ("none", "bf16"):
                self.item("train", name, partial(self.train_item, name, amp), self.size("item_cap"))

    def compile_part(self) -> None:
        for name in COMPILE_ORDER:
            self.item("compile", name, partial(self.train_item, name, "bf16", True), self.size("item_cap"))

    # 4 -------------------------------------------------------------------------------------------
    @property
    def rows_attr(self) -> str:
        """The VAE attribute that sizes evaluation blocks on this device."""
        return "fused_rows" if torch.device(self.device).type == "cpu" else "fused_rows_gpu"

    @torch.no_grad()
    def iwae_item(self, model, x, chunk: int, batch: int, rows: int) -> dict:
        k = self.size("K")
        setattr(VAE, self.rows_attr, rows)
        self.reset_peak()
        iwae(model, x[:batch], samples=min(k, chunk), chunk=chunk)  # warm-up
        self.sync()
        start = time.perf_counter()
        nll = -torch.cat([iwae(model, xb, samples=k, chunk=chunk) for xb in x.split(batch)]).mean().item()
        rate = x.shape[0] * k / (time.perf_counter() - start)  # .item() synchronized
        return {"images": x.shape[0], "K": k, "chunk": chunk, "batch": batch, "fused_rows": rows,
                "samples_per_s": round(rate),
                "min_10k_x_5000": round(PROTOCOL_IMAGES * PROTOCOL_SAMPLES / rate / 60, 2),
                "nll": round(nll, 2), "peak_mb": self.peak_mb()}  # fmt: skip

    @torch.no_grad()
    def fused_check(self, model, x) -> dict:
        """Eval-mode (fused) and train-mode (reference) log p(x|z) in float32, each against float64,
        within flowvae.testing.rounding_bound (Higham & Mary 2019, lambda = 7), as the tests."""
        for p in model.decoder.parameters():
            p.mul_(3)  # logits of a realistic spread, as the test
        z = torch.randn(8, x.shape[0], model.latent_dim, device=self.device)
        fused, ref = model.eval().log_likelihood(x, z), model.train().log_likelihood(x, z)
        exact = model.double().log_likelihood(x.double(), z.double())
        out = model.decoder.out
        h = model.decoder.features(z.double().flatten(0, 1)).view(*z.shape[:2], -1)  # model is float64 now
        bound = rounding_bound(x.flatten(1), h, out.weight, out.bias)
        err_f, err_r = (fused.double() - exact).abs(), (ref.double() - exact).abs()
        return {"ok": bool((err_f <= bound).all() and (err_r <= bound).all()),
                "rows": z.shape[0] * z.shape[1],
                "max_fused_minus_ref": float((fused - ref).abs().max()), "max_err_fused": float(err_f.max()),
                "max_err_ref": float(err_r.max()), "min_bound": float(bound.min()),
                "mean_log_lik": float(exact.mean())}  # fmt: skip

    def iwae_part(self) -> None:
        x = load_images(self.args.data / "binarized_mnist", self.size("iwae_images")).to(self.device)
        chunks, batches, rows = self.size("chunks"), self.size("batches"), self.size("fused_rows")
        grid = [(c, b, rows[0]) for c in chunks for b in batches] + [
            (chunks[-1], batches[0], r) for r in rows[1:]
        ]
        default_rows = getattr(VAE, self.rows_attr)
        try:
            for posterior in ("diag", "iaf"):
                torch.manual_seed(0)
                cfg = apply_overrides(preset("mnist-mlp"), [f"model.posterior={posterior}"])
                model = build_model(cfg.model, (1, 28, 28), True).to(self.device).eval()
                for g in grid:
                    self.item("iwae", f"mlp-{posterior}", partial(self.iwae_item, model, x, *g))
        finally:
            setattr(VAE, self.rows_attr, default_rows)
        torch.manual_seed(0)
        model = build_model(preset("mnist-mlp").model, (1, 28, 28), True).to(self.device)
        self.item("iwae", "fused-vs-reference fp32", partial(self.fused_check, model, x[:64]))

    # 5 -------------------------------------------------------------------------------------------
    def cifar_item(self, name: str, batch: int) -> None:
        keys = ["data.name=npz", f"data.root={self.args.data / 'cifar10_subset'}",
                "data.file=cifar10_subset_4000.npz", "data.test_size=500",
                f"train.batch_size={batch}"]  # fmt: skip
        data = load_data(apply_overrides(preset(name), keys).data)
        x = data.train[: batch * 2].to(self.device)
        self.reset_peak()
        torch.manual_seed(0)
        model = build_model(preset(name).model, data.shape, data.binary).to(self.device)
        model.data_init(x[:batch])
        for amp in ("none", "bf16"):  # train_step only: the run's EMA update is not timed
            cfg = apply_overrides(preset(name), [*keys, f"train.amp={amp}"])
            row = self.time_steps(cfg, model, x, self.size("cifar_steps"), self.size("cifar_warmup"))
            self.emit("cifar", f"{name} b{batch}", amp=amp, **row)

    def cifar_part(self) -> None:
        small, large = self.size("cifar_batches")
        for name, batches in (("iaf-cifar10", [small]), ("iaf-cifar10-311", [large, 32])):
            for batch in batches:  # the next batch only after running out of GPU memory
                try:
                    self.cifar_item(name, batch)
                    break
                except Exception as e:
                    self.emit("cifar", f"{name} b{batch}", error=one_line(e))
                    if not isinstance(e, torch.cuda.OutOfMemoryError):
                        break

    def markdown(self) -> None:
        lines = ["| part | item | result |", "|---|---|---|"]
        for r in self.rows:
            rest = "; ".join(f"{k}={v}" for k, v in r.items() if k not in ("part", "item"))
            lines.append(f"| {r['part']} | {r['item']} | {rest.replace('|', '/')} |")
        (self.args.out / "gpu_check.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--data", type=Path, default=Path(".devdata"), help="holds binarized_mnist/, cifar10_subset/"
    )
    p.add_argument("--out", type=Path, required=True, help="folder for gpu_check.jsonl and gpu_check.md")
    p.add_argument("--device", default="cuda", help="cuda or cpu (default: cuda)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, to test every code path on a CPU")
    p.add_argument("--budget", type=float, default=0, help="seconds, all parts (default: 340; --quick 170)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--parts", default=",".join(CAPS), help=f"comma-separated, of {','.join(CAPS)}")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("gpu_check.py: CUDA is not available; use --device cpu --quick")
    signal.signal(signal.SIGALRM, _alarm)
    check = Check(args)
    parts = {"env": check.env, "cli": check.cli_part, "train": check.train_part, "iwae": check.iwae_part,
             "cifar": check.cifar_part, "compile": check.compile_part}  # fmt: skip
    for name in args.parts.split(","):
        if name not in parts:
            sys.exit(f"gpu_check.py: unknown part {name!r}; use {', '.join(parts)}")
        check.part(name, parts[name])
    check.markdown()
    print(f"--- [{time.monotonic() - check.start:6.1f} s] done: {check.jsonl}", flush=True)
    with (
        contextlib.suppress(Exception),
        cap(10),
    ):  # stop torch.compile's workers (an interrupted compile's too)
        if "torch._inductor.async_compile" in sys.modules:
            sys.modules["torch._inductor.async_compile"].shutdown_compile_workers()
    sys.stderr.flush()
    os._exit(0)  # no atexit wait on a stuck worker pool or CUDA teardown


if __name__ == "__main__":
    main()
