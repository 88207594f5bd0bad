"""Seeds are part of a result: a *group* of runs that differ only in ``train.seed``.

``fit(cfg, G, seeds=N)`` (``flowvae train --seeds N --run-dir G``) trains N members with seeds
``train.seed + 0 … N−1`` into ``G/seed-0 … G/seed-(N−1)``, each an ordinary run directory
(``eval``, ``sample``, ``gaps`` and ``--resume`` work on each); ``G/group.json`` (members, seeds,
the group's config and overrides) marks the folder as a group. ``fit(None, G, resume=True)``
(``--resume G``) resumes every member that is not finished and starts any that never wrote a
checkpoint: each member checkpoints as a run does, so a killed group loses nothing.

The members train as concurrent processes (:mod:`flowvae.group_training`).

Across seeds (:func:`compare_groups`, ``flowvae compare G1 G2 …``): every member of every group
is scored on the same examples with the same per-example seeds (:func:`~flowvae.compare.compare_runs`).
Per group: the per-seed −log p̂ (each the mean over the examples), their mean and sample sd. Per
group against the baseline group: ``diff_mean`` (difference of the seed means) with
``diff_se_seeds`` = sqrt(sd₁²/n₁ + sd₀²/n₀) (Welch: seeds independent within and across groups),
which includes the variance from training seeds and the estimator's noise, conditional on the
test examples (every seed is scored on the same ones); with one seed in either group there is
none (``None``, "n/a (1 seed)"). Next to it ``diff_se_paired``: the standard error over examples
of the per-example difference of seed means (today's paired SE; conditional on the trained models).
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from . import compare
from .checkpoint import GROUP_FILE, CheckpointError, load_run
from .compare import (
    MODEL_HEADER,
    Comparison,
    ComparisonHeader,
    compare_runs,
    model_cells,
    plot_curves,
    plus_minus,
    render_latex,
    render_markdown,
    shared_examples,
)
from .config import Config, from_dict
from .evaluation import RunEvaluation, evaluate_run
from .rundir import TrainingError, run_files

GROUP_VERSION = 1


# ----------------------------------------------------------------------------- the folder


@dataclass
class Group:
    """What ``group.json`` holds: member folders (relative to the group), their ``train.seed``,
    the config every member starts from (with the first seed) and the overrides given."""

    members: list[str]
    seeds: list[int]
    config: dict[str, Any]
    overrides: list[str] = field(default_factory=list)
    version: int = GROUP_VERSION


def is_group(path: str | Path) -> bool:
    return (Path(path) / GROUP_FILE).is_file()


def read_group(path: str | Path) -> Group:
    file = Path(path) / GROUP_FILE
    try:
        values = json.loads(file.read_text())
        group = Group(**values)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not a group of runs (no {GROUP_FILE})") from None
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{file}: not a readable group file ({type(e).__name__})") from None
    if len(group.members) != len(group.seeds) or not group.members:
        raise CheckpointError(f"{file}: members and seeds do not match")
    return group


def group_members(path: str | Path) -> list[Path] | None:
    """The member run folders of a group, or ``None`` if ``path`` is not a group."""
    return [Path(path) / m for m in read_group(path).members] if is_group(path) else None


def run_label(path: Path) -> str:
    """A run's name in tables: ``G/seed-1`` for a member of group ``G``, else the folder's name."""
    return f"{path.parent.name}/{path.name}" if is_group(path.parent) else path.name


def member_config(base: dict[str, Any], seed: int) -> Config:
    cfg = from_dict(base)
    cfg.train.seed = seed
    return cfg


def check_new_group(group_dir: Path, seeds: int, overwrite: bool) -> None:
    """A new group goes to a missing folder, or one without a group or a run in it (``overwrite``:
    a group's folder is reused and its members' run files replaced)."""
    if group_dir.exists() and not group_dir.is_dir():
        problem = f"{group_dir}: exists and is not a directory; choose another"
        raise TrainingError(f"{problem} run_dir", cli=f"{problem} --run-dir")
    if run_files(group_dir):
        problem = f"{group_dir} holds a single run; for a group of seeds choose another"
        raise TrainingError(f"{problem} run_dir", cli=f"{problem} --run-dir")
    taken = is_group(group_dir) or any(run_files(group_dir / f"seed-{i}") for i in range(seeds))
    if taken and not overwrite:
        held = f"{group_dir} already holds a group of runs"
        raise TrainingError(
            f"{held}; continue it with fit(cfg, {str(group_dir)!r}, resume=True), replace it with "
            "overwrite=True, or choose another run_dir",
            cli=f"{held}; use --resume {group_dir} to continue it, --overwrite to replace it, or another "
            "--run-dir",
        )



# ----------------------------------------------------------------------------- statistics


def seed_mean_sd(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample sd (n − 1) of per-seed values; no sd (``None``) from one seed."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def difference_across_seeds(base: Sequence[float], other: Sequence[float]) -> tuple[float, float | None]:
    """``mean(other) − mean(base)`` and its standard error over training seeds, Welch's
    sqrt(sd_other²/n_other + sd_base²/n_base) (sample sds; seeds independent). ``None`` when a
    group has one seed: one run says nothing about how another seed would move it."""
    (m0, s0), (m1, s1) = seed_mean_sd(base), seed_mean_sd(other)
    if s0 is None or s1 is None:
        return m1 - m0, None
    return m1 - m0, math.sqrt(s1**2 / len(other) + s0**2 / len(base))


# ----------------------------------------------------------------------------- evaluation


def evaluate_group(
    group_dir: str | Path, estimator: str = "iwae", samples: int | None = None, *, split: str = "test",
    limit: int = 0, seed: int = 1234, checkpoint: str = "best", device: str | torch.device = "cpu",
    **kwargs: Any,
) -> dict[str, RunEvaluation]:  # fmt: skip
    """Every member scored as :func:`~flowvae.evaluation.evaluate_run` scores a run, on the same
    examples with the same per-example seeds (members on the same data share one load)."""
    members = group_members(group_dir)
    if members is None:
        raise CheckpointError(f"{group_dir}: not a group of runs (no {GROUP_FILE})")
    runs = [load_run(m, checkpoint, device) for m in members]
    examples = shared_examples(runs, split, limit, seed)
    return {
        m.name: evaluate_run(
            m,
            estimator,
            samples,
            split=split,
            limit=limit,
            seed=seed,
            checkpoint=checkpoint,
            device=device,
            examples=ex,
            run=run,
            **kwargs,
        )  # fmt: skip
        for m, run, ex in zip(members, runs, examples, strict=True)
    }


# ----------------------------------------------------------------------------- comparison


@dataclass
class GroupRow:
    group: str
    posterior: str
    members: list[str]  # row names in the per-run table
    train_seeds: list[int]
    seeds: list[float]  # per seed: mean -log p̂ over the examples
    nll_mean: float
    nll_sd: float | None  # None: one seed
    diff_mean: float | None  # nll_mean minus the baseline's (negative: better); None for the baseline
    diff_se_seeds: float | None  # Welch SE over seeds; None for the baseline or with one seed in either
    diff_se_paired: float | None  # SE over examples of the per-example difference of seed means
    elbo_mean: float
    kl_mean: float
    active_units_mean: float
    latent_dim: int
    parameters: int
    epochs_mean: float
    train_seconds_mean: float | None


@dataclass
class GroupComparison(ComparisonHeader):
    groups: list[GroupRow]
    runs: Comparison  # every member of every group, as compare_runs reports runs
    run_dirs: dict[str, str]  # row name in ``runs`` -> run folder
    warnings: list[str]
    se_seeds: str = "Welch over seeds: sqrt(sd^2/n + sd_baseline^2/n_baseline), sample sds of per-seed means"
    se_paired: str = "over examples: sd of the per-example difference of seed means / sqrt(examples)"

    def to_json(self) -> dict:
        out = asdict(self)
        out["runs"] = self.runs.to_json()["rows"]
        return out


def _train_seed(run_dir: Path) -> int:
    """A run's ``train.seed``, from its resolved ``config.yaml`` (plain YAML data)."""
    return int(yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["seed"])


