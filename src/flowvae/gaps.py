"""The inference-suboptimality report: where the gap between log p(x) and the ELBO comes from.

For every example of a seeded random subset, with the trained model held fixed (Cremer, Li &
Duvenaud 2018, Table 2):

- log p̂(x): one estimator, declared up front (AIS by default, with its settings recorded; IWAE
  with the amortized q as proposal; ``exact`` for a linear-Gaussian model). The other stochastic
  estimator is run too, and the paired difference to it is reported as a convergence check.
  (A per-example maximum of the two is not offered: it is biased upward, above log p(x).)
- L[q*_flow], L[q*_FFG]: the ELBOs of a flow posterior and of a factorised Gaussian fitted to
  that example alone (:mod:`flowvae.local`); the flow starts from q*_FFG. By default the local
  flow is q's own family and size (the paper's approximation gap is w.r.t. q's family); a
  richer one is an option, and the report names both;
- L[q]: the ELBO of the amortized posterior;

and the gaps, with q* the local optimum *of the same family as q* (q*_FFG when q is ``diag``,
q*_flow when q is a flow), as in the paper's table:

    approximation gap = log p̂(x) - L[q*]      amortization gap = L[q*] - L[q]
    inference gap     = log p̂(x) - L[q]       = approximation gap + amortization gap (exactly).

Both variants (q* = q*_FFG and q* = q*_flow) are kept per example and in the JSON. The report
checks log p̂(x) >= L[q*] >= L[q] (and L[q*_flow] >= L[q*_FFG]) up to estimator noise and says
when that fails: a loose log p̂, or an under-converged local optimisation, makes the split
meaningless. An example with a non-finite value, or one far outside the others (a diverged
local optimisation), is named in the warnings and the JSON (``flagged``) and makes the report
``ok`` false, unless ``drop_flagged`` removes such examples (the report says how many).

References:
    Cremer, Li & Duvenaud, Inference suboptimality in variational autoencoders,
    arXiv 1801.03558.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .checkpoint import TrainedTo
from .config import EVAL_SEED, FLOW_SIZE_KEYS, ConfigError, EvalConfig
from .estimators import ESTIMATORS, IWAE_SAMPLES, resolve_estimator
from .files import replacing
from .local import LocalOptions, elbo_with_stderr, frozen_model, local_optimise
from .noise import ExampleStreams, example_streams
from .posteriors import POSTERIORS, posterior_record

# every registered estimator but the ELBO (which is L[q] itself); exact: linear-Gaussian models only
LOG_P_ESTIMATORS = tuple(name for name in ESTIMATORS if name != "elbo")
CHECK_AGAINST = {"ais": "iwae", "iwae": "ais"}  # the paired convergence check of each estimate
SIGMAS = 3.0  # an ordering fails when violated by more than this many standard errors
# an example is flagged when a value lies this many robust spreads (1.4826 MAD, at least
# OUTLIER_FLOOR nats) from the median of its column: far beyond any Gaussian tail
OUTLIER_MADS = 20.0
OUTLIER_FLOOR = 0.5
SAME = "same"  # local_flow: q's own family and size
# the streams of each local optimisation (its steps; the next purpose: its final estimate), apart
# from the estimates' (purpose 0) and from each other's
LOCAL_PURPOSES = {"ffg": 1, "flow": 3}

DEFINITIONS = {
    "log_p": "log p̂(x): the likelihood estimate (settings.estimator)",
    "log_p_check": "log p̂(x) − the other estimator's value, per example: a convergence check",
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
        estimator: the log p̂(x) estimate, a name in :data:`~flowvae.estimators.ESTIMATORS`
            (``ais``, ``iwae``; ``exact`` for a linear-Gaussian model, a ground truth).
        check: also run the other of ais/iwae (:data:`CHECK_AGAINST`) and report the paired
            difference.
        samples: per estimator name, its ``samples`` (K for iwae, chains for ais); a name not
            given takes the run's (``eval.samples`` for iwae, :func:`run_gaps`), else the
            estimator's default (:func:`~flowvae.estimators.resolve_estimator`).
        options: per estimator name, its options (fields of its options dataclass, e.g.
            ``{"ais": {"steps": 200}}``); unset fields as ``samples``.
        elbo_samples: draws of every ELBO (L[q], L[q*]); not the training k.
        local_flow: the family of q*_flow: ``same`` (q's own family and size; none for a
            ``diag`` q), a name in POSTERIORS, or ``none`` to skip it.
        flow_options: its size (``flow_steps``, ``flow_hidden``, ...; see
            :func:`flowvae.local.local_head`), over q's own with ``same``.
        local: the optimisation settings (lr, k, step cap, convergence check).
        batch_size: examples optimised together.
        seed: every draw is the example's own, from its streams keyed by ``seed`` and its
            index: the log p̂(x) and L[q] estimates the numbers ``flowvae eval`` gives those
            examples (purpose 0), the local optimisations from streams of their own
            (:data:`LOCAL_PURPOSES`), so no two seeds or batches share noise.
        drop_flagged: leave out flagged examples (non-finite or far outliers) instead of
            failing.
    """

    estimator: str = "ais"
    check: bool = True
    samples: dict[str, int] = field(default_factory=dict)
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    elbo_samples: int = LocalOptions.eval_samples
    local_flow: str = SAME
    flow_options: dict[str, Any] = field(default_factory=dict)
    local: LocalOptions = field(default_factory=LocalOptions)
    batch_size: int = 100
    seed: int = EVAL_SEED
    drop_flagged: bool = False

    def __post_init__(self) -> None:
        if self.estimator not in LOG_P_ESTIMATORS:
            available = ", ".join(LOG_P_ESTIMATORS)
            raise ValueError(f"unknown estimator {self.estimator!r}; available: {available}")
        for name in {*self.samples, *self.options} - set(LOG_P_ESTIMATORS):
            available = ", ".join(LOG_P_ESTIMATORS)
            raise ValueError(f"settings for unknown estimator {name!r}; available: {available}")
        for name, options in self.options.items():
            ESTIMATORS[name].settings(**options)  # a bad option fails here, in one line
        if self.local_flow not in ("none", SAME) and self.local_flow not in POSTERIORS:
            available = ", ".join([*sorted(POSTERIORS), SAME, "none"])
            raise ConfigError(f"unknown local flow {self.local_flow!r}; available: {available}")
        if "iwae" in self.estimates() and self.samples.get("iwae") == 1:
            raise ConfigError(
                "iwae with K=1 is the ELBO (one importance sample), not a log p(x) estimate above it: "
                f"its gaps are noise around 0; use K >= 2 (--samples; default {IWAE_SAMPLES})"
            )

    def estimates(self) -> list[str]:
        """The estimators a report runs: the declared one, and its check partner."""
        partner = CHECK_AGAINST.get(self.estimator) if self.check else None
        return [self.estimator, *([partner] if partner else [])]

    def request(self, name: str) -> tuple[int, dict[str, Any]]:
        """``(samples, full settings)`` of estimator ``name`` (:func:`resolve_estimator`)."""
        return resolve_estimator(name, self.samples.get(name), self.options.get(name))

    def resolved(self, eval_config: EvalConfig) -> GapSettings:
        """These settings with each estimate's samples and options resolved against a run's
        ``eval`` config, as ``flowvae eval`` resolves them: the same log p̂ for the same examples."""
        requests = {name: resolve_estimator(name, self.samples.get(name), self.options.get(name), eval_config)
                    for name in self.estimates()}  # fmt: skip
        samples = {name: k for name, (k, _) in requests.items()}
        options = {name: settings for name, (_, settings) in requests.items()}
        return dataclasses.replace(self, samples=samples, options=options)


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
    q_star_family: str = "diag"  # the local flow's family (or diag when q* = q*_FFG)
    q_star_options: dict[str, Any] = field(default_factory=dict)  # and its size
    flagged: list[dict[str, Any]] = field(default_factory=list)  # examples flagged (see module)
    dropped: int = 0  # flagged examples left out (drop_flagged)
    local_counts: dict[str, dict[str, int]] = field(default_factory=dict)  # capped / skipped
    trained: TrainedTo | None = None  # the weights scored: which file, epoch and step; run unfinished?

    @property
    def n(self) -> int:
        return int(self.columns["log_p"].numel())

    @property
    def meaningful(self) -> bool:
        """Whether log p̂(x) is above the ELBOs it is compared to, on average (the inference and
        approximation gaps are not negative): else the gaps say only that log p̂ is too loose."""
        summary = self.summary()
        return all(summary[k]["mean"] >= 0 for k in ("inference_gap", "approximation_gap") if k in summary)

    @property
    def ok(self) -> bool:
        """False while flagged examples remain in the report."""
        return not self.flagged or self.dropped > 0

    def log_p_check(self) -> dict[str, Any] | None:
        """The paired difference log p̂ − the other estimator: mean, standard error, and which."""
        if "log_p_check" not in self.columns:
            return None
        d = self.columns["log_p_check"]
        se = d.std().item() / math.sqrt(d.numel()) if d.numel() > 1 else float("nan")
        return {"against": self.settings.estimates()[1], "mean": d.mean().item(), "stderr": se}

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

    def estimator_settings(self) -> dict[str, Any]:
        """The log p̂(x) estimate as run: its name, samples and every option."""
        samples, options = self.settings.request(self.settings.estimator)
        return {"estimator": self.settings.estimator, "samples": samples, **options}

    def to_json(self) -> dict[str, Any]:
        settings = asdict(self.settings)
        return {
            "name": self.name, "posterior": self.posterior, "q_star": self.q_star,
            "meaningful": self.meaningful, "q_star_family": self.q_star_family,
            "q_star_options": self.q_star_options, "n": self.n,
            "subset": self.subset or None, "ok": self.ok, "log_p_estimator": self.estimator_settings(),
            "log_p_check": self.log_p_check(), "summary": self.summary(), "warnings": self.warnings,
            "flagged": self.flagged, "dropped": self.dropped, "local": self.local_counts,
            "violations": self.violations, "definitions": DEFINITIONS, "settings": settings,
            "seconds": self.seconds, "trained": self.trained.to_json() if self.trained else None,
        }  # fmt: skip


