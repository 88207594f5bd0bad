"""The sweep subcommands (``sweep``, ``status``): each parses its flags and calls
:mod:`flowvae.sweeps`; ``cli.py`` registers them (:data:`PARSERS`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .cliargs import POSITIVE, common_flags, new_dir, number, run_dir


def _sweep(args: argparse.Namespace) -> int:
    from . import sweeps
    from .launchers import make_launcher

    spec = sweeps.load_spec(args.spec, args.overrides)
    options = {k: getattr(args, k) for k in SWEEP_OPTIONS[args.launcher]}
    launcher = make_launcher(args.launcher, **options)
    if args.status:
        print("\n".join(sweeps.status_lines(sweeps.status(spec, args.run_dir, launcher), args.run_dir)))
    elif args.dry_run:
        print("\n".join(sweeps.plan_lines(spec, args.run_dir, launcher)))
    else:
        paths = sweeps.sweep(spec, args.run_dir, launcher, progress=not args.no_progress)
        print(paths["sweep_md"].read_text().rstrip())
        out = Path(args.run_dir) / sweeps.TABLE_DIR
        print(f"\nwrote {', '.join(p.name for p in paths.values())} to {out}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from . import sweeps

    print("\n".join(sweeps.status_lines(sweeps.status(None, args.run_dir), args.run_dir)))
    return 0


SWEEP_OPTIONS = {
    "local": ("workers",),
    "slurm": ("partition", "time_minutes", "cpus_per_task", "gpus_per_task", "mem_gb", "parallel"),
}


def _sweep_parser(sub) -> None:
    s = sub.add_parser(
        "sweep", help="a table's rows x seeds from a spec: train, resume, score, write the table"
    )
    s.add_argument("spec", metavar="SPEC", help="a spec file (YAML) or a shipped spec's name")
    s.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides added to every row")
    s.add_argument("--run-dir", required=True, type=new_dir, help="the sweep's folder (rerun it to continue)")
    s.add_argument("--launcher", choices=["local", "slurm"], default="local", help="where members run")
    s.add_argument("--status", action="store_true", help="show each member's state and exit")
    s.add_argument("--dry-run", action="store_true", help="print what would run and exit")
    s.add_argument("--workers", type=POSITIVE, help="local: members at a time (default: all at once)")
    s.add_argument("--partition", help="slurm: the partition (default: the cluster's)")
    s.add_argument("--time-minutes", type=POSITIVE, help="slurm: each task's time limit (default: 60)")
    s.add_argument("--cpus-per-task", type=POSITIVE, help="slurm: CPUs per task (default: 1)")
    s.add_argument("--gpus-per-task", type=POSITIVE, help="slurm: GPUs per task (default: none)")
    s.add_argument("--mem-gb", type=number(0), help="slurm: memory per task (default: the cluster's)")
    s.add_argument("--parallel", type=POSITIVE, help="slurm: tasks running at once (default: no limit)")
    common_flags(s, "no-progress")
    s.set_defaults(fn=_sweep, overrides_anywhere=True)
    st = sub.add_parser(
        "status", help="each member of a sweep: done, running (step, ETA), failed, not started"
    )
    st.add_argument("run_dir", metavar="RUN_DIR", type=run_dir, help="a sweep's folder")
    st.set_defaults(fn=_status)


PARSERS = (_sweep_parser,)

__all__ = ["PARSERS", "SWEEP_OPTIONS"]
