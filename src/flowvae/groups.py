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
from .checkpoint import GROUP_FILE, CheckpointError, load_checkpoint, load_run
from .compare import (
    MODEL_HEADER,
    Comparison,
    ComparisonHeader,
    caption,
    compare_runs,
    config_cell,
    header,
    model_cells,
    notes,
    plot_curves,
    plus_minus,
    render_latex,
    render_markdown,
    shared_examples,
)
from .config import Config, from_dict
from .evaluation import RunEvaluation, evaluate_run
from .rundir import BUDGETS, TrainingError, TrainState, resume_checkpoint, run_files

GROUP_VERSION = 1


# ----------------------------------------------------------------------------- the folder


@dataclass
class Group:
    """What ``group.json`` holds: member folders (relative to the group), their ``train.seed``,
    the config every member starts from (with the first seed), the overrides given, and the
    preset and config file that config came from (``origin``)."""

    members: list[str]
    seeds: list[int]
    config: dict[str, Any]
    overrides: list[str] = field(default_factory=list)
    origin: dict[str, str] = field(default_factory=dict)
    version: int = GROUP_VERSION


def is_group(path: str | Path) -> bool:
    return (Path(path) / GROUP_FILE).is_file()


def _group_problem(values: Any) -> str:
    """What is wrong with the parsed content of a ``group.json`` (``""``: nothing)."""

    def kind(v: Any) -> str:  # the value as the file spells it, cut short
        text = json.dumps(v)
        return text if len(text) <= 40 else text[:37] + "..."

    if not isinstance(values, dict):
        return f"it holds {kind(values)}, not an object"
    unknown = sorted(set(values) - set(Group.__dataclass_fields__))
    missing = [k for k in ("members", "seeds", "config") if k not in values]
    if unknown or missing:
        return f"unknown entries {unknown}" if unknown else f"no {', '.join(missing)}"
    members, seeds = values["members"], values["seeds"]
    if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
        return f"members must be a non-empty list of folder names (it is {kind(members)})"
    bad = [m for m in members if m in ("", ".", "..") or "/" in m or "\\" in m]
    if bad or len(set(members)) < len(members):
        return f"members must be distinct folder names inside the group (got {members[:5]})"
    if not isinstance(seeds, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in seeds):
        return f"seeds must be a list of integers (it is {kind(seeds)})"
    if len(seeds) != len(members):
        return f"{len(members)} members but {len(seeds)} seeds"
    if not isinstance(values["config"], dict):
        return f"config must be an object (it is {kind(values['config'])})"
    overrides = values.get("overrides", [])
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        return f"overrides must be a list of key=value strings (it is {kind(overrides)})"
    return ""


def read_group(path: str | Path) -> Group:
    """``path/group.json``, checked: a file that is not one (unreadable, other types, members
    that are not folder names) is a one-line :class:`CheckpointError` saying what is wrong."""
    file = Path(path) / GROUP_FILE
    try:
        values = json.loads(file.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not a group of runs (no {GROUP_FILE})") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{file}: not a readable group file ({type(e).__name__})") from None
    problem = _group_problem(values)
    if problem:
        raise CheckpointError(f"{file}: not a valid group file: {problem}")
    return Group(**values)


def group_members(path: str | Path) -> list[Path] | None:
    """The member run folders of a group, or ``None`` if ``path`` is not a group."""
    return [Path(path) / m for m in read_group(path).members] if is_group(path) else None


# what a group's members may differ in: the seed, and what is per invocation or per machine
MAY_DIFFER = {"train.seed", *(f"train.{b}" for b in BUDGETS), "train.threads", "train.device"}
BUDGET_STOPS = ("early stopping", *(f"{b}=" for b in BUDGETS))  # a run that ended by its own rule