def compare_groups(
    dirs: list[str | Path], baseline: str | Path | None = None, estimator: str = "iwae",
    samples: int | None = None, **kwargs: Any,
) -> GroupComparison:  # fmt: skip
    """Groups (or single runs: groups of one) as methods. Every member is scored by
    :func:`~flowvae.compare.compare_runs` on the same examples; then per group the per-seed
    values, their mean and sd, and against the baseline (default: the first) the difference of
    seed means with its standard error over seeds and its paired one over examples."""
    methods = [Path(d) for d in dirs]
    base = Path(baseline) if baseline is not None else methods[0]
    if base not in methods:
        methods.insert(0, base)
    members = {m: group_members(m) or [m] for m in methods}
    flat = [r for m in methods for r in members[m]]
    labels = [run_label(r) for m in methods for r in members[m]]
    c = compare_runs(flat, members[base][0], estimator, samples, labels=labels, **kwargs)
    rows = dict(zip(labels, c.rows, strict=True))
    names = {m: [lab for lab, r in zip(labels, flat, strict=True) if r in members[m]] for m in methods}

    def nll_per_example(m: Path) -> torch.Tensor:  # mean over the group's seeds, per example
        return -torch.stack([c.per_example[n].double() for n in names[m]]).mean(0)

    base_values, base_per_example = [rows[n].nll for n in names[base]], nll_per_example(base)
    out = []
    for m in methods:
        own = [rows[n] for n in names[m]]
        values = [r.nll for r in own]
        mean, sd = seed_mean_sd(values)
        diff = se_seeds = se_paired = None
        if m != base:
            diff, se_seeds = difference_across_seeds(base_values, values)
            d = nll_per_example(m) - base_per_example
            se_paired = d.std().item() / math.sqrt(d.numel())
        seconds = [r.train_seconds for r in own]
        out.append(GroupRow(
            group=m.name if is_group(m) else run_label(m), posterior=own[0].posterior, members=names[m],
            train_seeds=[_train_seed(r) for r in members[m]], seeds=values, nll_mean=mean, nll_sd=sd,
            diff_mean=diff, diff_se_seeds=se_seeds, diff_se_paired=se_paired,
            elbo_mean=statistics.fmean(r.elbo for r in own), kl_mean=statistics.fmean(r.kl for r in own),
            active_units_mean=statistics.fmean(r.active_units for r in own), latent_dim=own[0].latent_dim,
            parameters=own[0].parameters, epochs_mean=statistics.fmean(r.epochs for r in own),
            train_seconds_mean=None if None in seconds else statistics.fmean(seconds),
        ))  # fmt: skip
    run_dirs = {lab: str(r) for lab, r in zip(labels, flat, strict=True)}
    return GroupComparison(
        c.estimator,
        c.samples,
        c.split,
        c.n,
        c.subset,
        out[methods.index(base)].group,
        out,
        c,
        run_dirs,
        c.warnings,
    )


