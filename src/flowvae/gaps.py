"""The inference-suboptimality report: where the gap between log p(x) and the ELBO comes from.

For every example of a seeded random subset, with the trained model held fixed (Cremer, Li &
Duvenaud 2018, Table 2):

- log p̂(x): AIS, IWAE with the amortized q as proposal, or per example the larger of the two
  (``max``; both are stochastic lower bounds, so the larger is the tighter one);
- L[q*_flow], L[q*_FFG]: the ELBOs of a flow posterior and of a factorised Gaussian fitted to
  that example alone (:mod:`flowvae.local`); the flow starts from q*_FFG;
- L[q]: the ELBO of the amortized posterior;

and the gaps, with q* the local optimum *of the same family as q* (q*_FFG when q is ``diag``,
q*_flow when q is a flow), as in the paper's table:

    approximation gap = log p̂(x) - L[q*]      amortization gap = L[q*] - L[q]
    inference gap     = log p̂(x) - L[q]       = approximation gap + amortization gap (exactly).

Both variants (q* = q*_FFG and q* = q*_flow) are kept per example and in the JSON. The report
checks log p̂(x) >= L[q*] >= L[q] (and L[q*_flow] >= L[q*_FFG]) up to estimator noise and says
when that fails: a loose log p̂, or an under-converged local optimisation, makes the split
meaningless.

References:
    Cremer, Li & Duvenaud, Inference suboptimality in variational autoencoders,
    arXiv 1801.03558.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .ais import ais_estimator
from .estimators import iwae
from .linear_gaussian import exact
from .local import LocalOptions, elbo_with_stderr, frozen_model, local_optimise
from .posteriors import POSTERIORS

LOG_P_ESTIMATORS = ("ais", "iwae", "max", "exact")  # exact: linear-Gaussian models only
SIGMAS = 3.0  # an ordering fails when violated by more than this many standard errors

DEFINITIONS = {
    "log_p": "log p̂(x): the likelihood estimate (AIS, IWAE, or per example their max)",
    "elbo_flow_star": "L[q*_flow]: ELBO of a flow posterior optimised for this example alone",
    "elbo_ffg_star": "L[q*_FFG]: ELBO of a factorised Gaussian optimised for this example alone",
    "elbo_q": "L[q]: ELBO of the amortized posterior (the encoder's q)",
    "approximation_gap": "log p̂(x) − L[q*], q* the local optimum of the same family as q",
    "amortization_gap": "L[q*] − L[q], q* the local optimum of the same family as q",
    "inference_gap": "log p̂(x) − L[q] = approximation gap + amortization gap",
}


@dataclass
class GapSettings:
    """Everything that determines a gap report besides the model and the data.

    Arguments:
        estimator: ``ais``, ``iwae`` or ``max`` (per example, the larger of the two); ``exact``
            for a linear-Gaussian model (a ground truth for tests).
        samples: K of the IWAE estimate.
        chunk: IWAE samples per chunk (bounds memory).
        chains, ais_steps, leapfrog, ais_init: the AIS estimate (see :func:`flowvae.ais.ais`).
        elbo_samples: draws of every ELBO (L[q], L[q*]); not the training k.
        local_flow: the family of q*_flow (a name in POSTERIORS) or ``none`` to skip it.
        flow_options: its size (``flow_steps``, ``flow_hidden``, ...; see
            :func:`flowvae.local.local_head`).
        local: the optimisation settings (lr, k, step cap, convergence check).
        batch_size: examples optimised together.
        seed: batch i runs after ``torch.manual_seed(seed + i)``.
    """

    estimator: str = "max"
    samples: int = 5000
    chunk: int = 500
    chains: int = 16
    ais_steps: int = 1000
    leapfrog: int = 10
    ais_init: str = "prior"
    elbo_samples: int = 1000
    local_flow: str = "realnvp-aux"
    flow_options: dict[str, Any] = field(default_factory=dict)
    local: LocalOptions = field(default_factory=LocalOptions)
    batch_size: int = 100
    seed: int = 1234

    def __post_init__(self) -> None:
        if self.estimator not in LOG_P_ESTIMATORS:
            available = ", ".join(LOG_P_ESTIMATORS)
            raise ValueError(f"unknown estimator {self.estimator!r}; available: {available}")
        if self.local_flow != "none" and self.local_flow not in POSTERIORS:
            available = ", ".join([*sorted(POSTERIORS), "none"])
            raise ValueError(f"unknown local flow {self.local_flow!r}; available: {available}")


@dataclass
class GapReport:
    """Per-example columns (each a float64 tensor (n,)) and their summary, for one model."""

    name: str  # what the column of the table is called (e.g. the run directory's name)
    posterior: str  # the amortized q's family
    q_star: str  # "ffg" or "flow": the family of the q* in the primary gaps
    settings: GapSettings
    columns: dict[str, Tensor]
    warnings: list[str]
    violations: dict[str, int]  # per check: examples violating it by more than SIGMAS MC errors
    seconds: float
    subset: str = ""

    @property
    def n(self) -> int:
        return int(self.columns["log_p"].numel())

    def summary(self) -> dict[str, dict[str, float]]:
        """Mean and standard error (over examples) of every column but the index."""
        out = {}
        for name, values in self.columns.items():
            if name == "index":
                continue
            v = values.double()
            se = v.std().item() / math.sqrt(v.numel()) if v.numel() > 1 else float("nan")
            out[name] = {"mean": v.mean().item(), "stderr": se}
        return out

    def to_json(self) -> dict[str, Any]:
        settings = asdict(self.settings)
        return {
            "name": self.name, "posterior": self.posterior, "q_star": self.q_star, "n": self.n,
            "subset": self.subset or None, "summary": self.summary(), "warnings": self.warnings,
            "violations": self.violations, "definitions": DEFINITIONS, "settings": settings,
            "seconds": self.seconds,
        }  # fmt: skip


# ----------------------------------------------------------------------------- estimates


def _log_p(model: nn.Module, x: Tensor, s: GapSettings) -> dict[str, Tensor]:
    """The log p̂(x) columns for a batch: ``log_p`` and the estimators it came from."""
    out = {}
    if s.estimator in ("iwae", "max"):
        out["log_p_iwae"] = iwae(model, x, samples=s.samples, chunk=s.chunk).double()
    if s.estimator in ("ais", "max"):
        out["log_p_ais"] = ais_estimator(
            model, x, chains=s.chains, steps=s.ais_steps, leapfrog=s.leapfrog, init=s.ais_init
        ).double()
    if s.estimator == "exact":
        out["log_p"] = exact(model, x).double()
    elif s.estimator == "max":
        out["log_p"] = torch.maximum(out["log_p_iwae"], out["log_p_ais"])
    else:
        out["log_p"] = out[f"log_p_{s.estimator}"]
    return out


def _batch_columns(model: nn.Module, x: Tensor, s: GapSettings) -> dict[str, Tensor]:
    with torch.no_grad(), frozen_model(model):
        cols = _log_p(model, x, s)
        cols["elbo_q"], cols["elbo_q_se"] = elbo_with_stderr(model, x, model.encode(x), s.elbo_samples)
    options = LocalOptions(**{**asdict(s.local), "eval_samples": s.elbo_samples})
    ffg = local_optimise(model, x, "diag", options=options)
    cols.update(elbo_ffg_star=ffg.elbo, elbo_ffg_star_se=ffg.stderr, steps_ffg=ffg.steps.double())
    cols["converged_ffg"] = ffg.converged.double()
    if s.local_flow != "none":
        flow = local_optimise(
            model, x, s.local_flow, init=(ffg.mean, ffg.log_std), options=options, **s.flow_options
        )
        cols.update(elbo_flow_star=flow.elbo, elbo_flow_star_se=flow.stderr, steps_flow=flow.steps.double())
        cols["converged_flow"] = flow.converged.double()
    return {k: v.detach().double().cpu() for k, v in cols.items()}


def add_gaps(columns: dict[str, Tensor], q_star: str) -> None:
    """Add the gap columns: both variants, and the primary ones for ``q_star`` (ffg or flow)."""
    log_p, elbo_q = columns["log_p"], columns["elbo_q"]
    for family in ("ffg", "flow"):
        if f"elbo_{family}_star" in columns:
            star = columns[f"elbo_{family}_star"]
            columns[f"approximation_gap_{family}"] = log_p - star
            columns[f"amortization_gap_{family}"] = star - elbo_q
    columns["approximation_gap"] = columns[f"approximation_gap_{q_star}"]
    columns["amortization_gap"] = columns[f"amortization_gap_{q_star}"]
    columns["inference_gap"] = log_p - elbo_q


# ----------------------------------------------------------------------------- sanity checks


def _check(label: str, upper: Tensor, lower: Tensor, mc_se: Tensor, hint: str) -> tuple[str | None, int]:
    """Whether ``upper >= lower`` on average, up to SIGMAS standard errors; per-example count.

    The mean's error is the larger of the spread over examples and the Monte Carlo error of the
    ELBO estimates (which alone is available for a single example).
    """
    d = upper - lower
    n = d.numel()
    mean = d.mean().item()
    se_examples = d.std().item() / math.sqrt(n) if n > 1 else 0.0
    se_mc = mc_se.pow(2).sum().sqrt().item() / n
    se = max(se_examples, se_mc)
    count = int((d < -SIGMAS * mc_se).sum())
    if mean < -SIGMAS * se:
        return f"{label} fails on average: difference {mean:.3f} ± {se:.3f} nats; {hint}", count
    return None, count


def check_ordering(columns: dict[str, Tensor], q_star: str) -> tuple[list[str], dict[str, int]]:
    """The orderings the report relies on; warnings for those that fail beyond noise."""
    c = columns
    loose = "log p̂(x) is too loose: raise --samples, --ais-steps or --chains, or use --estimator max"
    checks = [
        ("log p̂(x) ≥ L[q*_FFG]", c["log_p"], c["elbo_ffg_star"], c["elbo_ffg_star_se"], loose),
    ]
    if "elbo_flow_star" in c:
        flow_se = c["elbo_flow_star_se"]
        checks.append(("log p̂(x) ≥ L[q*_flow]", c["log_p"], c["elbo_flow_star"], flow_se, loose))
        checks.append((
            "L[q*_flow] ≥ L[q*_FFG]", c["elbo_flow_star"], c["elbo_ffg_star"],
            torch.hypot(c["elbo_flow_star_se"], c["elbo_ffg_star_se"]),
            "the local flow fell below the Gaussian it started from: lower --lr or raise --steps-cap",
        ))  # fmt: skip
    star, star_se = c[f"elbo_{q_star}_star"], c[f"elbo_{q_star}_star_se"]
    checks.append((
        f"L[q*_{'FFG' if q_star == 'ffg' else 'flow'}] ≥ L[q]", star, c["elbo_q"],
        torch.hypot(star_se, c["elbo_q_se"]),
        "local optimisation did not reach the amortized bound: raise --steps-cap or tune --lr",
    ))  # fmt: skip
    checks.append(("log p̂(x) ≥ L[q]", c["log_p"], c["elbo_q"], c["elbo_q_se"], loose))
    warnings, violations = [], {}
    for label, upper, lower, se, hint in checks:
        warning, count = _check(label, upper, lower, se, hint)
        violations[label] = count
        if warning:
            warnings.append(warning)
    for family, name in (("ffg", "FFG"), ("flow", "flow")):
        if f"converged_{family}" in c:
            capped = int((c[f"converged_{family}"] == 0).sum())
            if capped:
                warnings.append(
                    f"{capped} of {c['log_p'].numel()} examples hit the step cap before their local "
                    f"{name} optimisation converged (raise --steps-cap)"
                )
    return warnings, violations


# ----------------------------------------------------------------------------- the report


def compute_gaps(
    model: nn.Module,
    x: Tensor,
    posterior: str,
    settings: GapSettings | None = None,
    name: str = "model",
    indices: Tensor | None = None,
    subset: str = "",
) -> GapReport:
    """The gap report of ``model`` on the examples ``x`` (n, C, H, W), ``settings.batch_size``
    at a time.

    Arguments:
        model: the trained VAE (left unchanged).
        x: the examples (already the chosen subset).
        posterior: the name of the amortized q's family (``cfg.model.posterior``); ``diag``
            selects q* = q*_FFG for the primary gaps, anything else q* = q*_flow.
        settings: estimators and local optimisation (:class:`GapSettings`).
        name: the report's column title.
        indices: the examples' indices in their split (the CSV's ``index`` column).
        subset: a description of the subset, for the report.
    """
    s = settings or GapSettings()
    start = time.perf_counter()
    device = next(model.parameters()).device
    parts = []
    for i, batch in enumerate(x.split(s.batch_size)):
        torch.manual_seed(s.seed + i)
        parts.append(_batch_columns(model, batch.to(device), s))
    columns = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    q_star = "ffg" if posterior == "diag" or s.local_flow == "none" else "flow"
    add_gaps(columns, q_star)
    warnings, violations = check_ordering(columns, q_star)
    if posterior != "diag" and s.local_flow == "none":
        warnings.insert(0, f"q is {posterior} but no local flow was fitted: the gaps use q* = q*_FFG")
    index = indices if indices is not None else torch.arange(x.shape[0])
    columns = {"index": index.double(), **columns}
    return GapReport(
        name=name, posterior=posterior, q_star=q_star, settings=s, columns=columns,
        warnings=warnings, violations=violations, seconds=time.perf_counter() - start, subset=subset,
    )  # fmt: skip


def run_gaps(
    run_dir: str | Path,
    split: str = "test",
    n: int = 100,
    settings: GapSettings | None = None,
    subset_seed: int = 1234,
    checkpoint: str = "best",
    device: str = "cpu",
) -> GapReport:
    """:func:`compute_gaps` for a trained run on a fixed, seeded random subset of ``n`` examples
    of ``split`` (``data.subset_indices``), never the first n. The training split of a
    dynamically binarized dataset holds intensities: the subset is binarized once, seeded."""
    from .checkpoint import load_run
    from .data import evaluation_images, load_data

    cfg, model, _ = load_run(run_dir, checkpoint, device)
    data = load_data(cfg.data)
    x, indices, subset = evaluation_images(data, split, n, subset_seed)
    return compute_gaps(
        model, x, cfg.model.posterior, settings, name=Path(run_dir).name, indices=indices, subset=subset
    )


# ----------------------------------------------------------------------------- output

_ROWS = [
    ("log_p", "log p̂(x)"),
    ("elbo_flow_star", "L[q*_flow]"),
    ("elbo_ffg_star", "L[q*_FFG]"),
    ("elbo_q", "L[q]"),
    ("approximation_gap", "Approximation gap"),
    ("amortization_gap", "Amortization gap"),
    ("inference_gap", "Inference gap"),
]


def _header(report: GapReport) -> str:
    family = "FFG" if report.posterior == "diag" else f"flow ({report.posterior})"
    return f"q = {family}: {report.name}"


def markdown_table(reports: list[GapReport]) -> str:
    """The paper's Table 2 for one or more models (a column each), with notes and warnings."""
    lines = [
        "| | " + " | ".join(_header(r) for r in reports) + " |",
        "|---|" + "---:|" * len(reports),
    ]
    for key, label in _ROWS:
        cells = []
        for r in reports:
            summary = r.summary()
            cells.append(f"{summary[key]['mean']:.2f}" if key in summary else "–")
        if key == "log_p":
            label += f" ({reports[0].settings.estimator})"
        elif key == "elbo_flow_star":
            label += f" ({reports[0].settings.local_flow})"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    notes = [
        "",
        "Nats per example, averaged over examples. q* is the local optimum of the same family "
        "as q: q*_FFG for q = FFG, q*_flow for a flow q (Cremer et al. 2018, Table 2). "
        "Approximation gap = log p̂(x) − L[q*]; amortization gap = L[q*] − L[q]; "
        "their sum is the inference gap log p̂(x) − L[q].",
    ]
    for r in reports:
        what = f"{r.name}: n={r.n}" + (f" ({r.subset})" if r.subset else "")
        notes.append(f"- {what}")
        notes += [f"  - WARNING: {w}" for w in r.warnings]
    return "\n".join(lines + notes)


