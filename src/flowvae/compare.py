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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .checkpoint import Run, load_run
from .data import EvaluationSet, evaluation_images, load_data
from .estimators import Estimate, estimator_record
from .evaluation import RunEvaluation, evaluate_run
from .noise import ExampleStreams, example_streams

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


@dataclass
class ComparisonHeader:
    """What every comparison states first: the estimator and K, the examples, the baseline."""

    estimator: str
    samples: int
    split: str
    n: int
    subset: str
    baseline: str


@dataclass
class Comparison(ComparisonHeader):
    rows: list[ComparisonRow]
    warnings: list[str]
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
    rows, warnings = [], []
    for d, s in zip(dirs, scored, strict=True):
        elbo = evaluate_run(
            d, "elbo", elbo_samples, split=split, limit=limit, seed=seed, checkpoint=checkpoint, cache=cache,
            examples=s.examples, run=s.run,
        ).estimate  # fmt: skip
        rows.append(_row(name[d], s, elbo, None if d == base else base_log_p, read_metrics(d)))
        warnings += [f"{name[d]}: {w}" for w in s.estimate.warnings]
    per_example = {name[d]: s.estimate.per_example for d, s in zip(dirs, scored, strict=True)}
    return Comparison(
        estimator, first.estimate.samples, split, first.estimate.n, first.examples.description, name[base],
        rows, warnings, per_example,
    )  # fmt: skip


def _check_pairable(
    dirs: list[Path], runs: list[Run], examples: list[EvaluationSet], estimator: str, samples: int | None,
    split: str,
) -> None:  # fmt: skip
    """Refuse, before anything is evaluated, runs scored on other images or with another K."""
    record = estimator_record(estimator)
    ks = [samples or (r.config.eval.samples if record.run_samples else record.default_samples) for r in runs]
    for d, ex, k in zip(dirs, examples, ks, strict=True):
        if ex.digest != examples[0].digest:
            raise ValueError(
                f"{d} scores other {split} images than {dirs[0]} (other data files, split or binarization); "
                "compare refuses to pair them"
            )
        if k != ks[0]:
            raise ValueError(f"{d} would be evaluated with K={k}, {dirs[0]} with K={ks[0]}: give samples")


def _row(
    name: str, s: RunEvaluation, elbo: Estimate, base_log_p: Tensor | None, metrics: list[dict[str, float]]
) -> ComparisonRow:
    """One run's row; the paired difference to the baseline's per-example values (None: it is
    the baseline)."""
    diff = None if base_log_p is None else base_log_p - s.estimate.per_example  # -log p̂(run) - (-log p̂(base))
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
    )


def plus_minus(value: float, err: float | None, latex: bool = False, missing: str = "n/a") -> str:
    """``value ± err`` for a markdown or (``latex``) a LaTeX table; ``missing`` when err is None."""
    if err is None:
        return f"${value:.2f}$ ({missing})" if latex else f"{value:.2f} ± {missing}"
    return f"${value:.2f} \\pm {err:.2f}$" if latex else f"{value:.2f} ± {err:.2f}"


def model_cells(
    elbo: float, kl: float, active_units: float, latent_dim: int, parameters: int, epochs: float,
    train_seconds: float | None,
) -> list[str]:
    """The columns of :data:`MODEL_HEADER`, for a run or (means over seeds) a group."""
    minutes = "—" if train_seconds is None else f"{train_seconds / 60:.1f}"
    active = f"{_short(active_units)}/{latent_dim}"
    return [f"{elbo:.2f}", f"{kl:.2f}", active, f"{parameters:,}", _short(epochs), minutes]


MODEL_HEADER = ["test ELBO", "KL", "active units", "parameters", "epochs", "train min (to last eval)"]


def _short(x: float) -> str:
    """A count, or a mean of counts to one decimal."""
    return str(int(x)) if float(x).is_integer() else f"{x:.1f}"


def _cells(row: ComparisonRow, latex: bool = False) -> list[str]:
    def pm(value: float, err: float | None) -> str:
        return plus_minus(value, err, latex)

    diff = "—" if row.diff is None else pm(row.diff, row.diff_stderr)
    favour = "—" if row.better is None else f"{row.better} / {row.worse}"
    model = model_cells(
        row.elbo, row.kl, row.active_units, row.latent_dim, row.parameters, row.epochs, row.train_seconds
    )
    return [row.run, row.posterior, pm(row.nll, row.stderr), diff, favour, *model]


HEADER = ["run", "posterior", "−log p̂ (nats)", "Δ vs baseline", "better / worse", *MODEL_HEADER]


def render_markdown(caption: str, header: list[str], rows: list[list[str]]) -> str:
    """A caption line and a markdown table."""
    lines = [caption, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in rows])


def render_latex(header: list[str], rows: list[list[str]], text: tuple[int, ...] = (0, 1)) -> str:
    """A booktabs table (needs ``\\usepackage{booktabs}``): the columns in ``text`` left-aligned,
    the others numbers, right-aligned, with ``{,}`` as thousands separator."""
    align = "".join("l" if i in text else "r" for i in range(len(header)))
    lines = [r"\begin{tabular}{" + align + "}", r"\toprule", " & ".join(map(latex_escape, header)) + r" \\"]
    lines.append(r"\midrule")
    for cells in rows:
        cells = [x if i in text else x.replace(",", "{,}") for i, x in enumerate(cells)]
        lines.append(" & ".join(map(latex_escape, cells)) + r" \\")
    return "\n".join([*lines, r"\bottomrule", r"\end{tabular}"])


def markdown_table(c: Comparison) -> str:
    caption = (
        f"{c.estimator} (K={c.samples}) on {c.subset}; Δ: paired difference to `{c.baseline}` "
        "(negative: better) ± paired standard error; better / worse: examples each way"
    )
    return render_markdown(caption, HEADER, [_cells(r) for r in c.rows])


LATEX = {"—": "---", "_": r"\_", "&": r"\&", "−": "$-$", "Δ": r"$\Delta$", "p̂": r"$\hat p$", "±": r"$\pm$"}


def latex_escape(text: str) -> str:
    """Plain table text (a header, a run's name) as LaTeX."""
    for plain, tex in LATEX.items():
        text = text.replace(plain, tex)
    return text


def latex_table(c: Comparison) -> str:
    """A booktabs table (needs ``\\usepackage{booktabs}``)."""
    return render_latex(HEADER, [_cells(r, True) for r in c.rows])


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


def write_comparison(c: Comparison, run_dirs: list[str | Path], out_dir: str | Path) -> dict[str, Path]:
    """comparison.{md,tex,csv,json} and curves.{png,pdf} in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / f"comparison.{k}" for k in ("md", "tex", "csv", "json")}
    paths["md"].write_text(markdown_table(c) + "\n")
    paths["tex"].write_text(latex_table(c) + "\n")
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
