"""The ``flowvae`` command line: it parses, builds and calls library code; nothing more."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
import typing
from pathlib import Path

import torch
import yaml

from .checkpoint import CheckpointError, load_run
from .cli_latents import PARSERS as LATENT_PARSERS
from .cli_sweeps import PARSERS as SWEEP_PARSERS
from .cliargs import (
    POSITIVE,
    Parser,
    chosen,
    common_flags,
    existing_file,
    image_out,
    new_dir,
    number,
    option_flags,
    run_dir,
    save_new,
)
from .config import FORMS, Config, ConfigError, apply_overrides, load_yaml, valid_keys
from .data import DataError, download
from .estimators import ESTIMATORS
from .likelihoods import likelihood_name
from .presets import PRESETS, preset, starting_preset
from .progress import progress_bar


def _train(args: argparse.Namespace) -> int:
    from .group_training import fit
    from .groups import is_group
    from .groups import summary_line as group_summary
    from .rundir import new_run_dir, prepare_run, schedule_warning, summary_line

    group = bool(args.seeds) or bool(args.resume and is_group(args.resume))
    if args.resume:
        if args.preset or args.config or args.run_dir or args.overwrite or args.seeds:
            raise ConfigError("--resume takes its config and folder from the run; drop --preset/--config/"
                              "--run-dir/--overwrite/--seeds")  # fmt: skip
        run_dir = Path(args.resume)
        cfg = None if group else prepare_run(None, run_dir, True, args.overrides)
    else:
        name, note = (args.preset, "") if args.preset else starting_preset(args.overrides, args.config)
        cfg = preset(name)
        if args.config:
            cfg = load_yaml(args.config, cfg)
        apply_overrides(cfg, args.overrides)
        if note:
            print(note)
        run_dir = Path(args.run_dir) if args.run_dir else None
        if run_dir is not None and not group:
            prepare_run(cfg, run_dir, False, [], overwrite=args.overwrite)
    created: list[Path] = []  # claimed atomically now, removed again if the run never starts
    if run_dir is None:
        created += [] if Path("runs").exists() else [Path("runs")]
        run_dir = new_run_dir(Path("runs"), default_run_name(name, cfg, args.seeds))
        created.insert(0, run_dir)
    try:
        state = fit(
            cfg, run_dir, resume=bool(args.resume), progress=not args.no_progress,
            overwrite=args.overwrite, overrides=args.overrides, seeds=args.seeds,
            origin=None if args.resume else _origin(name, args.config),
        )  # fmt: skip
    finally:
        for folder in created:
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
    if int(os.environ.get("RANK", "0")) == 0:
        for name, member in state.items() if isinstance(state, dict) else [("", state)]:
            folder, prefix = run_dir / name if name else run_dir, f"{name}: " if name else ""
            binary, dims, member_cfg = _ended(folder)
            print(f"{prefix}{summary_line(member, folder, binary, dims)}")
            warning = schedule_warning(member, member_cfg.train)
            if warning:
                print(f"flowvae: warning: {prefix}{warning}", file=sys.stderr)
        if isinstance(state, dict):
            print(group_summary(state, run_dir))
    return 0


def default_run_name(preset_name: str, cfg: Config, seeds: int | None = None) -> str:
    """``PRESET-DATA-POSTERIOR`` without repeats: ``digits-iaf``, ``mnist-mlp-binarized_mnist-diag``;
    a group of seeds says so: ``digits-iaf-3seeds``."""
    model = cfg.model.posterior if cfg.model.type == "flat" else cfg.model.type
    parts = [preset_name] + [p for p in (cfg.data.name, model) if p not in preset_name.split("-")]
    return "-".join(parts + ([f"{seeds}seeds"] if seeds else []))


def _origin(preset_name: str, config_file: str | None) -> dict[str, str]:
    """Where a new run's config came from: the preset, the ``--config`` file and its SHA-256."""
    import hashlib

    origin = {"preset": preset_name}
    if config_file:
        digest = hashlib.sha256(Path(config_file).read_bytes()).hexdigest()
        origin.update(config_file=str(config_file), config_sha256=digest)
    return origin