# ----------------------------------------------------------------------------- estimates


def _log_p(model: nn.Module, x: Tensor, s: GapSettings) -> dict[str, Tensor]:
    """The log p̂(x) columns for a batch, every one through the estimator registry: ``log_p``,
    ``log_p_NAME`` of each estimator run, and the paired check."""
    out = {}
    for name in s.estimates():
        samples, options = s.request(name)
        out[f"log_p_{name}"] = ESTIMATORS[name].estimate(model, x, samples, **options)[0].double()
    names = s.estimates()
    out["log_p"] = out[f"log_p_{names[0]}"]
    if len(names) == 2:
        out["log_p_check"] = out["log_p"] - out[f"log_p_{names[1]}"]
    return out


def _batch_columns(
    model: nn.Module, x: Tensor, index: Tensor, s: GapSettings, flow: str, flow_options: dict[str, Any]
) -> dict[str, Tensor]:
    with torch.no_grad(), frozen_model(model), example_streams(ExampleStreams.seeded(s.seed, index.tolist())):
        cols = _log_p(model, x, s)
        cols["elbo_q"], cols["elbo_q_se"] = elbo_with_stderr(model, x, model.encode(x), s.elbo_samples)
    options = LocalOptions(**{**asdict(s.local), "eval_samples": s.elbo_samples})
    draws = {"seed": s.seed, "indices": index.tolist()}
    ffg = local_optimise(model, x, "diag", options=options, purpose=LOCAL_PURPOSES["ffg"], **draws)
    cols.update(elbo_ffg_star=ffg.elbo, elbo_ffg_star_se=ffg.stderr, steps_ffg=ffg.steps.double())
    cols["converged_ffg"], cols["skipped_ffg"] = ffg.converged.double(), ffg.skipped.double()
    if flow != "none":
        q_flow = local_optimise(
            model, x, flow, init=(ffg.mean, ffg.log_std), options=options, purpose=LOCAL_PURPOSES["flow"],
            **draws, **flow_options,
        )  # fmt: skip
        cols.update(elbo_flow_star=q_flow.elbo, elbo_flow_star_se=q_flow.stderr)
        cols["steps_flow"], cols["converged_flow"] = q_flow.steps.double(), q_flow.converged.double()
        cols["skipped_flow"] = q_flow.skipped.double()
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