def _member_state(member: Path) -> tuple[str, dict[str, Any] | None]:
    """Why a member is unfinished (``""``: finished: all its epochs, or stopped by early stopping
    or a budget) and its config (``None`` before its first checkpoint)."""
    latest = resume_checkpoint(member)
    if not latest.is_file():
        return "no checkpoint: never started, or killed before its first", None
    ckpt = load_checkpoint(latest)
    state, config = ckpt.get("state"), ckpt["config"]
    try:
        epochs, epoch, stopped = config["train"]["epochs"], state["epoch"], state.get("stopped", "")
    except (KeyError, TypeError):
        return f"{latest.name} holds no training state", config
    if epoch >= epochs or str(stopped).startswith(BUDGET_STOPS):
        return "", config
    return f"stopped at epoch {epoch} of {epochs} ({stopped or 'killed, or still training'})", config


def scored_members(group_dir: str | Path) -> tuple[list[Path], dict[str, str]]:
    """The members whose values make a group's mean ± sd, and the unfinished ones left out (name:
    why). Refused (:class:`CheckpointError`): members whose configs differ beyond
    :data:`MAY_DIFFER` (the first such key named), and a group with no finished member."""
    group_dir = Path(group_dir)
    members = [group_dir / m for m in read_group(group_dir).members]
    flat: dict[Path, dict[str, Any]] = {}
    left_out = {}
    for member in members:
        why, config = _member_state(member)
        if why:
            left_out[member.name] = why
        if config is not None:
            flat[member] = {f"{k}.{key}": v for k, section in config.items() for key, v in section.items()}
    first, *others = list(flat) or [None]
    for other in others:
        for key in sorted(set(flat[first]) | set(flat[other])):
            a, b = flat[first].get(key), flat[other].get(key)
            if a != b and key not in MAY_DIFFER:
                raise CheckpointError(
                    f"{group_dir}: its members differ in {key} ({first.name}: {a}, {other.name}: {b}); a "
                    "group's members share their config but for train.seed: compare them as runs"
                )
    finished = [m for m in members if m.name not in left_out]
    if not finished:
        why = "; ".join(f"{name}: {text}" for name, text in left_out.items())
        raise CheckpointError(f"{group_dir}: no member is finished ({why}); continue it with --resume")
    return finished, left_out


def left_out_warning(group_dir: str | Path, left_out: dict[str, str]) -> str:
    """The line that names the members left out of a group's mean ± sd."""
    names = ", ".join(f"{name} ({why})" for name, why in left_out.items())
    left = f"{group_dir}: unfinished members left out of the mean ± sd: {names}"
    return f"{left}; --resume {group_dir} continues them"


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
    held = [f"seed-{i}" for i in range(seeds) if run_files(group_dir / f"seed-{i}")]
    if held and not is_group(group_dir) and not overwrite:  # not a group: --resume would not continue it
        problem = f"{group_dir} has no {GROUP_FILE} but {', '.join(held[:3])} hold(s) runs"
        raise TrainingError(
            f"{problem}; resume each with fit(None, {str(group_dir / held[0])!r}, resume=True), replace "
            "them with overwrite=True, or choose another run_dir",
            cli=f"{problem}; resume each with --resume {group_dir / held[0]}, replace them with --overwrite, "
            "or choose another --run-dir",
        )  # fmt: skip
    if (is_group(group_dir) or held) and not overwrite:
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


def welch_df(base: Sequence[float], other: Sequence[float]) -> float | None:
    """Welch–Satterthwaite degrees of freedom of :func:`difference_across_seeds`' SE:
    (a + b)² / (a²/(n₁−1) + b²/(n₀−1)), a = sd₁²/n₁, b = sd₀²/n₀; ``None`` with one seed in
    either group (and with no spread at all). Between min(n₁, n₀) − 1 and n₁ + n₀ − 2: about
    2.6 with 3 seeds a side, where the 95 % t quantile is ~3.5, not 2."""
    (_, s0), (_, s1) = seed_mean_sd(base), seed_mean_sd(other)
    if s0 is None or s1 is None:
        return None
    a, b = s1**2 / len(other), s0**2 / len(base)
    if a + b == 0:
        return None
    return (a + b) ** 2 / (a**2 / (len(other) - 1) + b**2 / (len(base) - 1))


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile (0.5 < p < 1) of Student's t with ``df`` > 0 (not necessarily whole)
    degrees of freedom: bisection on the CDF, 1/2 + the density integrated from 0 by Simpson's
    rule (to ~1e-9: far below what an interval's width needs)."""
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(t: float, steps: int = 2000) -> float:
        h = t / steps
        f = [math.exp(log_c - (df + 1) / 2 * math.log1p((i * h) ** 2 / df)) for i in range(steps + 1)]
        return 0.5 + h / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))

    low, high = 0.0, 1.0
    while cdf(high) < p:
        low, high = high, 2 * high
    for _ in range(50):
        mid = (low + high) / 2
        low, high = (mid, high) if cdf(mid) < p else (low, mid)
    return (low + high) / 2