def _ended(run_dir: Path) -> tuple[bool, int, Config]:
    """What the line after training needs of a run's last checkpoint: binary, pixels, config."""
    from .checkpoint import load_checkpoint
    from .config import from_dict

    ckpt = load_checkpoint(run_dir / "checkpoint.pt")
    return ckpt["binary"], math.prod(ckpt["image_shape"]), from_dict(ckpt["config"])


def _eval(args: argparse.Namespace) -> int:
    from . import distributed
    from .evaluation import evaluate_run
    from .groups import GroupEvaluation, evaluate_group, is_group, left_out_warning, seed_mean_sd

    d = distributed.setup(torch.device(args.device))
    device = distributed.local_device(torch.device(args.device), d)
    if args.threads:
        torch.set_num_threads(args.threads)
    record = ESTIMATORS[args.estimator]
    options = {name: getattr(args, name, None) for name in record.settings()}

    def bar(total: int):
        desc = f"eval {args.estimator}" + (f" (K={args.samples})" if args.samples else "")
        return progress_bar(total, desc, enabled=d.is_main and not args.no_progress, unit="examples")

    score = evaluate_group if is_group(args.run_dir) else evaluate_run
    scored = score(
        args.run_dir, args.estimator, args.samples, split=args.split, limit=args.limit or 0, seed=args.seed,
        batch_size=args.batch_size, checkpoint=args.checkpoint, device=device, dist=d,
        cache=not args.no_cache, progress=bar, **options,
    )  # fmt: skip
    distributed.barrier(d)  # every rank done with the group before it is torn down
    distributed.cleanup(d)
    if not d.is_main:
        return 0
    if not isinstance(scored, GroupEvaluation):
        out, lines = _eval_report(args, scored)
        print(json.dumps(out) if args.json else "\n".join(lines))
        return 0
    if scored.left_out:
        print(f"flowvae: warning: {left_out_warning(args.run_dir, scored.left_out)}", file=sys.stderr)
    reports = {name: _eval_report(args, member, f"{name}: ") for name, member in scored.members.items()}
    values = [member.estimate.nll for member in scored.members.values()]
    mean, sd = seed_mean_sd(values)
    if args.json:
        members = {name: out for name, (out, _) in reports.items()}
        print(json.dumps({"group": str(args.run_dir), "members": members, "seeds": values, "nll_mean": mean,
                          "nll_sd": sd, "left_out": scored.left_out}))  # fmt: skip
        return 0
    print("\n".join(line for _, lines in reports.values() for line in lines))
    spread = f"± {sd:.3f} (sd over {len(values)} training seeds)" if sd is not None else "(1 seed: no sd)"
    left = f"; {len(scored.left_out)} unfinished left out" if scored.left_out else ""
    print(f"across seeds: -log p(x) = {mean:.3f} {spread} nats{left}")
    return 0


def _eval_report(args: argparse.Namespace, scored, prefix: str = "") -> tuple[dict, list[str]]:
    """One run's evaluation: its JSON object and its sentence (and diagnostics) as lines, naming
    the checkpoint's epoch and step; warnings (an unfinished run too) go to stderr, named by ``prefix``."""
    result, subset, trained = scored.estimate, scored.examples.description, scored.trained
    if not math.isfinite(result.nll):
        raise ValueError(
            f"{prefix}{args.estimator} on {args.split}: -log p(x) is {result.nll} (not finite): the model in "
            f"{args.run_dir} gives non-finite likelihoods"
        )
    unfinished = [f"scored {trained.describe()}"] if trained.unfinished else []
    for warning in [*unfinished, *result.warnings]:
        print(f"flowvae: warning: {prefix}{warning}", file=sys.stderr)
    out = {**result.to_json(), "checkpoint": args.checkpoint, "trained": trained.to_json(),
           "data": scored.run.config.data.name, "subset": subset, "cached": scored.cached}  # fmt: skip
    binary = scored.run.checkpoint["binary"]  # binary images are reported in nats only
    out["likelihood"] = likelihood_name(scored.run.config.model.likelihood, binary)  # numbers differ by it
    unit = "" if result.bits_per_dim is None or binary else f" = {result.bits_per_dim:.4f} bits/dim"
    lines = [
        f"{prefix}{args.estimator} (K={result.samples}) on {subset}: -log p(x) = {result.nll:.3f} ± "
        f"{result.stderr:.3f} nats{unit} ({out['likelihood']} likelihood; {result.seconds:.1f} s"
        f"{', cached' if scored.cached else ''})",
        f"  weights: {trained.describe()}",
    ]
    for name, v in result.diagnostics.items():
        values = f"median {v['median']:.3g}, min {v['min']:.3g}, max {v['max']:.3g}"
        if "note" in v:  # why some (or all) values are missing
            values = v["note"] if math.isnan(v["median"]) else f"{values} ({v['note']})"
        lines.append(f"  {name} over examples: {values}")
    return out, lines