_FLAG_COLUMNS = (
    "log_p", "elbo_q", "elbo_ffg_star", "elbo_flow_star", "log_p_check",
    "approximation_gap", "amortization_gap", "approximation_gap_flow", "approximation_gap_ffg",
)  # fmt: skip


def flag_examples(columns: dict[str, Tensor], index: Tensor) -> list[dict[str, Any]]:
    """Examples whose values cannot be averaged honestly: non-finite anywhere, or a value of a
    main column (estimates and gaps) more than OUTLIER_MADS robust spreads from its median.

    Returns one entry per flagged example: ``{"index", "column", "value", "reason"}`` (the first
    offending column), in index order.
    """
    bad: dict[int, dict[str, Any]] = {}
    for name, values in columns.items():
        for i in torch.nonzero(~torch.isfinite(values)).flatten().tolist():
            bad.setdefault(i, {"column": name, "value": values[i].item(), "reason": "not finite"})
    for name in _FLAG_COLUMNS:
        if name not in columns:
            continue
        v = columns[name]
        finite = v[torch.isfinite(v)]
        if finite.numel() < 3:
            continue
        median = finite.median()
        spread = max(1.4826 * (finite - median).abs().median().item(), OUTLIER_FLOOR)
        far = torch.isfinite(v) & ((v - median).abs() > OUTLIER_MADS * spread)
        for i in torch.nonzero(far).flatten().tolist():
            reason = f"{(v[i] - median).item():+.3g} nats from the median ({OUTLIER_MADS:g} spreads = "
            reason += f"{OUTLIER_MADS * spread:.3g})"
            bad.setdefault(i, {"column": name, "value": v[i].item(), "reason": reason})
    return [{"index": int(index[i].item()), **bad[i]} for i in sorted(bad)]