def welch_interval(base: Sequence[float], other: Sequence[float], level: float = 0.95) -> tuple | None:
    """``(df, low, high)``: the t interval of ``mean(other) − mean(base)`` over training seeds,
    difference ± t((1 + level)/2, Welch df) × Welch SE; ``None`` with one seed in either group."""
    diff, se = difference_across_seeds(base, other)
    df = welch_df(base, other)
    if se is None or df is None:
        return None
    half = t_quantile((1 + level) / 2, df) * se
    return df, diff - half, diff + half


def summary_line(states: dict[str, TrainState], group_dir: str | Path) -> str:
    """The line a group ends with: its members' best valid ELBO, mean ± sd over seeds, and steps."""
    best = [s.best_valid for s in states.values() if s.best_epoch >= 0 and math.isfinite(s.best_valid)]
    steps = statistics.fmean(s.step for s in states.values())
    if not best:
        elbo = "no valid ELBO"
    else:
        mean, sd = seed_mean_sd(best)
        spread = f" ± {sd:.2f} (sd)" if sd is not None else ""
        each = ", ".join(f"{v:.2f}" for v in best)
        elbo = f"best valid ELBO {mean:.2f}{spread} nats over {len(best)} seed(s) ({each})"
    return f"group {group_dir}: {elbo}; {steps:.0f} steps per member on average"


# ----------------------------------------------------------------------------- evaluation


@dataclass
class GroupEvaluation:
    """A group scored: its finished members (by name), and the unfinished ones left out (why)."""

    members: dict[str, RunEvaluation]
    left_out: dict[str, str]


def evaluate_group(
    group_dir: str | Path, estimator: str = "iwae", samples: int | None = None, *, split: str = "test",
    limit: int = 0, seed: int = 1234, checkpoint: str = "best", device: str | torch.device = "cpu",
    **kwargs: Any,
) -> GroupEvaluation:  # fmt: skip
    """Every finished member (:func:`scored_members`) scored as
    :func:`~flowvae.evaluation.evaluate_run` scores a run, on the same examples with the same
    per-example seeds (members on the same data share one load)."""
    if not is_group(group_dir):
        raise CheckpointError(f"{group_dir}: not a group of runs (no {GROUP_FILE})")
    members, left_out = scored_members(group_dir)
    runs = [load_run(m, checkpoint, device) for m in members]
    examples = shared_examples(runs, split, limit, seed)
    scored = {
        m.name: evaluate_run(
            m, estimator, samples, split=split, limit=limit, seed=seed, checkpoint=checkpoint, device=device,
            examples=ex, run=run, **kwargs,
        )  # fmt: skip
        for m, run, ex in zip(members, runs, examples, strict=True)
    }
    return GroupEvaluation(scored, left_out)


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
    diff_df: float | None = None  # Welch–Satterthwaite degrees of freedom of diff_se_seeds
    diff_ci95: list[float] | None = None  # diff_mean ± t(0.975, diff_df) diff_se_seeds
    kl_weight_mean: float | None = None  # the final KL weight, mean over seeds
    config: dict[str, Any] = field(default_factory=dict)  # the group's values of the differing keys