def _compare(args: argparse.Namespace) -> int:
    from . import compare, groups

    if args.threads:
        torch.set_num_threads(args.threads)
    grouped = any(groups.is_group(d) for d in [*args.run_dirs, args.baseline] if d)
    how = groups if grouped else compare  # a group is one method: mean and sd over its seeds
    comparison = (groups.compare_groups if grouped else compare.compare_runs)(
        args.run_dirs, args.baseline, args.estimator, args.samples, split=args.split, limit=args.limit or 0,
        seed=args.seed, checkpoint=args.checkpoint, cache=not args.no_cache,
        progress=None if args.no_progress else lambda total, desc: progress_bar(total, desc, unit="examples"),
    )  # fmt: skip
    for warning in comparison.warnings:
        print(f"flowvae: warning: {warning}", file=sys.stderr)
    paths = {}
    if args.out:
        dirs = [Path(r) for r in args.run_dirs]
        paths = groups.write_comparison(comparison, args.out, args.compact) if grouped else (
            compare.write_comparison(comparison, dirs, args.out, args.compact))  # fmt: skip
    if args.json:
        print(json.dumps({**comparison.to_json(), "files": {k: str(v) for k, v in paths.items()}}))
    else:
        print(how.markdown_table(comparison))
        if paths:
            print(f"\nwrote {', '.join(p.name for p in paths.values())} to {args.out}")
    return 0


