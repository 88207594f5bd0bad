"""From runs to a paper table: paired differences, learning curves.

:func:`compare_runs` scores every run with :func:`~flowvae.evaluation.evaluate_run` on the same
examples with the same seeds, so differences between runs are *paired*: the standard error of a
difference is that of the per-example differences, far smaller than either run's own standard
error (which is dominated by how log p(x) varies over examples).
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .checkpoint import CHECKPOINT_FILES, Run, load_run
from .config import (
    EVAL_SEED,
    FLOW_SIZE_KEYS,
    MODEL_TYPE_KEYS,
    PRIOR_KEYS,
    Config,
    get_key,
    unfinished_schedule,
    valid_keys,
)
from .data import EvaluationSet, evaluation_images, load_data
from .estimators import Estimate, resolve_estimator
from .evaluation import RunEvaluation, evaluate_run
from .noise import ExampleStreams, example_streams
from .posteriors import posterior_record

# ----------------------------------------------------------------------------- the table


def active_units(
    model: nn.Module, x: Tensor, samples: int = 100, batch_size: int = 100, threshold: float = 0.01,
    seed: int = 1234,
) -> int:  # fmt: skip
    """Latent units whose posterior mean varies over the data: Cov_x(E_q[z_i]) > ``threshold``
    (Burda, Grosse & Salakhutdinov 2016, arXiv 1509.00519); E_q[z] by ``samples`` draws, each
    example's from its own streams seeded by ``seed`` (the count is the same at every call)."""
    device = next(model.parameters()).device
    means = []
    with torch.no_grad():
        for start, batch in zip(range(0, len(x), batch_size), x.split(batch_size), strict=True):
            with example_streams(ExampleStreams.seeded(seed, range(start, start + len(batch)))):
                z, _ = model.encode(batch.to(device)).rsample_and_log_prob((samples,))
            means.append(z.mean(0).double().cpu())
    return int((torch.cat(means).var(0) > threshold).sum().item())