@dataclass
class GroupComparison(ComparisonHeader):
    groups: list[GroupRow] = field(default_factory=list)
    runs: Comparison | None = None  # every member of every group, as compare_runs reports runs
    run_dirs: dict[str, str] = field(default_factory=dict)  # row name in ``runs`` -> run folder
    warnings: list[str] = field(default_factory=list)
    se_seeds: str = "Welch over seeds: sqrt(sd^2/n + sd_baseline^2/n_baseline), sample sds of per-seed means"
    se_paired: str = "over examples: sd of the per-example difference of seed means / sqrt(examples)"
    interval: str = "diff_ci95: diff_mean ± t(0.975, diff_df) diff_se_seeds, diff_df Welch–Satterthwaite's"

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
    members, warnings = {}, []
    for m in methods:
        members[m], left_out = scored_members(m) if is_group(m) else ([m], {})
        warnings += [left_out_warning(m, left_out)] if left_out else []
    flat = [r for m in methods for r in members[m]]
    labels = [run_label(r) for m in methods for r in members[m]]
    c = compare_runs(flat, members[base][0], estimator, samples, labels=labels, **kwargs)
    rows = dict(zip(labels, c.rows, strict=True))
    names = {m: [lab for lab, r in zip(labels, flat, strict=True) if r in members[m]] for m in methods}

    def nll_per_example(m: Path) -> torch.Tensor:  # mean over the group's seeds, per example
        return -torch.stack([c.per_example[n].double() for n in names[m]]).mean(0)

    base_values, base_per_example = [rows[n].nll for n in names[base]], nll_per_example(base)
    # the keys on which the groups differ: of those on which runs differ, the ones each group shares
    same = {k: all(len({json.dumps(rows[n].config[k]) for n in names[m]}) == 1 for m in methods)
            for k in c.differing}  # fmt: skip
    differing = [k for k in c.differing if k != "train.seed" and same[k]]
    out = []
    for m in methods:
        own = [rows[n] for n in names[m]]
        values = [r.nll for r in own]
        mean, sd = seed_mean_sd(values)
        diff = se_seeds = se_paired = interval = None
        if m != base:
            diff, se_seeds = difference_across_seeds(base_values, values)
            interval = welch_interval(base_values, values)
            d = nll_per_example(m) - base_per_example
            se_paired = d.std().item() / math.sqrt(d.numel())
        seconds, weights = [r.train_seconds for r in own], [r.kl_weight for r in own]
        out.append(GroupRow(
            group=m.name if is_group(m) else run_label(m), posterior=own[0].posterior, members=names[m],
            train_seeds=[_train_seed(r) for r in members[m]], seeds=values, nll_mean=mean, nll_sd=sd,
            diff_mean=diff, diff_se_seeds=se_seeds,
            diff_se_paired=se_paired,
            elbo_mean=statistics.fmean(r.elbo for r in own), kl_mean=statistics.fmean(r.kl for r in own),
            active_units_mean=statistics.fmean(r.active_units for r in own), latent_dim=own[0].latent_dim,
            parameters=own[0].parameters, epochs_mean=statistics.fmean(r.epochs for r in own),
            train_seconds_mean=None if None in seconds else statistics.fmean(seconds),
            diff_df=None if interval is None else interval[0],
            diff_ci95=None if interval is None else list(interval[1:]),
            kl_weight_mean=None if None in weights else statistics.fmean(weights),
            config={k: own[0].config[k] for k in differing},
        ))  # fmt: skip
    run_dirs = {lab: str(r) for lab, r in zip(labels, flat, strict=True)}
    return GroupComparison(
        c.estimator, c.samples, c.split, c.n, c.subset, out[methods.index(base)].group, c.seed, c.checkpoint,
        c.settings, differing, c.shared, groups=out, runs=c, run_dirs=run_dirs,
        warnings=warnings + c.warnings,
    )  # fmt: skip


NO_SEEDS = "n/a (1 seed)"

GROUP_COLUMNS = (
    ["group", "posterior"],
    ["−log p̂ (nats), mean ± sd (n seeds)", "per seed", "Δ vs baseline ± SE over seeds",
     "95 % interval (Welch df)", "± paired SE", *MODEL_HEADER],
)  # fmt: skip