def _bdmc(args: argparse.Namespace) -> int:
    """BDMC (Grosse et al. 2015) on ``--n`` examples simulated from the model.

    Forward AIS from the prior gives a stochastic lower bound of log p(x), reverse AIS from the
    simulated (exact posterior) z an upper bound: their gap bounds the AIS error at these
    settings for data like the model's own, which tells how many steps real data needs.
    """
    from .ais import AISOptions, bdmc
    from .groups import is_group

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("bdmc runs in one process; launch it without torchrun")
    if is_group(args.run_dir):
        raise ValueError(
            f"{args.run_dir} is a group of seeds: run bdmc on one member (e.g. {args.run_dir}/seed-0)"
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    run = load_run(args.run_dir, args.checkpoint, args.device)
    options = chosen(args, AISOptions)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    batch = args.batch_size or run.config.eval.batch_size
    result = bdmc(run.model, n=args.n, chains=args.chains, batch_size=batch, **options)
    out = {"estimator": "bdmc", **result.to_json(), "chains": args.chains, **options,
           "seconds": time.perf_counter() - start}  # fmt: skip
    if result.warning:
        print(f"flowvae: warning: {result.warning}", file=sys.stderr)
    if args.json:
        print(json.dumps(out))
    elif result.crossed:  # no bracket: the lower bound is above the upper one
        print(
            f"BDMC on {out['n']} simulated examples: bounds crossed, not converged: lower (forward AIS) "
            f"{result.lower_mean:.3f} > upper (reverse AIS) {result.upper_mean:.3f} (gap {result.gap:.3f} ± "
            f"{result.gap_stderr:.3f} nats; {out['seconds']:.1f} s)"
        )
    else:
        print(
            f"BDMC on {out['n']} simulated examples: {result.lower_mean:.3f} <= log p(x) <= "
            f"{result.upper_mean:.3f} (gap {result.gap:.3f} ± {result.gap_stderr:.3f} nats; "
            f"{out['seconds']:.1f} s)"
        )
    return 0


def _sample(args: argparse.Namespace) -> int:
    from .images import save_array
    from .latents import sample_grid

    run = load_run(args.run_dir, args.checkpoint)
    torch.manual_seed(args.seed)  # an autoregressive decoder draws its pixels from torch's generator
    shape = tuple(run.checkpoint["image_shape"])
    with progress_bar(args.n, "sample", enabled=not args.no_progress, unit="images") as bar:
        try:
            grid = sample_grid(run.model, args.n, shape, temperature=args.temperature, seed=args.seed,
                               progress=bar.update)  # fmt: skip
        except ValueError as e:  # too many for one image: a bad --n
            raise ConfigError(f"--n {args.n}: {e}; use a smaller --n") from None
    if args.out:
        out = Path(args.out)
        save_array(grid, out)
    else:
        out = save_new(grid, Path(args.run_dir), "samples", ".png")
    print(f"wrote {args.n} samples to {out}")
    return 0


def _presets(args: argparse.Namespace) -> int:
    width = max(len(n) for n in PRESETS)
    for name in sorted(PRESETS):
        print(f"{name:<{width}}  {PRESETS[name].description}")
    return 0


def _config(args: argparse.Namespace) -> int:
    """One line per key as an override would set it (``key=value``); a string choice lists its values."""
    cfg = preset(args.preset) if args.preset else Config()
    width = max(len(k) for k in valid_keys(cfg))
    for key in valid_keys(cfg):
        section, name = key.split(".")
        obj = getattr(cfg, section)
        typ = typing.get_type_hints(type(obj))[name]
        literal = typing.get_origin(typ) is typing.Literal
        choices = [c if c else '""' for c in typing.get_args(typ)] if literal else list(FORMS.get(key, ()))
        value = yaml.safe_dump(getattr(obj, name), default_flow_style=True).removesuffix("\n...\n").strip()
        line = f"{key}={value}"
        print(f"{line:<{width + 12}}  ({' | '.join(choices)})" if choices else line)
    return 0


def _download(args: argparse.Namespace) -> int:
    root = args.root or os.environ.get("FLOWVAE_DATA") or "data"
    paths = download(args.name, root)
    print(f"{args.name}: {len(paths)} files in {root}")
    return 0


def _gaps(args: argparse.Namespace) -> int:
    from .gaps import (
        LOG_P_ESTIMATORS,
        GapSettings,
        earlier_report,
        markdown_table,
        report_folder,
        run_gaps,
        write_report,
    )
    from .local import LOCAL_FLOW_DEFAULTS, LocalOptions

    if args.threads:
        torch.set_num_threads(args.threads)
    records = {name: ESTIMATORS[name] for name in LOG_P_ESTIMATORS}
    samples = {name: getattr(args, f"{name}_samples") for name in records}
    options = {name: chosen(args, r.options, f"{name}_") for name, r in records.items() if r.options}
    flow_options = {k: getattr(args, k) for k in LOCAL_FLOW_DEFAULTS if getattr(args, k) is not None}
    settings = GapSettings(
        estimator=args.estimator, samples={k: v for k, v in samples.items() if v is not None},
        options={k: v for k, v in options.items() if v}, check=not args.no_check,
        elbo_samples=args.elbo_samples, local_flow=args.local_flow,
        local=LocalOptions(**chosen(args, LocalOptions, "local_")), flow_options=flow_options,
        batch_size=args.batch_size, seed=args.seed, drop_flagged=args.drop_flagged,
    )  # fmt: skip
    held = earlier_report(args.out) if args.out else []
    if held:  # before the work: a new report never replaces an earlier one
        held_text = f"{args.out}: holds an earlier gap report ({', '.join(held)})"
        raise ConfigError(f"{held_text}; choose another --out or move it away")
    report = run_gaps(args.run_dir, args.split, args.n, settings, args.seed, args.checkpoint, args.device)
    paths = write_report(report, args.out or report_folder(args.run_dir))
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


TRAIN_EPILOG = """\
config keys: `flowvae config` lists every key with its default value and valid values
(`flowvae config --preset NAME`: with a preset's values); `flowvae presets` lists the presets.
Without --preset a run starts from the preset of its data.name (digits for the default data)."""


RUN_DIR_HELP = "the run folder (written by `flowvae train`)"


def _train_parser(sub) -> None:
    t = sub.add_parser(
        "train", help="train a VAE (default preset: digits, zero download)", epilog=TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    t.add_argument(
        "overrides", nargs="*", metavar="key=value",
        help="config overrides, e.g. model.posterior=iaf train.epochs=10 (see `flowvae config`)",
    )  # fmt: skip
    t.add_argument(
        "--preset", help="start from a named preset (see `flowvae presets`; default: the preset of "
        "data.name, digits if none is given)",
    )  # fmt: skip
    t.add_argument(
        "--config", type=existing_file, help="a YAML config file applied over the preset (default: none)"
    )
    t.add_argument(
        "--run-dir",
        type=new_dir,
        help="where to write the run (default: a new runs/PRESET-DATA-POSTERIOR-TIME)",
    )
    t.add_argument(
        "--resume", metavar="RUN_DIR", type=run_dir,
        help="continue the run in RUN_DIR exactly where it stopped (a group of --seeds: every unfinished "
        "member; default: start a new run); after Ctrl-C it keeps what was left of the budgets "
        "(train.max_minutes, train.max_steps), after a budget stop it has none; a budget given replaces them",
    )  # fmt: skip
    t.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run files already in --run-dir (default: refuse)",
    )
    t.add_argument(
        "--seeds", type=POSITIVE,
        help="train N runs with train.seed+0..N-1 into RUN_DIR/seed-0..seed-(N-1), side by side on the "
        "cores (one per core at a time, the rest queued); `eval`/`compare` RUN_DIR report mean and sd over "
        "seeds of the finished members (default: one run)",
    )  # fmt: skip
    t.add_argument(
        "--no-progress", action="store_true",
        help="no progress bar on a terminal; the line per evaluation stays (default: shown)",
    )  # fmt: skip
    t.set_defaults(fn=_train)


def _eval_parser(sub) -> None:
    e = sub.add_parser("eval", help="estimate log p(x) of a trained run (or of every member of a group)")
    e.add_argument("run_dir", type=run_dir, help=RUN_DIR_HELP)
    e.add_argument(
        "--estimator", default="iwae", choices=sorted(ESTIMATORS),
        help="; ".join(f"{name}: {r.samples_are}" for name, r in ESTIMATORS.items()) + " (default: iwae)",
    )  # fmt: skip
    e.add_argument(
        "--samples", type=POSITIVE, metavar="K",
        help="; ".join(
            f"{n}: {r.samples_are} (default: "
            + ("the run's eval.samples" if r.run_samples else str(r.default_samples)) + ")"
            for n, r in ESTIMATORS.items()
        ),
    )  # fmt: skip
    e.add_argument(
        "--limit",
        type=POSITIVE,
        metavar="N",
        help="a fixed seeded random subset of N examples (default: all)",
    )
    e.add_argument(
        "--batch-size", type=POSITIVE,
        help="examples per batch: speed and memory only, not the values (default: the run's eval.batch_size)",
    )  # fmt: skip
    common_flags(e, "split", "checkpoint", "seed", "device", "threads", "json", "no-progress", "no-cache",
                 what="the subset and of every example's draws")  # fmt: skip
    for name, record in ESTIMATORS.items():
        if record.options is not None:
            group = e.add_argument_group(f"{name} (--estimator {name})")
            if record.samples_flag:
                group.add_argument(
                    record.samples_flag,
                    type=POSITIVE,
                    dest="samples",
                    metavar="N",
                    help=f"{record.samples_are}, the same as --samples (default: {record.default_samples})",
                )
            run_key = "the run's eval.{name}" if record.run_samples else ""
            option_flags(group, record.options, default_text=run_key)
    e.set_defaults(fn=_eval)


def _bdmc_parser(sub) -> None:
    from .ais import CHAINS, AISOptions

    b = sub.add_parser(
        "bdmc", help="sandwich log p(x) on data simulated from a run's model (forward and reverse AIS)"
    )
    b.add_argument("run_dir", type=run_dir, help=RUN_DIR_HELP)
    b.add_argument("--n", type=POSITIVE, default=100, help="examples simulated from the model (default: 100)")
    b.add_argument(
        "--chains", type=POSITIVE, default=CHAINS, help=f"AIS chains per example (default: {CHAINS})"
    )
    b.add_argument(
        "--batch-size", type=POSITIVE, help="examples per batch (default: the run's eval.batch_size)"
    )
    common_flags(b, "checkpoint", "seed", "device", "threads", "json", what="the simulation and the chains")
    option_flags(b.add_argument_group("AIS"), AISOptions, skip=("init",))
    b.set_defaults(fn=_bdmc)


def _sample_parser(sub) -> None:
    s = sub.add_parser("sample", help="draw images from a trained run's prior")
    s.add_argument("run_dir", type=run_dir, help=RUN_DIR_HELP)
    s.add_argument("--n", type=POSITIVE, default=64, help="number of images (default: 64)")
    s.add_argument(
        "--out", type=image_out, help="PNG path in an existing folder (default: a new RUN_DIR/samples-N.png)"
    )
    s.add_argument(
        "--temperature", type=number(0.0, open_low=False), default=1.0,
        help="scale of the prior's std; 1 samples the model itself (default: 1)",
    )  # fmt: skip
    common_flags(s, "checkpoint", "seed", "no-progress", seed=0, what="the prior draws")
    s.set_defaults(fn=_sample)


# gaps' names for estimator flags (the registry's loop makes --NAME-samples and --NAME-OPTION)
GAPS_SAMPLES_ALIASES = {"iwae": ("--samples",)}
GAPS_OPTION_NAMES = {"ais": {"leapfrog": "--leapfrog"}}


def _gaps_parser(sub) -> None:
    from .gaps import LOG_P_ESTIMATORS
    from .local import LOCAL_FLOW_DEFAULTS, LocalOptions

    g = sub.add_parser("gaps", help="inference suboptimality: approximation and amortization gaps")
    g.add_argument("run_dir", type=run_dir, help=RUN_DIR_HELP)
    g.add_argument(
        "--n", type=POSITIVE, default=100, help="a fixed seeded random subset of N examples (default: 100)"
    )
    g.add_argument(
        "--local-flow", default="same",
        help="family of q*_flow: same (q's own family and size), a flat posterior name, or none "
        "(default: same)",
    )  # fmt: skip
    g.add_argument(
        "--estimator",
        default="ais",
        choices=list(LOG_P_ESTIMATORS),
        help="the log p(x) estimate (default: ais)",
    )
    g.add_argument(
        "--no-check", action="store_true", help="skip the other estimator's paired check (default: run it)"
    )
    g.add_argument(
        "--elbo-samples", type=POSITIVE, default=LocalOptions.eval_samples,
        help=f"draws of every ELBO estimate (default: {LocalOptions.eval_samples})",
    )  # fmt: skip
    for name in LOG_P_ESTIMATORS:  # each estimate's samples and options, from the registry
        record = ESTIMATORS[name]
        group = g.add_argument_group(f"{name} (--estimator {name}, or its check)")
        own = [record.samples_flag] if record.samples_flag else []
        flags = [f"--{name}-samples", *GAPS_SAMPLES_ALIASES.get(name, ()), *own]
        default = "the run's eval.samples" if record.run_samples else record.default_samples
        group.add_argument(*flags, type=POSITIVE, dest=f"{name}_samples", metavar="N",
                           help=f"{record.samples_are} (default: {default})")  # fmt: skip
        if record.options is not None:
            option_flags(group, record.options, prefix=f"{name}-", names=GAPS_OPTION_NAMES.get(name),
                         default_text="the run's eval.{name}" if record.run_samples else "")  # fmt: skip
    local = g.add_argument_group("local optimisation")
    names = {f.name: "--" + f.name.replace("_", "-") for f in dataclasses.fields(LocalOptions)}
    option_flags(local, LocalOptions, prefix="local-", defaults=True, skip=("eval_samples", "eval_chunk"),
                 names=names | {"samples": "--local-samples", "max_steps": "--steps-cap"})  # fmt: skip
    for key, default in LOCAL_FLOW_DEFAULTS.items():
        flag = "--" + key.replace("_", "-")
        local.add_argument(
            flag, type=POSITIVE, help=f"{key} of the local flow (default: q's, else {default})"
        )
    g.add_argument(
        "--drop-flagged", action="store_true",
        help="leave out non-finite or far-outlying examples instead of failing (default: fail)",
    )  # fmt: skip
    g.add_argument("--batch-size", type=POSITIVE, default=100, help="examples per batch (default: 100)")
    g.add_argument(
        "--out", type=new_dir,
        help="output folder, without an earlier report (default: RUN_DIR/gaps, else gaps-2, gaps-3, ...)",
    )  # fmt: skip
    common_flags(
        g, "split", "checkpoint", "seed", "device", "threads", "json", what="the subset and of the estimates"
    )
    g.set_defaults(fn=_gaps)


def _compare_parser(sub) -> None:
    c = sub.add_parser(
        "compare", help="evaluate runs (or seed groups) on the same examples: a paired table and curves"
    )
    c.add_argument(
        "run_dirs", nargs="+", metavar="RUN_DIR", type=run_dir, help="run folders (or groups) to compare"
    )
    c.add_argument(
        "--baseline", type=run_dir, help="the run differences are paired against (default: the first)"
    )
    c.add_argument(
        "--estimator", default="iwae", choices=sorted(ESTIMATORS), help="estimator (default: iwae)"
    )
    c.add_argument("--samples", type=POSITIVE, help="K (default: each run's eval.samples for iwae)")
    c.add_argument("--limit", type=POSITIVE, help="a fixed seeded random subset of N examples (default: all)")
    c.add_argument(
        "--out", help="write comparison.{md,tex,csv,json} and curves.{png,pdf} here (default: print only)"
    )
    c.add_argument(
        "--compact", action="store_true",
        help="comparison.tex in a smaller font with tighter columns (default: the document's size)",
    )  # fmt: skip
    common_flags(c, "split", "seed", "checkpoint", "threads", "no-cache", "json", "no-progress",
                 what="the subset and the estimates")  # fmt: skip
    c.set_defaults(fn=_compare)


def parser() -> argparse.ArgumentParser:
    from .data import DATASETS, downloadable

    p = Parser(prog="flowvae", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_train_parser, _eval_parser, _bdmc_parser, _sample_parser, _gaps_parser, _compare_parser,
                *SWEEP_PARSERS):  # fmt: skip
        add(sub)
    for add in LATENT_PARSERS:  # after training: encode, interpolate, traverse, layers, reconstruct
        add(sub)
    sub.add_parser("presets", help="list the named presets").set_defaults(fn=_presets)
    c = sub.add_parser("config", help="list every config key with its value and valid values")
    c.add_argument("--preset", help="show this preset's values (default: the built-in defaults)")
    c.set_defaults(fn=_config)
    d = sub.add_parser("data", help="dataset utilities")
    dl = d.add_subparsers(dest="data_command", required=True).add_parser(
        "download", help="fetch a dataset's standard files and verify checksums"
    )
    dl.add_argument(
        "name", choices=list(DATASETS),
        help=f"the dataset (downloads: {', '.join(downloadable())}; the others say where to get their files)",
    )  # fmt: skip
    dl.add_argument("--root", type=new_dir, help="target folder (default: $FLOWVAE_DATA, else ./data)")
    dl.set_defaults(fn=_download)
    return p


def main(argv: list[str] | None = None) -> int:
    from .rundir import TrainingError

    p = parser()
    args, extra = p.parse_known_args(argv)
    if extra and getattr(args, "overrides_anywhere", False) and all("=" in e and e[0] != "-" for e in extra):
        args.overrides += extra  # sweep SPEC --run-dir R key=value: overrides after the flags too
    elif extra:
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.fn(args)
    except (ConfigError, DataError, CheckpointError, TrainingError, ValueError) as e:
        if os.environ.get("FLOWVAE_DEBUG"):
            raise
        text = getattr(e, "cli", None) or str(e)  # an error of the library in the command line's terms
        msg = text.splitlines()[0] if text else type(e).__name__
        print(f"flowvae: error: {msg}", file=sys.stderr)
        return 2 if isinstance(e, ConfigError) else 1
    except BrokenPipeError:  # e.g. `flowvae config | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:  # read-only folder, disk full, a file where a folder should be, ...
        if os.environ.get("FLOWVAE_DEBUG"):
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"flowvae: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # train: Interrupted says where its checkpoint is
        text = getattr(e, "cli", None) or str(e)
        print(f"flowvae: interrupted{'; ' + text if text else ''}", file=sys.stderr)
        return getattr(e, "code", 130)


__all__ = ["Config", "main", "parser"]