NO_SEEDS = "n/a (1 seed)"

GROUP_HEADER = [
    "group",
    "posterior",
    "−log p̂ (nats), mean ± sd (n seeds)",
    "per seed",
    "Δ vs baseline ± SE over seeds",
    "± paired SE",
    *MODEL_HEADER,
]


def _group_cells(row: GroupRow, latex: bool = False) -> list[str]:
    def pm(value: float, err: float | None) -> str:
        return plus_minus(value, err, latex, NO_SEEDS)

    n = len(row.seeds)
    nll = f"{pm(row.nll_mean, row.nll_sd)}" + (f" ({n})" if n > 1 else "")
    diff = "—" if row.diff_mean is None else pm(row.diff_mean, row.diff_se_seeds)
    paired = "—" if row.diff_se_paired is None else f"{row.diff_se_paired:.2f}"
    model = model_cells(
        row.elbo_mean, row.kl_mean, row.active_units_mean, row.latent_dim, row.parameters, row.epochs_mean,
        row.train_seconds_mean,
    )  # fmt: skip
    return [row.group, row.posterior, nll, ", ".join(f"{v:.2f}" for v in row.seeds), diff, paired, *model]


def markdown_table(c: GroupComparison, members: bool = True) -> str:
    """The group table (means over seeds) and, with ``members``, the per-run table below it."""
    caption = (
        f"{c.estimator} (K={c.samples}) on {c.subset}; per group: mean ± sd over training seeds; Δ: "
        f"difference of seed means to `{c.baseline}` (negative: better) ± standard error over seeds "
        "(Welch), then ± paired standard error over examples (conditional on the trained models)"
    )
    table = render_markdown(caption, GROUP_HEADER, [_group_cells(r) for r in c.groups])
    return table + ("\n\nEvery run:\n\n" + compare.markdown_table(c.runs) if members else "")


def latex_table(c: GroupComparison) -> str:
    """A booktabs table of the groups (needs ``\\usepackage{booktabs}``)."""
    return render_latex(GROUP_HEADER, [_group_cells(r, True) for r in c.groups], text=(0, 1, 3))


def write_comparison(c: GroupComparison, out_dir: str | Path) -> dict[str, Path]:
    """comparison.{md,tex,csv,json} (groups; ``runs.csv``: every member) and curves.{png,pdf}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / f"comparison.{k}" for k in ("md", "tex", "csv", "json")}
    paths["md"].write_text(markdown_table(c) + "\n")
    paths["tex"].write_text(latex_table(c) + "\n")
    keys = list(GroupRow.__dataclass_fields__)
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(keys)
        for row in c.groups:
            values = [getattr(row, k) for k in keys]
            writer.writerow([" ".join(map(str, v)) if isinstance(v, list) else "" if v is None else v
                             for v in values])  # fmt: skip
    paths["runs_csv"] = out / "runs.csv"
    compare.write_csv(c.runs, paths["runs_csv"])
    paths["json"].write_text(json.dumps(c.to_json(), indent=1) + "\n")
    for suffix in ("png", "pdf"):
        paths[suffix] = out / f"curves.{suffix}"
        plot_curves(list(c.run_dirs.values()), paths[suffix], labels=list(c.run_dirs))
    return paths


__all__ = [
    "Group", "GroupComparison", "GroupRow", "check_new_group", "compare_groups", "difference_across_seeds",
    "evaluate_group", "group_members", "is_group", "latex_table", "markdown_table", "read_group",
    "seed_mean_sd", "write_comparison"]  # fmt: skip