def plot_gaps(reports: list[GapReport], path: str | Path) -> None:
    """A stacked bar per model: L[q], then the amortization and approximation gaps up to log p̂."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    means = [r.summary() for r in reports]
    elbo = [m["elbo_q"]["mean"] for m in means]
    amort = [m["amortization_gap"]["mean"] for m in means]
    approx = [m["approximation_gap"]["mean"] for m in means]
    top = [e + a + b for e, a, b in zip(elbo, amort, approx, strict=True)]
    span = max(max(top) - min(elbo), 1e-3)
    floor = min(elbo) - 2 * span  # the ELBO bar starts here: the gaps are small next to |ELBO|
    xs = list(range(len(reports)))
    fig, ax = plt.subplots(figsize=(3.4 + 1.6 * len(reports), 4.0))
    ax.bar(xs, [e - floor for e in elbo], bottom=floor, color="#9ecae1", label="L[q]")
    ax.bar(xs, amort, bottom=elbo, color="#fd8d3c", label="amortization gap")
    ax.bar(xs, approx, bottom=[e + a for e, a in zip(elbo, amort, strict=True)], color="#74c476",
           label="approximation gap")  # fmt: skip
    for x, t in zip(xs, top, strict=True):
        ax.annotate(f"log p̂ {t:.2f}", (x, t), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(xs, [_header(r).split(": ")[0] + "\n" + r.name for r in reports], fontsize=8)
    ax.set_ylim(floor, max(top) + 0.3 * span)
    ax.set_ylabel("nats per example")
    ax.set_title("Inference suboptimality")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_csv(report: GapReport, path: str | Path) -> None:
    names = list(report.columns)
    rows = torch.stack([report.columns[k] for k in names], 1).tolist()
    integral = {"index", "steps_ffg", "steps_flow", "converged_ffg", "converged_flow"}
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(names)
        for row in rows:
            cells = zip(names, row, strict=True)
            writer.writerow([int(v) if k in integral else f"{v:.6f}" for k, v in cells])


def write_report(report: GapReport, out_dir: str | Path) -> dict[str, Path]:
    """``gaps.csv`` (per example), ``gaps.json``, ``gaps.md`` and ``gaps.png`` in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / f"gaps.{k}" for k in ("csv", "json", "md", "png")}
    write_csv(report, paths["csv"])
    paths["json"].write_text(json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n")
    paths["md"].write_text(markdown_table([report]) + "\n")
    plot_gaps([report], paths["png"])
    return paths


__all__ = [
    "DEFINITIONS", "GapReport", "GapSettings", "LOG_P_ESTIMATORS", "add_gaps", "check_ordering",
    "compute_gaps", "markdown_table", "plot_gaps", "run_gaps", "write_csv", "write_report",
]  # fmt: skip