def read_metrics(run_dir: str | Path) -> list[dict[str, float]]:
    """The rows of a run's ``metrics.csv`` as floats (empty if there is none)."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


@dataclass
class ComparisonRow:
    run: str
    posterior: str
    nll: float
    stderr: float
    diff: float | None  # mean -log p̂ minus the baseline's (negative: better than the baseline)
    diff_stderr: float | None  # paired standard error of diff
    better: int | None  # examples where this run's log p̂ is higher than the baseline's
    worse: int | None
    elbo: float  # test ELBO (nats, as a log-likelihood bound: negative)
    kl: float
    active_units: int
    latent_dim: int
    parameters: int
    epochs: float  # fractional after a budget stop inside an epoch
    train_seconds: float | None
    bits_per_dim: float | None = None
    diagnostics: dict = field(default_factory=dict)
    kl_weight: float | None = None  # of the last step (metrics.csv): 1 once the KL warm-up is over
    lr: float | None = None  # of the last step
    schedule: list[str] = field(default_factory=list)  # parts of the schedule unfinished at the end
    trained: dict[str, Any] = field(default_factory=dict)  # the weights scored (checkpoint.TrainedTo)
    config: dict[str, Any] = field(default_factory=dict)  # the run's values of Comparison.differing


@dataclass
class ComparisonHeader:
    """What every comparison states first: the estimator, K and its options, the examples and
    their seed, the baseline; the config keys on which the compared runs differ (columns of the
    table) and the descriptive ones they share (:data:`DESCRIBE`, named in the caption)."""

    estimator: str
    samples: int
    split: str
    n: int
    subset: str
    baseline: str
    seed: int = EVAL_SEED
    checkpoint: str = "best"  # which of each run's checkpoints was scored (best or latest)
    settings: dict[str, Any] = field(default_factory=dict)
    differing: list[str] = field(default_factory=list)
    shared: dict[str, Any] = field(default_factory=dict)


WHICH = {"best": "its best valid ELBO", "latest": "its latest checkpoint"}

# config keys that change neither the model nor its training: never a column of a table
NOT_METHOD = frozenset({
    "data.root", "train.device", "train.threads", "train.checkpoint_every_steps", "eval.batch_size",
    "eval.chunk", "model.row_budget_mb",
})  # fmt: skip
# what a caption names when every compared run shares it: enough to place the table
DESCRIBE = (
    "data.name", "data.binarize", "model.type", "model.encoder", "model.decoder", "model.latent_dim",
    "model.prior", "model.likelihood", "train.objective", "train.epochs", "train.max_minutes",
    "train.kl_warmup_epochs", "train.lr_schedule",
)  # fmt: skip


def reads(cfg: Config, key: str) -> bool:
    """Whether ``cfg``'s model reads ``key``: not one of the other model.type's keys, of another
    prior, or a flow size that its posterior does not take (``model.flow_steps`` of a ``diag``)."""
    section, name = key.split(".")
    m = cfg.model
    if section != "model":
        return True
    if any(name in keys for keys in MODEL_TYPE_KEYS.values()) and name not in MODEL_TYPE_KEYS[m.type]:
        return False
    if name in PRIOR_KEYS and PRIOR_KEYS[name] != m.prior:
        return False
    flow_size = m.type == "flat" and name in FLOW_SIZE_KEYS
    return not (flow_size and name not in posterior_record(m.posterior).options)


def run_values(cfg: Config) -> dict[str, Any]:
    """Every key of ``cfg`` by its dotted name, ``None`` where the run does not read it (:func:`reads`)."""
    return {k: get_key(cfg, k) if reads(cfg, k) else None for k in valid_keys(cfg)}


def config_columns(configs: list[Config], skip: tuple[str, ...] = ()) -> tuple[list[str], dict[str, Any]]:
    """The keys on which ``configs`` differ (a table's columns; not :data:`NOT_METHOD` nor
    ``skip``) and the :data:`DESCRIBE` keys they share, with their value (its caption's)."""
    values = [run_values(c) for c in configs]
    keys = [k for k in values[0] if k not in NOT_METHOD and k not in skip]
    differing = [k for k in keys if len({json.dumps(v[k]) for v in values}) > 1]
    return differing, {k: values[0][k] for k in DESCRIBE if k not in differing}


@dataclass
class Comparison(ComparisonHeader):
    rows: list[ComparisonRow] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # each row's per-example log p̂(x), by row name (for statistics over runs; not in the JSON)
    per_example: dict[str, Tensor] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict:
        out = asdict(self)
        del out["per_example"]
        return out


def shared_examples(runs: list[Run], split: str, limit: int, seed: int) -> list[EvaluationSet]:
    """The examples each run is scored on; runs on the same data config share one load."""
    loaded: dict[str, EvaluationSet] = {}
    examples = []
    for run in runs:
        key = json.dumps(asdict(run.config.data), sort_keys=True, default=str)
        if key not in loaded:
            loaded[key] = evaluation_images(load_data(run.config.data), split, limit, seed)
        examples.append(loaded[key])
    return examples


def compare_runs(
    run_dirs: list[str | Path],
    baseline: str | Path | None = None,
    estimator: str = "iwae",
    samples: int | None = None,
    *,
    split: str = "test",
    limit: int = 0,
    seed: int = 1234,
    elbo_samples: int = 100,
    checkpoint: str = "best",
    cache: bool = True,
    progress: Callable[[int, str], Any] | None = None,
    labels: list[str] | None = None,
    **options,
) -> Comparison:
    """Evaluate every run on the same examples with the same seeds; paired differences to the
    baseline (default: the first run). Before anything is evaluated, runs whose scored images
    differ (other data files, splits or binarization) or whose K differs are refused.
    ``progress(total, description)`` makes a progress context (see :func:`evaluate_run`);
    ``labels``: the rows' names, one per run of ``run_dirs`` (default: the folders' names)."""
    dirs = [Path(r) for r in run_dirs]
    names = dict(zip(dirs, labels, strict=True)) if labels is not None else {}
    base = Path(baseline) if baseline is not None else dirs[0]
    if base not in dirs:
        dirs.insert(0, base)
    if len({d.resolve() for d in dirs}) != len(dirs):
        raise ValueError("a run is listed twice")
    name = {d: names.get(d, d.name) for d in dirs}
    runs = [load_run(d, checkpoint) for d in dirs]
    examples = shared_examples(runs, split, limit, seed)
    _check_pairable(dirs, runs, examples, estimator, samples, split)
    scored = [
        evaluate_run(
            d, estimator, samples, split=split, limit=limit, seed=seed, checkpoint=checkpoint, cache=cache,
            progress=(lambda total, d=d: progress(total, f"{name[d]} {estimator}")) if progress else None,
            examples=ex, run=run, **options,
        )  # fmt: skip
        for d, ex, run in zip(dirs, examples, runs, strict=True)
    ]
    first = scored[0]
    base_log_p = scored[dirs.index(base)].estimate.per_example
    differing, shared = config_columns([r.config for r in runs], skip=("model.posterior",))
    rows, warnings = [], []
    for d, s in zip(dirs, scored, strict=True):
        elbo = evaluate_run(
            d, "elbo", elbo_samples, split=split, limit=limit, seed=seed, checkpoint=checkpoint, cache=cache,
            examples=s.examples, run=s.run,
        ).estimate  # fmt: skip
        rows.append(_row(name[d], s, elbo, None if d == base else base_log_p, read_metrics(d), differing))
        unfinished = [f"scored {s.trained.describe()}"] if s.trained and s.trained.unfinished else []
        warnings += [f"{name[d]}: {w}" for w in [*unfinished, *s.estimate.warnings]]
    per_example = {name[d]: s.estimate.per_example for d, s in zip(dirs, scored, strict=True)}
    return Comparison(
        estimator, first.estimate.samples, split, first.estimate.n, first.examples.description, name[base],
        seed, checkpoint, first.estimate.settings, differing, shared, rows,
        schedule_warnings(rows) + warnings, per_example,
    )  # fmt: skip


def schedule_warnings(rows: list[ComparisonRow]) -> list[str]:
    """A warning when the compared runs ended at different points of their schedules (final KL
    weight, or which of KL warm-up and lr decay were unfinished): their difference is then partly
    one of how far each got, not only of method (a slower model stops earlier under a budget)."""

    def unfinished(r: ComparisonRow) -> tuple[str, ...]:
        return tuple(part.split(" (")[0] for part in r.schedule)  # "KL warm-up", "cosine lr decay"

    def end(r: ComparisonRow) -> str:
        weight = "?" if r.kl_weight is None else f"{r.kl_weight:.2f}"
        parts = f", unfinished {' and '.join(unfinished(r))}" if r.schedule else ""
        return f"{r.run}: KL weight {weight}, epoch {_short(r.epochs)}{parts}"

    if len({(None if r.kl_weight is None else round(r.kl_weight, 2), unfinished(r)) for r in rows}) <= 1:
        return []
    return [f"the runs ended at different points of their training schedules ({'; '.join(map(end, rows))}): "
            "their differences mix the methods with how far each got"]  # fmt: skip


def _check_pairable(
    dirs: list[Path], runs: list[Run], examples: list[EvaluationSet], estimator: str, samples: int | None,
    split: str,
) -> None:  # fmt: skip
    """Refuse, before anything is evaluated, runs scored on other images or with another K."""
    ks = [resolve_estimator(estimator, samples, None, r.config.eval)[0] for r in runs]
    for d, ex, k in zip(dirs, examples, ks, strict=True):
        if ex.digest != examples[0].digest:
            raise ValueError(
                f"{d} scores other {split} images than {dirs[0]} (other data files, split or binarization); "
                "compare refuses to pair them"
            )
        if k != ks[0]:
            raise ValueError(f"{d} would be evaluated with K={k}, {dirs[0]} with K={ks[0]}: give samples")


def _row(
    name: str, s: RunEvaluation, elbo: Estimate, base_log_p: Tensor | None, metrics: list[dict[str, float]],
    differing: list[str],
) -> ComparisonRow:  # fmt: skip
    """One run's row; the paired difference to the baseline's per-example values (None: it is
    the baseline); where its schedule ended (the last metrics row); its values of ``differing``."""
    diff = None if base_log_p is None else base_log_p - s.estimate.per_example  # -log p̂(run) - (-log p̂(base))
    last, t = (metrics[-1] if metrics else {}), s.run.config.train
    kl_weight, lr = last.get("kl_weight"), last.get("lr")
    return ComparisonRow(
        run=name,
        posterior=s.run.config.model.posterior,
        nll=s.estimate.nll,
        stderr=s.estimate.stderr,
        diff=None if diff is None else diff.mean().item(),
        diff_stderr=None if diff is None else diff.std().item() / math.sqrt(diff.numel()),
        better=None if diff is None else int((diff < 0).sum()),
        worse=None if diff is None else int((diff > 0).sum()),
        elbo=-elbo.nll,
        kl=elbo.diagnostics["kl"]["mean"],
        active_units=active_units(s.run.model, s.examples.images),
        latent_dim=s.run.model.latent_dim,
        parameters=sum(p.numel() for p in s.run.model.parameters()),
        epochs=metrics[-1]["epoch"] if metrics else 0,
        train_seconds=metrics[-1].get("seconds") if metrics else None,
        bits_per_dim=s.estimate.bits_per_dim,
        diagnostics=s.estimate.diagnostics,
        kl_weight=kl_weight,
        lr=lr,
        schedule=[] if kl_weight is None or lr is None else unfinished_schedule(t, kl_weight, lr),
        trained=s.trained.to_json() if s.trained else {},
        config={k: v for k, v in run_values(s.run.config).items() if k in differing},
    )


def plus_minus(value: float, err: float | None, latex: bool = False, missing: str = "n/a") -> str:
    """``value ± err`` for a markdown or (``latex``) a LaTeX table; ``missing`` when err is None."""
    if err is None:
        return f"${value:.2f}$ ({missing})" if latex else f"{value:.2f} ± {missing}"
    return f"${value:.2f} \\pm {err:.2f}$" if latex else f"{value:.2f} ± {err:.2f}"


def model_cells(
    elbo: float, kl: float, active_units: float, latent_dim: int, parameters: int, epochs: float,
    train_seconds: float | None, kl_weight: float | None = None,
) -> list[str]:  # fmt: skip
    """The columns of :data:`MODEL_HEADER`, for a run or (means over seeds) a group."""
    minutes = "—" if train_seconds is None else f"{train_seconds / 60:.1f}"
    active = f"{_short(active_units)}/{latent_dim}"
    weight = "—" if kl_weight is None else f"{kl_weight:.2f}"
    return [f"{elbo:.2f}", f"{kl:.2f}", active, f"{parameters:,}", _short(epochs), weight, minutes]


MODEL_HEADER = [
    "test ELBO", "KL", "active units", "parameters", "epochs", "KL weight (end)", "train min (to last eval)",
]  # fmt: skip


def _short(x: float) -> str:
    """A count, or a mean of counts to one decimal."""
    return str(int(x)) if float(x).is_integer() else f"{x:.1f}"


def config_cell(value: Any) -> str:
    """A config value as a table shows it (lists as ``[300, 300]``, booleans as YAML's; ``—``:
    a key the run does not read)."""
    if value is None:
        return "—"
    return json.dumps(value) if isinstance(value, (list, bool)) else str(value)


def _cells(row: ComparisonRow, differing: list[str], latex: bool = False) -> list[str]:
    def pm(value: float, err: float | None) -> str:
        return plus_minus(value, err, latex)

    diff = "—" if row.diff is None else pm(row.diff, row.diff_stderr)
    favour = "—" if row.better is None else f"{row.better} / {row.worse}"
    model = model_cells(
        row.elbo, row.kl, row.active_units, row.latent_dim, row.parameters, row.epochs, row.train_seconds,
        row.kl_weight,
    )  # fmt: skip
    config = [config_cell(row.config.get(k)) for k in differing]
    return [row.run, row.posterior, *config, pm(row.nll, row.stderr), diff, favour, *model]


def header(c: ComparisonHeader, first: list[str], rest: list[str]) -> list[str]:
    """A table's columns: ``first`` (name, posterior), one per differing config key, ``rest``."""
    return [*first, *c.differing, *rest]


RUN_COLUMNS = (["run", "posterior"], ["−log p̂ (nats)", "Δ vs baseline", "better / worse", *MODEL_HEADER])


def caption(c: ComparisonHeader, what: str) -> str:
    """The line above a table: what it holds, the estimator and the examples, the baseline."""
    return f"{what}: −log p̂(x) by {c.estimator} (K={c.samples}) on {c.subset}; baseline `{c.baseline}`"


def notes(c: ComparisonHeader, spread: list[str], warnings: list[str]) -> list[str]:
    """The footnote that makes a table stand on its own: the estimator and its settings, the
    examples and their seed; what each ± is (``spread``); which weights; what every compared run
    shares (``c.shared``); the tool's warnings (k̂, unfinished runs and schedules)."""
    options = ", ".join(f"{k}={v}" for k, v in c.settings.items())
    lines = [
        f"Estimator: {c.estimator} with K={c.samples}" + (f" ({options})" if options else "")
        + f", on {c.subset}; the subset and every example's draws are seeded by {c.seed}, so every run is "
        "scored on the same examples with the same draws.",
        *spread,
        f"Weights: each run's {CHECKPOINT_FILES[c.checkpoint]} ({WHICH[c.checkpoint]}; its epoch and step "
        "are in comparison.json). "
        "KL weight (end): the KL warm-up's weight at the last training step (1: warm-up over).",
    ]  # fmt: skip
    if c.shared:
        lines.append("Every run has " + ", ".join(f"{k}={config_cell(v)}" for k, v in c.shared.items()) + ".")
    return lines + [f"Warning: {w}" for w in warnings]


def _run_spread(c: Comparison) -> list[str]:
    return [
        f"−log p̂ ± its standard error over the {c.n} examples. Δ: the paired difference of −log p̂ to "
        f"`{c.baseline}` (negative: better) ± the standard error over the {c.n} examples of the "
        "per-example differences (conditional on the trained models); better / worse: examples each way."
    ]


def render_markdown(caption: str, header: list[str], rows: list[list[str]], notes: list[str] = ()) -> str:
    """A caption line, a markdown table and its notes (a list below it)."""
    lines = [caption, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines + ([""] + [f"- {n}" for n in notes] if notes else []))


def render_latex(
    header: list[str], rows: list[list[str]], text: tuple[int, ...] = (0, 1), caption: str = "",
    notes: list[str] = (), compact: bool = False,
) -> str:  # fmt: skip
    """A ``table`` with its ``caption`` and ``notes`` below the tabular (booktabs rules: needs
    ``\\usepackage{booktabs}``, said in the first line): the columns in ``text`` left-aligned,
    the others numbers, right-aligned, math-mode minus, ``{,}`` as thousands separator.
    ``compact``: a smaller font and tighter columns."""
    align = "".join("l" if i in text else "r" for i in range(len(header)))
    lines = [r"% flowvae compare: needs \usepackage{booktabs}", r"\begin{table}[tbp]", r"\centering"]
    lines += [r"\small", r"\setlength{\tabcolsep}{3pt}"] if compact else []
    lines += [r"\caption{" + latex_escape(caption) + "}"] if caption else []
    lines += [r"\begin{tabular}{" + align + "}", r"\toprule", " & ".join(map(latex_escape, header)) + r" \\"]
    lines.append(r"\midrule")
    for cells in rows:
        cells = [latex_escape(x) if i in text else _latex_number(x) for i, x in enumerate(cells)]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if notes:
        size = r"\scriptsize" if compact else r"\footnotesize"
        body = r" \\ ".join(latex_escape(n) for n in notes)
        lines.append(r"\par\smallskip\parbox{\linewidth}{" + size + " " + body + "}")
    return "\n".join([*lines, r"\end{table}"])


def _latex_number(cell: str) -> str:
    """A number cell: thousands separators as ``{,}``, a minus outside math as math-mode ``$-$``."""
    return re.sub(r"(?<![$\w])-(?=\d)", "$-$", latex_escape(cell.replace(",", "{,}")))


def markdown_table(c: Comparison, with_notes: bool = True) -> str:
    rows = [_cells(r, c.differing) for r in c.rows]
    remarks = notes(c, _run_spread(c), c.warnings) if with_notes else []
    return render_markdown(caption(c, "Runs"), header(c, *RUN_COLUMNS), rows, remarks)


LATEX = {
    "—": "---", "_": r"\_", "&": r"\&", "%": r"\%", "#": r"\#", "^": r"\^{}", "`": "", "−": "$-$",
    "Δ": r"$\Delta$", "p̂": r"$\hat p$", "k̂": r"$\hat k$", "±": r"$\pm$", ">": "$>$", "<": "$<$",
    "≥": r"$\geq$", "≤": r"$\leq$",
}  # fmt: skip


def latex_escape(text: str) -> str:
    """Plain table text (a header, a run's name, a note) as LaTeX; math (``$...$``) kept."""
    parts = re.split(r"(\$[^$]*\$)", text)  # math cells (plus_minus) pass through
    for i, part in enumerate(parts):
        if not (part.startswith("$") and part.endswith("$") and len(part) > 1):
            for plain, tex in LATEX.items():
                part = part.replace(plain, tex)
            parts[i] = part
    return "".join(parts)


def latex_table(c: Comparison, compact: bool = False) -> str:
    """The run table as a LaTeX ``table`` with its caption and notes (booktabs)."""
    rows = [_cells(r, c.differing, True) for r in c.rows]
    text = tuple(range(2 + len(c.differing)))
    remarks = notes(c, _run_spread(c), c.warnings)
    return render_latex(header(c, *RUN_COLUMNS), rows, text, caption(c, "Runs"), remarks, compact)


def write_csv(c: Comparison, path: str | Path) -> None:
    keys = [k for k in ComparisonRow.__dataclass_fields__ if k != "diagnostics"]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(keys)
        for row in c.rows:
            writer.writerow(["" if getattr(row, k) is None else getattr(row, k) for k in keys])


def plot_curves(run_dirs: list[str | Path], path: str | Path, labels: list[str] | None = None) -> None:
    """Valid ELBO against epoch and against wall time, one line per run (PNG or PDF by suffix),
    named by ``labels`` (default: the folders' names)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_epoch, by_time) = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for d, label in zip(run_dirs, labels or [Path(d).name for d in run_dirs], strict=True):
        rows = [r for r in read_metrics(d) if math.isfinite(r.get("valid_elbo", float("nan")))]
        if not rows:
            continue
        by_epoch.plot([r["epoch"] for r in rows], [r["valid_elbo"] for r in rows], label=label)
        by_time.plot([r["seconds"] / 60 for r in rows], [r["valid_elbo"] for r in rows], label=label)
    by_epoch.set_xlabel("epoch")
    by_time.set_xlabel("training time (minutes)")
    by_epoch.set_ylabel("valid ELBO (nats)")
    for ax in (by_epoch, by_time):
        ax.grid(alpha=0.3)
    by_time.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_comparison(
    c: Comparison, run_dirs: list[str | Path], out_dir: str | Path, compact: bool = False
) -> dict[str, Path]:
    """comparison.{md,tex,csv,json} and curves.{png,pdf} in ``out_dir`` (``compact``: the LaTeX
    table in a smaller font with tighter columns)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / f"comparison.{k}" for k in ("md", "tex", "csv", "json")}
    paths["md"].write_text(markdown_table(c) + "\n")
    paths["tex"].write_text(latex_table(c, compact) + "\n")
    write_csv(c, paths["csv"])
    paths["json"].write_text(json.dumps(c.to_json(), indent=1) + "\n")
    for suffix in ("png", "pdf"):
        paths[suffix] = out / f"curves.{suffix}"
        plot_curves(run_dirs, paths[suffix])
    return paths


__all__ = [
    "Comparison",
    "ComparisonHeader",
    "ComparisonRow",
    "MODEL_HEADER",
    "active_units",
    "compare_runs",
    "latex_escape",
    "latex_table",
    "markdown_table",
    "model_cells",
    "plot_curves",
    "plus_minus",
    "render_latex",
    "render_markdown",
    "shared_examples",
    "write_comparison",
]