def check_ordering(columns: dict[str, Tensor], q_star: str) -> tuple[list[str], dict[str, int]]:
    """The orderings the report relies on; warnings for those that fail beyond noise."""
    c = columns
    loose = "log p̂(x) is too loose: raise its samples (K, chains) or AIS steps"
    checks = [
        ("log p̂(x) ≥ L[q*_FFG]", c["log_p"], c["elbo_ffg_star"], c["elbo_ffg_star_se"], loose),
    ]
    if "elbo_flow_star" in c:
        flow_se = c["elbo_flow_star_se"]
        checks.append(("log p̂(x) ≥ L[q*_flow]", c["log_p"], c["elbo_flow_star"], flow_se, loose))
        checks.append((
            "L[q*_flow] ≥ L[q*_FFG]", c["elbo_flow_star"], c["elbo_ffg_star"],
            torch.hypot(c["elbo_flow_star_se"], c["elbo_ffg_star_se"]),
            "the local flow fell below the Gaussian it started from: lower the local lr, raise max_steps",
        ))  # fmt: skip
    star, star_se = c[f"elbo_{q_star}_star"], c[f"elbo_{q_star}_star_se"]
    checks.append((
        f"L[q*_{'FFG' if q_star == 'ffg' else 'flow'}] ≥ L[q]", star, c["elbo_q"],
        torch.hypot(star_se, c["elbo_q_se"]),
        "local optimisation did not reach the amortized bound: raise its max_steps or tune its lr",
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
                    f"{name} optimisation converged (raise the local optimisation's step cap)"
                )
        if f"skipped_{family}" in c:
            skipped = int((c[f"skipped_{family}"] > 0).sum())
            if skipped:
                warnings.append(
                    f"{skipped} of {c['log_p'].numel()} examples skipped local {name} updates for a "
                    "non-finite objective or gradient (lower the local optimisation's learning rate)"
                )
    if "log_p_check" in c and c["log_p_check"].numel() > 1 and torch.isfinite(c["log_p_check"]).all():
        d = c["log_p_check"]
        mean, se = d.mean().item(), d.std().item() / math.sqrt(d.numel())
        if abs(mean) > SIGMAS * se:
            warnings.append(
                f"log p̂(x) differs from the other estimator by {mean:+.3f} ± {se:.3f} nats (paired): "
                "one of them has not converged (raise AIS steps/chains or the IWAE K)"
            )
    return warnings, violations


def local_counts(columns: dict[str, Tensor]) -> dict[str, dict[str, int]]:
    """Per local family: examples capped (not converged) and examples with skipped updates."""
    out = {}
    for family in ("ffg", "flow"):
        if f"converged_{family}" in columns:
            out[family] = {
                "capped": int((columns[f"converged_{family}"] == 0).sum()),
                "skipped": int((columns[f"skipped_{family}"] > 0).sum()),
            }
    return out


# ----------------------------------------------------------------------------- the report


def compute_gaps(
    model: nn.Module,
    x: Tensor,
    posterior: str,
    settings: GapSettings | None = None,
    name: str = "model",
    indices: Tensor | None = None,
    subset: str = "",
    model_flow_options: dict[str, Any] | None = None,
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
        model_flow_options: q's flow size (``flow_steps``, ``flow_hidden``, ...), the local
            flow's with ``local_flow=same``.
    """
    s = settings or GapSettings()
    start = time.perf_counter()
    device = next(model.parameters()).device
    flow, flow_options = local_flow_family(posterior, s, model_flow_options or {})
    index = indices if indices is not None else torch.arange(x.shape[0])
    parts = []
    batches = zip(x.split(s.batch_size), index.split(s.batch_size), strict=True)
    for batch, batch_index in batches:
        parts.append(_batch_columns(model, batch.to(device), batch_index, s, flow, flow_options))
    columns = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    q_star = "ffg" if _factorised(posterior) or flow == "none" else "flow"  # q's family
    add_gaps(columns, q_star)
    flagged = flag_examples(columns, index)
    dropped = 0
    if flagged and s.drop_flagged:
        keep = torch.ones(x.shape[0], dtype=torch.bool)
        positions = {int(v): i for i, v in enumerate(index.tolist())}
        for f in flagged:
            keep[positions[f["index"]]] = False
        dropped = int((~keep).sum())
        columns = {k: v[keep] for k, v in columns.items()}
        index = index[keep]
    warnings, violations = check_ordering(columns, q_star) if columns["log_p"].numel() else ([], {})
    if flagged:
        listing = ", ".join(f"{f['index']} ({f['column']}: {f['reason']})" for f in flagged[:10])
        more = f" and {len(flagged) - 10} more" if len(flagged) > 10 else ""
        action = f"dropped {dropped} of {x.shape[0]} examples" if dropped else "the means are not trustworthy"
        warnings.insert(0, f"{len(flagged)} flagged example(s): {listing}{more}; {action}")
    if not _factorised(posterior) and flow == "none":
        warnings.insert(0, f"q is {posterior} but no local flow was fitted: the gaps use q* = q*_FFG")
    gaps = ("inference_gap", "approximation_gap")
    negative = [k for k in gaps if columns[k].numel() and columns[k].mean() < 0]
    if negative:
        means = ", ".join(f"{k.replace('_', ' ')} {columns[k].mean().item():.3f}" for k in negative)
        warnings.insert(0, f"the gaps are not meaningful: log p̂(x) is not above the ELBOs it is compared to "
                           f"({means} nats): raise its samples (K, chains) or AIS steps")  # fmt: skip
    columns = {"index": index.double(), **columns}
    return GapReport(
        name=name, posterior=posterior, q_star=q_star, settings=s, columns=columns,
        warnings=warnings, violations=violations, seconds=time.perf_counter() - start, subset=subset,
        q_star_family="diag" if flow == "none" else flow, q_star_options=flow_options,
        flagged=flagged, dropped=dropped, local_counts=local_counts(columns),
    )  # fmt: skip


def _factorised(posterior: str) -> bool:
    """Whether q is a factorised Gaussian (its record's family): then q* is q*_FFG."""
    return posterior_record(posterior).family == "gaussian"


def local_flow_family(
    posterior: str, s: GapSettings, model_flow_options: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """The local flow's family and size: q's own with ``same`` (none for a ``diag`` q)."""
    if s.local_flow == SAME:
        if _factorised(posterior):
            return "none", {}
        return posterior, {**model_flow_options, **s.flow_options}
    return s.local_flow, dict(s.flow_options)


def run_gaps(
    run_dir: str | Path,
    split: str = "test",
    n: int = 100,
    settings: GapSettings | None = None,
    subset_seed: int = EVAL_SEED,
    checkpoint: str = "best",
    device: str = "cpu",
) -> GapReport:
    """:func:`compute_gaps` for a trained run on a fixed, seeded random subset of ``n`` examples
    of ``split`` (``data.subset_indices``), never the first n. The training split of a
    dynamically binarized dataset holds intensities: the subset is binarized once, seeded."""
    from .checkpoint import load_run, trained_to
    from .data import evaluation_images, load_data

    run = load_run(run_dir, checkpoint, device)
    cfg, model, trained = run.config, run.model, trained_to(run_dir, run, checkpoint)
    data = load_data(cfg.data)
    x, indices, subset = evaluation_images(data, split, n, subset_seed)
    size = {k: getattr(cfg.model, k) for k in FLOW_SIZE_KEYS}
    settings = (settings or GapSettings()).resolved(cfg.eval)
    report = compute_gaps(
        model, x, cfg.model.posterior, settings, name=Path(run_dir).name, indices=indices, subset=subset,
        model_flow_options=size,
    )
    report.trained = trained
    if trained.unfinished:
        report.warnings.insert(0, f"scored {trained.describe()}")
    return report


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
    family = "FFG" if _factorised(report.posterior) else f"flow ({report.posterior})"
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
            mark = " (not meaningful)" if key.endswith("_gap") and not r.meaningful else ""
            cells.append(f"{summary[key]['mean']:.2f}{mark}" if key in summary else "–")
        if key == "log_p":
            label += f" ({reports[0].settings.estimator})"
        elif key == "elbo_flow_star":
            families = sorted({r.q_star_family for r in reports if r.q_star == "flow"})
            label += f" ({', '.join(families) or 'none'})"
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
        est = ", ".join(f"{k}={v}" for k, v in r.estimator_settings().items())
        what += f"; log p̂: {est}"
        check = r.log_p_check()
        if check:
            what += f"; log p̂ − {check['against']} = {check['mean']:+.3f} ± {check['stderr']:.3f} (paired)"
        size = ", ".join(f"{k}={v}" for k, v in r.q_star_options.items())
        what += f"; q = {r.posterior}, q* = {r.q_star_family}" + (f" ({size})" if size else "")
        what += f"; weights: {r.trained.describe()}" if r.trained else ""
        for family, c in r.local_counts.items():
            what += f"; local {family}: {c['capped']} capped, {c['skipped']} with skipped updates"
        if r.dropped:
            what += f"; {r.dropped} flagged examples dropped"
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
    integral = {"index", *(f"{k}_{f}" for k in ("steps", "converged", "skipped") for f in ("ffg", "flow"))}
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(names)
        for row in rows:
            cells = zip(names, row, strict=True)
            writer.writerow([int(v) if k in integral and math.isfinite(v) else f"{v:.6f}" for k, v in cells])


REPORT_FILES = tuple(f"gaps.{k}" for k in ("csv", "json", "md", "png"))


def earlier_report(folder: str | Path) -> list[str]:
    """The files of a gap report already in ``folder`` (a new report never replaces them)."""
    return [name for name in REPORT_FILES if (Path(folder) / name).exists()]


def report_folder(run_dir: str | Path) -> Path:
    """Where a run's next gap report goes: ``RUN/gaps``, or ``gaps-2``, ``gaps-3``... past the
    folders that hold one."""
    for i in itertools.count(1):
        folder = Path(run_dir) / ("gaps" if i == 1 else f"gaps-{i}")
        if not earlier_report(folder):
            return folder
    raise AssertionError("unreachable")


def write_report(report: GapReport, out_dir: str | Path) -> dict[str, Path]:
    """``gaps.csv`` (per example), ``gaps.json``, ``gaps.md`` and ``gaps.png`` (unless a mean is
    not finite) in ``out_dir``, each written whole (temp file + rename) or not at all."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / f"gaps.{k}" for k in ("csv", "json", "md", "png")}
    with replacing(paths["csv"]) as tmp:
        write_csv(report, tmp)
    with replacing(paths["json"]) as tmp:
        tmp.write_text(json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n")
    with replacing(paths["md"]) as tmp:
        tmp.write_text(markdown_table([report]) + "\n")
    keys = ("elbo_q", "amortization_gap", "approximation_gap")
    if all(math.isfinite(report.summary()[k]["mean"]) for k in keys):
        with replacing(paths["png"]) as tmp:
            plot_gaps([report], tmp)
    else:  # a non-finite mean (flagged examples kept) has no bar to draw
        del paths["png"]
    return paths


__all__ = [
    "DEFINITIONS", "GapReport", "GapSettings", "LOCAL_PURPOSES", "LOG_P_ESTIMATORS", "add_gaps",
    "check_ordering", "compute_gaps", "earlier_report", "flag_examples", "local_flow_family",
    "markdown_table", "plot_gaps", "report_folder", "run_gaps", "write_csv", "write_report",
]  # fmt: skip