def _group_cells(row: GroupRow, differing: list[str], latex: bool = False) -> list[str]:
    def pm(value: float, err: float | None) -> str:
        return plus_minus(value, err, latex, NO_SEEDS)

    n = len(row.seeds)
    nll = f"{pm(row.nll_mean, row.nll_sd)}" + (f" ({n})" if n > 1 else "")
    diff = "—" if row.diff_mean is None else pm(row.diff_mean, row.diff_se_seeds)
    if row.diff_ci95 is not None:
        interval = "[{:.2f}, {:.2f}] ({:.1f})".format(*row.diff_ci95, row.diff_df)
    else:
        interval = "—" if row.diff_mean is None else NO_SEEDS
    paired = "—" if row.diff_se_paired is None else f"{row.diff_se_paired:.2f}"
    model = model_cells(
        row.elbo_mean, row.kl_mean, row.active_units_mean, row.latent_dim, row.parameters, row.epochs_mean,
        row.train_seconds_mean, row.kl_weight_mean,
    )  # fmt: skip
    config = [config_cell(row.config.get(k)) for k in differing]
    per_seed = ", ".join(f"{v:.2f}" for v in row.seeds)
    return [row.group, row.posterior, *config, nll, per_seed, diff, interval, paired, *model]


def _group_spread(c: GroupComparison) -> list[str]:
    seeds = sorted({len(r.seeds) for r in c.groups})
    return [
        f"mean ± sd: over each group's training seeds ({', '.join(map(str, seeds))} per group), each seed's "
        f"−log p̂ the mean over the {c.n} examples. Δ: the difference of seed means to `{c.baseline}` "
        "(negative: better) ± its standard error over seeds, Welch's sqrt(sd²/n + sd_b²/n_b), which includes "
        "the training-seed variance and is conditional on the examples.",
        "95 % interval: Δ ± t(0.975, df) × that SE, df the Welch–Satterthwaite degrees of freedom (in "
        "brackets); with few seeds t is far above 2. With one seed in a group there is neither "
        f"({NO_SEEDS}). ± paired SE: over the {c.n} examples, of the per-example difference of seed means "
        "(conditional on the trained models).",
    ]


def markdown_table(c: GroupComparison, members: bool = True) -> str:
    """The group table (means over seeds) with its notes and, with ``members``, the per-run
    table below it."""
    rows = [_group_cells(r, c.differing) for r in c.groups]
    remarks = notes(c, _group_spread(c), c.warnings)
    table = render_markdown(caption(c, "Groups of training seeds"), header(c, *GROUP_COLUMNS), rows, remarks)
    runs = "\n\nEvery run:\n\n" + compare.markdown_table(c.runs, with_notes=False) if members else ""
    return table + runs


def latex_table(c: GroupComparison, compact: bool = False) -> str:
    """The group table as a LaTeX ``table`` with its caption and notes (booktabs)."""
    rows = [_group_cells(r, c.differing, True) for r in c.groups]
    k = len(c.differing)
    text = (*range(2 + k), 3 + k, 5 + k)  # names, config values, per seed, the interval
    remarks = notes(c, _group_spread(c), c.warnings)
    caption_text = caption(c, "Groups of training seeds")
    return render_latex(header(c, *GROUP_COLUMNS), rows, text, caption_text, remarks, compact)


def write_comparison(c: GroupComparison, out_dir: str | Path, compact: bool = False) -> dict[str, Path]:
    """comparison.{md,tex,csv,json} (groups; ``runs.csv``: every member) and curves.{png,pdf}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / f"comparison.{k}" for k in ("md", "tex", "csv", "json")}
    paths["md"].write_text(markdown_table(c) + "\n")
    paths["tex"].write_text(latex_table(c, compact) + "\n")
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
    "Group", "GroupComparison", "GroupEvaluation", "GroupRow", "check_new_group", "compare_groups",
    "difference_across_seeds", "evaluate_group", "group_members", "is_group", "latex_table",
    "markdown_table", "read_group", "scored_members", "seed_mean_sd", "summary_line", "t_quantile",
    "welch_df", "welch_interval", "write_comparison"]  # fmt: skip
