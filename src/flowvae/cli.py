"""The ``flowvae`` command line: it parses, builds and calls library code; nothing more."""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

from .checkpoint import CheckpointError, load_run
from .config import PRESETS, Config, ConfigError, apply_overrides, load_yaml, preset
from .data import DataError, download, evaluation_images, load_data
from .estimators import ESTIMATORS, evaluate


def _train(args: argparse.Namespace) -> int:
    from .train import prepare_run, summary_line, train

    if args.resume:
        if args.preset or args.config:
            raise ConfigError("--resume takes its config from the run; drop --preset/--config")
        run_dir = Path(args.resume)
        cfg = prepare_run(None, run_dir, True, args.overrides)
    else:
        name = args.preset or "digits"
        cfg = preset(name)
        if args.config:
            cfg = load_yaml(args.config, cfg)
        apply_overrides(cfg, args.overrides)
        run_dir = Path(args.run_dir or Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")
        prepare_run(cfg, run_dir, False, [])
    state = train(cfg, run_dir, resume=bool(args.resume), progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) == 0:
        print(summary_line(state, run_dir, *_dims(run_dir)))
    return 0


def _dims(run_dir: Path) -> tuple[bool, int]:
    from .checkpoint import load_checkpoint

    ckpt = load_checkpoint(run_dir / "checkpoint.pt")
    return ckpt["binary"], math.prod(ckpt["image_shape"])


def _eval(args: argparse.Namespace) -> int:
    from . import distributed

    d = distributed.setup(torch.device(args.device))
    device = distributed.local_device(torch.device(args.device), d)
    cfg, model, _ = load_run(args.run_dir, args.checkpoint, device)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_data(cfg.data)
    x, subset = evaluation_images(data, args.split, args.limit, args.seed)
    ais_options = {
        "chains": args.chains, "steps": args.steps, "leapfrog": args.leapfrog,
        "schedule": args.schedule, "init": args.init, "target_accept": args.target_accept,
        "step_size": args.step_size,
    }  # fmt: skip
    batch = args.batch_size or cfg.eval.batch_size
    if args.estimator == "bdmc":  # simulates its own data: no split, no per-example batches
        return _bdmc(args, model, ais_options, batch, d)
    # samples: K for iwae, chains for ais; a single draw for the ELBO unless asked
    samples = args.samples or DEFAULT_SAMPLES.get(args.estimator, cfg.eval.samples)
    accepted = inspect.signature(ESTIMATORS[args.estimator]).parameters
    options = {k: v for k, v in {**ais_options, "chunk": args.chunk or cfg.eval.chunk}.items()
               if v is not None and k in accepted}  # fmt: skip
    stats: dict = {}
    if "stats" in accepted:
        options["stats"] = stats
    result = evaluate(
        model, x.split(batch), estimator=args.estimator, split=args.split,
        dims=math.prod(data.shape), samples=samples, seed=args.seed, dist=d, **options,
    )  # fmt: skip
    distributed.cleanup(d)
    if not d.is_main:
        return 0
    options.pop("stats", None)
    settings = {k: options.get(k, accepted[k].default) for k in ais_options if k in accepted}
    if "chains" in settings:
        settings["chains"] = settings["chains"] or samples
    out = {**result.to_json(), **options, **settings, **{k: v for k, v in stats.items() if k == "acceptance"}}
    out.update({"checkpoint": args.checkpoint, "data": cfg.data.name, "subset": subset or None})
    if args.json:
        print(json.dumps(out))
    else:
        unit = "" if data.binary or result.bits_per_dim is None else f" = {result.bits_per_dim:.4f} bits/dim"
        print(
            f"{args.estimator} (K={result.samples}) on {args.split}, n={result.n}"
            f"{' [' + subset + ']' if subset else ''}: -log p(x) = {result.nll:.3f} ± "
            f"{result.stderr:.3f} nats{unit} ({result.seconds:.1f} s)"
        )
    return 0


DEFAULT_SAMPLES = {"elbo": 1, "exact": 1, "ais": 16}


def _bdmc(args: argparse.Namespace, model: torch.nn.Module, options: dict, batch: int, d) -> int:
    """BDMC (Grosse et al. 2015) on ``--limit`` (default 100) examples simulated from the model.

    Forward AIS from the prior gives a stochastic lower bound of log p(x), reverse AIS from the
    simulated (exact posterior) z an upper bound: their gap bounds the AIS error at these
    settings for data like the model's own, which tells how many steps real data needs.
    """
    from .ais import bdmc

    if d.enabled:
        raise ValueError("--estimator bdmc runs in one process; launch it without torchrun")
    options = {k: v for k, v in options.items() if v is not None and k != "init"}
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    result = bdmc(model, n=args.limit or 100, batch_size=batch, **options)
    out = {"estimator": "bdmc", **result.to_json(), **options, "seconds": time.perf_counter() - start}
    if args.json:
        print(json.dumps(out))
    else:
        print(
            f"BDMC on {out['n']} simulated examples: {result.lower_mean:.3f} <= log p(x) <= "
            f"{result.upper_mean:.3f} (gap {result.gap:.3f} nats; {out['seconds']:.1f} s)"
        )
    return 0


def _sample(args: argparse.Namespace) -> int:
    from .images import save_grid

    _, model, _ = load_run(args.run_dir, args.checkpoint)
    torch.manual_seed(args.seed)
    with torch.no_grad():
        images = model.decode_mean(model.sample_prior((args.n,), temperature=args.temperature))
    out = Path(args.out or Path(args.run_dir) / "samples.png")
    save_grid(images, out, nrow=int(math.ceil(math.sqrt(args.n))))
    print(f"wrote {args.n} samples to {out}")
    return 0


def _presets(args: argparse.Namespace) -> int:
    preset("digits")  # fills the registry
    width = max(len(n) for n in PRESETS)
    for name in sorted(PRESETS):
        print(f"{name:<{width}}  {PRESETS[name].description}")
    return 0


def _download(args: argparse.Namespace) -> int:
    root = args.root or os.environ.get("FLOWVAE_DATA") or "data"
    paths = download(args.name, root)
    print(f"{args.name}: {len(paths)} files in {root}")
    return 0


def _gaps(args: argparse.Namespace) -> int:
    from .gaps import GapSettings, markdown_table, run_gaps, write_report
    from .local import LocalOptions

    if args.threads:
        torch.set_num_threads(args.threads)
    local = LocalOptions(
        lr=args.lr, samples=args.local_samples, max_steps=args.steps_cap, check_every=args.check_every,
        patience=args.patience, tolerance=args.tolerance, lr_decay=args.lr_decay, decays=args.decays,
    )  # fmt: skip
    flow_options = {k: getattr(args, k) for k in ("flow_steps", "flow_hidden", "flow_layers")}
    settings = GapSettings(
        estimator=args.estimator, samples=args.samples, chains=args.chains, ais_steps=args.ais_steps,
        leapfrog=args.leapfrog, check=not args.no_check, elbo_samples=args.elbo_samples,
        local_flow=args.local_flow, local=local,
        flow_options={k: v for k, v in flow_options.items() if v is not None},
        batch_size=args.batch_size, seed=args.seed, drop_flagged=args.drop_flagged,
    )  # fmt: skip
    report = run_gaps(args.run_dir, args.split, args.n, settings, args.seed, args.checkpoint, args.device)
    paths = write_report(report, args.out or Path(args.run_dir) / "gaps")
    if args.json:
        print(json.dumps({**report.to_json(), "files": {k: str(v) for k, v in paths.items()}}))
    else:
        print(markdown_table([report]))
        print(f"\nwrote {', '.join(p.name for p in paths.values())} to {paths['csv'].parent}")
    if not report.ok:
        first = report.flagged[0]
        print(
            f"flowvae: error: {len(report.flagged)} example(s) flagged (e.g. index {first['index']}, "
            f"{first['column']}: {first['reason']}); see {paths['json']}; --drop-flagged leaves them out",
            file=sys.stderr,
        )
        return 1
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flowvae", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a VAE (default preset: digits, zero download)")
    t.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. model.posterior=iaf")
    t.add_argument("--preset", help="start from a named preset (see `flowvae presets`)")
    t.add_argument("--config", help="a YAML config file applied over the preset")
    t.add_argument("--run-dir", help="where to write the run (default runs/NAME-TIME)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a run exactly where it stopped")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(fn=_train)

    e = sub.add_parser("eval", help="estimate log p(x) of a trained run")
    e.add_argument("run_dir")
    e.add_argument("--estimator", default="iwae", choices=sorted([*ESTIMATORS, "bdmc"]))
    e.add_argument("--samples", type=int, help="K importance samples (default eval.samples)")
    e.add_argument("--split", default="test", choices=["test", "valid", "train"])
    e.add_argument("--limit", type=int, default=0, help="a fixed seeded random subset of N examples")
    e.add_argument("--batch-size", type=int, default=0)
    e.add_argument("--chunk", type=int, default=0, help="samples per chunk (bounds memory)")
    e.add_argument("--checkpoint", default="best", choices=["best", "latest"])
    e.add_argument("--seed", type=int, default=1234)
    e.add_argument("--device", default="cpu")
    e.add_argument("--threads", type=int, default=0)
    e.add_argument("--json", action="store_true", help="print exactly one JSON object")
    ais = e.add_argument_group("AIS (--estimator ais|bdmc)")
    ais.add_argument("--chains", type=int, help="chains per example (ais default 16)")
    ais.add_argument("--steps", type=int, help="intermediate distributions")
    ais.add_argument("--leapfrog", type=int)
    ais.add_argument("--schedule", choices=["linear", "sigmoid"])
    ais.add_argument("--init", choices=["prior", "posterior"])
    ais.add_argument("--target-accept", type=float, help="HMC acceptance target (0.65)")
    ais.add_argument("--step-size", type=float, help="initial HMC step size (0.1)")
    e.set_defaults(fn=_eval)

    s = sub.add_parser("sample", help="draw images from a trained run's prior")
    s.add_argument("run_dir")
    s.add_argument("--n", type=int, default=64)
    s.add_argument("--out", help="PNG path (default RUN_DIR/samples.png)")
    s.add_argument("--checkpoint", default="best", choices=["best", "latest"])
    s.add_argument("--seed", type=int, default=0)
    s.add_argument(
        "--temperature", type=float, default=1.0, help="scale of the prior's std (1: the model itself)"
    )
    s.set_defaults(fn=_sample)

    g = sub.add_parser("gaps", help="inference suboptimality: approximation and amortization gaps")
    g.add_argument("run_dir")
    g.add_argument("--split", default="test", choices=["test", "valid", "train"])
    g.add_argument("--n", type=int, default=100, help="a fixed seeded random subset of N examples")
    g.add_argument("--local-flow", default="same",
                   help="family of q*_flow: same (q's family/size), a posterior name, or none")  # fmt: skip
    g.add_argument("--estimator", default="ais", choices=["ais", "iwae"], help="the log p(x) estimate")
    g.add_argument("--no-check", action="store_true", help="skip the other estimator's paired check")
    g.add_argument("--leapfrog", type=int, default=10, help="HMC leapfrog steps per AIS transition")
    g.add_argument("--samples", type=int, default=5000, help="K of the IWAE estimate")
    g.add_argument("--ais-steps", type=int, default=1000, help="AIS intermediate distributions")
    g.add_argument("--chains", type=int, default=16, help="AIS chains per example")
    g.add_argument("--elbo-samples", type=int, default=1000, help="draws of every ELBO estimate")
    g.add_argument("--steps-cap", type=int, default=10000, help="local optimisation step cap")
    g.add_argument("--lr", type=float, default=1e-2,
                   help="local optimisation Adam learning rate, in widths of the initial q")  # fmt: skip
    g.add_argument("--local-samples", type=int, default=50, help="z draws per local step")
    g.add_argument("--flow-steps", type=int, help="steps of the local flow (default 2)")
    g.add_argument("--flow-hidden", type=int, help="hidden units of the local flow's nets")
    g.add_argument("--flow-layers", type=int, help="hidden layers of the local flow's nets")
    g.add_argument("--check-every", type=int, default=100, help="steps between convergence checks")
    g.add_argument("--patience", type=int, default=5, help="checks without improvement before a decay")
    g.add_argument("--tolerance", type=float, default=0.01, help="nats that count as an improvement")
    g.add_argument("--lr-decay", type=float, default=0.5, help="step-size factor after a stall")
    g.add_argument("--decays", type=int, default=4, help="step-size reductions before convergence")
    g.add_argument("--drop-flagged", action="store_true",
                   help="leave out non-finite or far-outlying examples instead of failing")  # fmt: skip
    g.add_argument("--batch-size", type=int, default=100)
    g.add_argument("--checkpoint", default="best", choices=["best", "latest"])
    g.add_argument("--seed", type=int, default=1234, help="seed of the subset and of the estimates")
    g.add_argument("--device", default="cpu")
    g.add_argument("--threads", type=int, default=0)
    g.add_argument("--json", action="store_true", help="print exactly one JSON object")
    g.add_argument("--out", help="output folder (default RUN_DIR/gaps)")
    g.set_defaults(fn=_gaps)

    sub.add_parser("presets", help="list the named presets").set_defaults(fn=_presets)

    d = sub.add_parser("data", help="dataset utilities")
    dsub = d.add_subparsers(dest="data_command", required=True)
    dl = dsub.add_parser("download", help="fetch a dataset's standard files and verify checksums")
    dl.add_argument("name", choices=["binarized_mnist", "mnist", "fashion_mnist", "cifar10"])
    dl.add_argument("--root", help="target folder (default $FLOWVAE_DATA or ./data)")
    dl.set_defaults(fn=_download)
    return p


def main(argv: list[str] | None = None) -> int:
    from .train import TrainingError

    args = parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ConfigError, DataError, CheckpointError, TrainingError, ValueError) as e:
        if os.environ.get("FLOWVAE_DEBUG"):
            raise
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"flowvae: error: {msg}", file=sys.stderr)
        return 2 if isinstance(e, ConfigError) else 1
    except KeyboardInterrupt:
        print("flowvae: interrupted", file=sys.stderr)
        return 130


__all__ = ["Config", "main", "parser"]
