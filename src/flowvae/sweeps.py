"""A table as one command: a *spec* (rows × seeds, the evaluation, a reference column) run by a launcher.

A spec (YAML, or a name of a spec shipped in ``flowvae/specs``)::

    caption: diag vs IAF on digits
    seeds: 2
    rows:
      diag: {preset: digits, overrides: [model.posterior=diag, train.max_steps=20]}
      iaf: {preset: digits, overrides: [model.posterior=iaf, train.max_steps=20]}
    eval: {estimator: iwae, samples: 10, limit: 20, split: test}
    reference: {diag: 30.0}
    reference_name: paper
    more_references: {"authors' code": {diag: [30.2, 30.4]}}

``more_references`` are further columns beside the reference (a number per row, or the per-seed
numbers of a run elsewhere, shown as mean ± sd (n)); the difference is to ``reference``.

:func:`sweep` ``(spec, R, launcher=...)`` makes every row a seed group (``R/<row>/group.json``,
members ``R/<row>/seed-i``, as ``flowvae train --seeds N`` does), trains every member that is
missing, resumes every unfinished one, scores every finished one (through the eval cache of
:func:`~flowvae.evaluation.evaluate_run`, so nothing is recomputed) and writes the table through
:func:`~flowvae.groups.compare_groups` into ``R/table``, with the reference column and the
difference to it. ``R/sweep.json`` holds the spec a folder was started with: a rerun continues
it, a spec whose rows (or seeds) differ is refused, naming the rows.

A member is *done* when its run ended by itself: all epochs, early stopping, or a budget
(``train.max_steps`` counts the member's steps over all its invocations: a resumed member gets
the steps left; ``train.max_minutes`` counts per invocation, as in a run). Each member process
records what it is doing in ``R/status/<row>.seed-i.json`` (running, failed with a one-line
reason), which :func:`status` reads with the checkpoints.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import socket
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import torch

from . import groups
from .checkpoint import load_checkpoint
from .compare import read_metrics, render_latex, render_markdown
from .config import Config
from .evaluation import evaluate_run
from .launchers import SweepError, make_launcher, slurm_alive
from .rundir import prepare_run, say_on_stderr
from .sweep_spec import EvalSpec, Row, Spec, load_spec, row_config, shipped_specs
from .tracking import log_final
from .train import train

SPEC_FILE = "sweep.json"
SPEC_VERSION = 1
STATUS_DIR = "status"
TABLE_DIR = "table"


# ----------------------------------------------------------------------------- members


@dataclass(frozen=True)
class Member:
    row: str
    index: int
    seed: int  # train.seed
    run_dir: Path

    @property
    def name(self) -> str:
        return f"{self.row}/seed-{self.index}"


def members(spec: Spec, run_dir: str | Path) -> list[Member]:
    out = []
    for name in spec.rows:
        base = row_config(spec, name).train.seed
        out += [Member(name, i, base + i, Path(run_dir) / name / f"seed-{i}") for i in range(spec.seeds)]
    return out


State = Literal["done", "running", "failed", "unfinished", "not started"]


@dataclass
class MemberStatus:
    member: Member
    state: State
    step: int = 0
    target_steps: int | None = None  # the step it ends at, where a budget or the epochs say
    eta_seconds: float | None = None  # to target_steps: with early stopping, the most it can take
    reason: str = ""  # failed: the one-line error; running: where (host, pid or job)
    job: str = ""  # the Slurm job that ran it last
    progress: str = ""  # where its valid ELBO stands: see :func:`training_progress`
    scoring: bool = False  # running: trained to its end, now scored (the table's evaluation)
    eta_is_bound: bool = False  # early stopping may end it before target_steps


def _status_file(member: Member) -> Path:
    return member.run_dir.parent.parent / STATUS_DIR / f"{member.row}.seed-{member.index}.json"


def _record(member: Member, **values: Any) -> None:
    path = _status_file(member)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({**values, "time": time.time()}) + "\n")
    tmp.replace(path)


def _read_record(member: Member) -> dict[str, Any]:
    try:
        return json.loads(_status_file(member).read_text())
    except (OSError, ValueError):
        return {}


def _finished(state: dict[str, Any], cfg: Config) -> bool:
    """The run ended by itself: its epochs, early stopping, or its budget (a steps budget over all
    of the member's invocations; a time budget of the invocation that reached it)."""
    stopped = state.get("stopped", "")
    if state["epoch"] >= cfg.train.epochs or stopped.startswith("early stopping"):
        return True
    if cfg.train.max_steps and state["step"] >= cfg.train.max_steps:
        return True
    return stopped.startswith("max_minutes")


def _checkpoint_state(member: Member) -> dict[str, Any] | None:
    path = member.run_dir / "checkpoint.pt"
    return load_checkpoint(path)["state"] if path.is_file() else None


def member_status(member: Member, cfg: Config, alive: set[str] = frozenset()) -> MemberStatus:
    """What a member is at: ``alive`` holds the Slurm jobs still queued or running."""
    state = _checkpoint_state(member)
    record = _read_record(member)
    step = state["step"] if state else 0
    progress = training_progress(state, cfg.train.early_stopping) if state else ""
    if state is not None and _finished(state, cfg):
        if record.get("state") == "running" and _alive(record, alive):  # trained, being scored
            where = _where(record)
            return MemberStatus(
                member, "running", step, step, None, where, record.get("job", ""), progress, True
            )
        return MemberStatus(member, "done", step, step, job=record.get("job", ""), progress=progress)
    if _alive(record, alive):
        return _running(member, cfg, record, progress)
    if record.get("state") == "failed":
        return MemberStatus(
            member, "failed", step, reason=record.get("reason", ""), job=record.get("job", "")
        )
    state_name = "unfinished" if state else "not started"
    return MemberStatus(member, state_name, step, job=record.get("job", ""), progress=progress)


def training_progress(state: dict[str, Any], early_stopping: int = 0) -> str:
    """Where a run's valid ELBO stands, from its checkpoint's training state (the counters training
    itself keeps): the epochs completed, the best valid ELBO and its epoch, and with early stopping
    how many evaluations have passed without a better one (training counts them once the KL weight
    is 1), e.g. ``epoch 120; best valid ELBO -98.20 at epoch 101, 19/50 evaluations without a better
    one``. Before the first complete epoch only the best valid ELBO (a status line gives the step).
    Empty when nothing was evaluated."""
    if not math.isfinite(state.get("best_valid", -math.inf)):
        return ""
    text = f"best valid ELBO {state['best_valid']:.2f}"
    if state.get("epoch", 0) >= 1:
        text = f"epoch {state['epoch']}; {text} at epoch {state['best_epoch']}"
    bad = state.get("bad_evals", 0)
    return text + (f", {bad}/{early_stopping} evaluations without a better one" if early_stopping else "")


def _alive(record: dict[str, Any], alive: set[str]) -> bool:
    """Its Slurm job is queued or running, or its local process (running) still exists."""
    if record.get("job"):
        return record["job"] in alive
    if (
        record.get("state") != "running"
        or record.get("host") != socket.gethostname()
        or not record.get("pid")
    ):
        return False
    try:
        os.kill(record["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _running(member: Member, cfg: Config, record: dict[str, Any], progress: str) -> MemberStatus:
    """A running member's step and ETA, from its metrics rows (the pace so far)."""
    rows = read_metrics(member.run_dir)
    step = int(rows[-1]["step"]) if rows else 0
    target = cfg.train.max_steps or None
    if rows and rows[-1]["epoch"] > 0:
        per_epoch = rows[-1]["step"] / rows[-1]["epoch"]
        target = min(filter(None, [target, int(per_epoch * cfg.train.epochs)]))
    eta = None
    if rows and step and target and rows[-1].get("seconds"):
        eta = max(0.0, (target - step) * rows[-1]["seconds"] / step)
    return MemberStatus(
        member, "running", step, target, eta, _where(record), record.get("job", ""), progress,
        eta_is_bound=bool(cfg.train.early_stopping),
    )  # fmt: skip


def _where(record: dict[str, Any]) -> str:
    """Where a live member runs: its Slurm job, or its host and process."""
    if record.get("state") == "queued":
        return f"queued as job {record['job']}"
    return f"job {record['job']}" if record.get("job") else f"{record.get('host')} pid {record.get('pid')}"


def run_member(run_dir: str, row: str, index: int, threads: int = 0) -> str:
    """Train (or resume) one member, then score it as the table will; in the member's own process
    (a local worker or a Slurm task). Returns its state; failures are recorded, then raised."""
    spec = read_spec(run_dir)
    member = next(m for m in members(spec, run_dir) if m.row == row and m.index == index)
    cfg = row_config(spec, row)
    cfg.train.seed = member.seed
    job = _slurm_job()
    _record(member, state="running", host=socket.gethostname(), pid=os.getpid(), job=job)
    torch.set_num_threads(cfg.train.threads or threads or torch.get_num_threads())

    def say(text: str, where: dict[str, float] | None = None) -> None:  # members share a log: named
        say_on_stderr(f"{member.name}: {text}", where)

    try:
        state = _checkpoint_state(member)
        if state is None:
            overrides = list(spec.rows[row].overrides)
            train(cfg, member.run_dir, progress=False, overwrite=True, overrides=overrides, say=say)
        elif not _finished(state, cfg):
            left = [f"train.max_steps={cfg.train.max_steps - state['step']}"] if cfg.train.max_steps else []
            resumed = prepare_run(None, member.run_dir, True, left)
            train(resumed, member.run_dir, resume=True, progress=False, overrides=left, say=say)
        if _finished(_checkpoint_state(member) or {"epoch": 0, "step": 0}, cfg):
            score_member(spec, member)
    except BaseException as e:
        text = str(e).splitlines()[0] if str(e) else ""
        reason = f"{type(e).__name__}: {text}" if text else type(e).__name__
        if os.environ.get("FLOWVAE_DEBUG"):
            traceback.print_exc()
        _record(member, state="interrupted" if isinstance(e, KeyboardInterrupt | SystemExit) else "failed",
                reason=reason, job=job)  # fmt: skip
        raise
    _record(member, state="done", job=job)
    return "done"


def _slurm_job() -> str:
    """This process's Slurm job (``ARRAYID_TASK`` for an array task), or ``""``."""
    if "SLURM_ARRAY_JOB_ID" in os.environ:
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID", "")


def score_member(spec: Spec, member: Member) -> None:
    """Fill the member's eval cache with what the table needs (the estimate and the ELBO)."""
    e = spec.eval
    common = {"split": e.split, "limit": e.limit, "seed": e.seed}
    scored = evaluate_run(member.run_dir, e.estimator, e.samples, **common)
    elbo = evaluate_run(member.run_dir, "elbo", 100, **common)
    if scored.run.config.train.track == "mlflow":
        final = {f"{e.split}_nll_{e.estimator}": scored.estimate.nll, f"{e.split}_elbo": -elbo.estimate.nll}
        log_final(member.run_dir, final, _checkpoint_state(member)["step"])


# ----------------------------------------------------------------------------- the folder


def read_spec(run_dir: str | Path) -> Spec:
    path = Path(run_dir) / SPEC_FILE
    try:
        values = json.loads(path.read_text())["spec"]
    except FileNotFoundError:
        raise SweepError(f"{run_dir}: not a sweep folder (no {SPEC_FILE})") from None
    except (ValueError, KeyError, TypeError):
        raise SweepError(f"{path}: not a readable sweep file") from None
    return load_spec(values)


def check_same_spec(spec: Spec, run_dir: str | Path) -> None:
    """Refuse a folder that holds a sweep of another spec, naming the rows that differ."""
    if not (Path(run_dir) / SPEC_FILE).is_file():
        if any(Path(run_dir).iterdir()) if Path(run_dir).is_dir() else Path(run_dir).exists():
            raise SweepError(f"{run_dir}: exists and is not a sweep folder; choose another run dir")
        return
    old = read_spec(run_dir)
    changed = [n for n in spec.rows if n in old.rows and old.rows[n] != spec.rows[n]]
    new, gone = [n for n in spec.rows if n not in old.rows], [n for n in old.rows if n not in spec.rows]
    parts = [f"changed rows: {', '.join(changed)}"] if changed else []
    parts += [f"new rows: {', '.join(new)}"] if new else []
    parts += [f"rows not in this spec: {', '.join(gone)}"] if gone else []
    parts += [f"seeds {old.seeds} -> {spec.seeds}"] if old.seeds != spec.seeds else []
    if parts:
        raise SweepError(f"{run_dir} holds a sweep of another spec ({'; '.join(parts)}); "
                         "rerun it with its own spec or choose another run dir")  # fmt: skip


def prepare(spec: Spec, run_dir: str | Path) -> list[Member]:
    """Write ``R/sweep.json`` and each row's ``group.json`` (once); the members."""
    root = Path(run_dir)
    check_same_spec(spec, root)
    root.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"version": SPEC_VERSION, "spec": spec.to_dict()}, indent=1) + "\n"
    tmp = root / f".{SPEC_FILE}.tmp"
    tmp.write_text(text)
    tmp.replace(root / SPEC_FILE)  # caption, eval and reference may change between invocations
    out = members(spec, root)
    for name, row in spec.rows.items():
        if not groups.is_group(root / name):
            own = [m for m in out if m.row == name]
            group = groups.Group([m.run_dir.name for m in own], [m.seed for m in own],
                                 row_config(spec, name).to_dict(), list(row.overrides))  # fmt: skip
            (root / name).mkdir(exist_ok=True)
            (root / name / groups.GROUP_FILE).write_text(
                json.dumps(dataclasses.asdict(group), indent=1) + "\n"
            )
    return out


# ----------------------------------------------------------------------------- running


class Launcher(Protocol):
    """Runs a target (:func:`run_member`) once per member (see :mod:`flowvae.launchers`)."""

    name: str

    def alive(self, run_dir: Path) -> set[str]: ...  # the folder's jobs still queued or running

    def describe(self) -> str: ...

    # (member name, row, seed index) each; returns the job of each member it submitted
    def start(self, run_dir: Path, todo: list[tuple[str, str, int]], target: Any) -> dict[str, str]: ...


def status(spec: Spec | None, run_dir: str | Path, launcher: Launcher | None = None) -> list[MemberStatus]:
    """Every member's status (the spec: the folder's own when ``None``)."""
    spec = spec or read_spec(run_dir)
    alive = launcher.alive(Path(run_dir)) if launcher is not None else slurm_alive(Path(run_dir))
    configs = {name: row_config(spec, name) for name in spec.rows}
    return [member_status(m, configs[m.row], alive) for m in members(spec, run_dir)]


def status_lines(statuses: list[MemberStatus], run_dir: str | Path) -> list[str]:
    counts = {s: sum(x.state == s for x in statuses) for s in ("done", "running", "failed", "unfinished")}
    counts["not started"] = sum(x.state == "not started" for x in statuses)
    head = f"sweep {run_dir}: {len(statuses)} members: " + ", ".join(
        f"{n} {s}" for s, n in counts.items() if n
    )
    width = max(len(s.member.name) for s in statuses)
    lines = [head]
    for s in statuses:
        progress = f", {s.progress}" if s.progress else ""
        detail = {
            "done": f"step {s.step}{progress}",
            "running": f"step {s.step}"
            + (f"/{s.target_steps}" if s.target_steps and not s.scoring else "")
            + progress
            + ("; trained, now being scored" if s.scoring else "")
            + (_eta_text(s) if s.eta_seconds is not None else "")
            + f" ({s.reason})",
            "failed": s.reason,
            "unfinished": f"stopped at step {s.step}{progress}; the next sweep resumes it",
            "not started": "",
        }[s.state]
        job = f" [job {s.job}]" if s.job and s.state != "running" else ""
        lines.append(f"  {s.member.name:<{width}}  {s.state:<11}  {detail}{job}".rstrip())
    return lines


def _eta_text(s: MemberStatus) -> str:
    """The time to its last step; with early stopping on that is only the longest it can take."""
    if s.eta_is_bound:
        return f"; at most {_duration(s.eta_seconds)} more"
    return f", ETA {_duration(s.eta_seconds)}"


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}"


def plan_lines(spec: Spec, run_dir: str | Path, launcher: Launcher) -> list[str]:
    """What :func:`sweep` would do now (``--dry-run``): nothing is written."""
    check_same_spec(spec, run_dir)
    statuses = status(spec, run_dir, launcher) if Path(run_dir).is_dir() else [
        MemberStatus(m, "not started") for m in members(spec, run_dir)]  # fmt: skip
    what = {"done": "done: scored from the eval cache", "running": "running: waited for",
            "failed": "failed before: started again", "unfinished": "resumed",
            "not started": "trained"}  # fmt: skip
    lines = [f"sweep {run_dir} ({spec.caption or 'no caption'}) with {launcher.describe()}:"]
    for s in statuses:
        row = spec.rows[s.member.row]
        extra = f" from step {s.step}" if s.state in ("unfinished", "failed") and s.step else ""
        lines.append(
            f"  {s.member.name}: {what[s.state]}{extra} ({row.preset} {' '.join(row.overrides)})".rstrip()
        )
    e = spec.eval
    k = e.samples or "each run's eval.samples"
    lines.append(
        f"then: {e.estimator} K={k} on {e.split} ({e.limit or 'all'} examples) -> {Path(run_dir) / TABLE_DIR}"
    )
    return lines


def sweep(
    spec: str | Path | dict[str, Any] | Spec, run_dir: str | Path, launcher: str | Launcher = "local",
    overrides: Sequence[str] = (), progress: bool = True, **options: Any,
) -> dict[str, Path]:  # fmt: skip
    """Train every missing member, resume every unfinished one, score every finished one and
    write the table (``R/table``); returns the written files. ``launcher``: ``"local"`` (members as
    processes on this machine, ``options``: ``workers``) or ``"slurm"`` (one job array per
    invocation; ``options``: see :class:`flowvae.launchers.SlurmOptions`), or a launcher object.
    Raises :class:`SweepError` naming the members that did not finish; rerunning continues."""
    spec = spec if isinstance(spec, Spec) else load_spec(spec, overrides)
    run = make_launcher(launcher, **options) if isinstance(launcher, str) else launcher
    root = Path(run_dir)
    everyone = prepare(spec, root)
    statuses = status(spec, root, run)
    todo = [s.member for s in statuses if s.state in ("unfinished", "failed", "not started")]
    waiting = [s.member for s in statuses if s.state == "running"]
    if progress:
        print("\n".join(plan_lines(spec, root, run)[:1] + [f"  {len(todo)} to run, {len(waiting)} running, "
                        f"{len(everyone) - len(todo) - len(waiting)} done"]), flush=True)  # fmt: skip
    if todo:
        jobs = run.start(root, [(m.name, m.row, m.index) for m in todo], run_member)
        for m in todo:
            if m.name in jobs:
                _record(m, state="queued", job=jobs[m.name])
    final = wait(spec, root, run, getattr(run, "poll_seconds", 5.0), progress)
    left = [s for s in final if s.state != "done"]
    if left:
        named = "; ".join(f"{s.member.name} {s.state}" + (f" ({s.reason})" if s.reason else "") for s in left)
        raise SweepError(f"{len(left)} member(s) did not finish: {named}; rerun the same sweep to continue")
    return write_table(spec, root, progress)


def wait(
    spec: Spec, run_dir: Path, launcher: Launcher, poll_seconds: float, progress: bool
) -> list[MemberStatus]:
    """Poll until no member of the folder runs any more (printing each change of state); the
    statuses then."""
    seen: dict[str, str] = {}
    while True:
        statuses = status(spec, run_dir, launcher)
        for s in statuses:
            if progress and seen.get(s.member.name, s.state) != s.state:
                why = f": {s.reason}" if s.state == "failed" else ""
                print(f"{s.member.name}: {s.state}{why}", file=sys.stderr, flush=True)
            seen[s.member.name] = s.state
        if not any(s.state == "running" for s in statuses):
            return statuses
        time.sleep(poll_seconds)


# ----------------------------------------------------------------------------- the table


def write_table(spec: Spec, run_dir: str | Path, progress: bool = False) -> dict[str, Path]:
    """``R/table``: compare's files (comparison.*, runs.csv, curves.*) and sweep.{md,tex,csv,json}:
    per row the mean ± sd over seeds, the reference and the difference to it."""
    from .progress import progress_bar

    root, e = Path(run_dir), spec.eval
    c = groups.compare_groups(
        [root / name for name in spec.rows], None, e.estimator, e.samples, split=e.split, limit=e.limit,
        seed=e.seed,
        progress=(lambda total, desc: progress_bar(total, desc, unit="examples")) if progress else None,
    )  # fmt: skip
    paths = groups.write_comparison(c, root / TABLE_DIR)
    rows = [_table_row(spec, g) for g in c.groups]
    caption = spec.caption or f"sweep {root.name}"
    protocol = f"{c.estimator} (K={c.samples}) on {c.subset}; mean ± sd over seeds (n)"
    ref = spec.reference_name
    more = list(spec.more_references)
    header = ["row", ref, *more, "−log p̂ (nats)", f"Δ vs {ref}", "per seed", "epochs", "train min"]
    cells = [_cells(r, more) for r in rows]
    out = root / TABLE_DIR
    paths["sweep_md"] = out / "sweep.md"
    paths["sweep_md"].write_text(render_markdown(f"{caption}. {protocol}", header, cells) + "\n")
    paths["sweep_tex"] = out / "sweep.tex"
    paths["sweep_tex"].write_text(render_latex(header, cells, text=(0, 4 + len(more))) + "\n")
    paths["sweep_json"] = out / "sweep.json"
    paths["sweep_json"].write_text(
        json.dumps({"caption": caption, "protocol": protocol, "rows": rows}, indent=1) + "\n"
    )
    paths["sweep_csv"] = out / "sweep.csv"
    keys = list(rows[0])
    with open(paths["sweep_csv"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(keys)
        for r in rows:
            writer.writerow([" ".join(map(str, v)) if isinstance(v, list) else "" if v is None else v
                             for v in r.values()])  # fmt: skip
    return paths


def _table_row(spec: Spec, g: groups.GroupRow) -> dict[str, Any]:
    ref = spec.reference.get(g.group)
    return {
        "row": g.group, "reference": ref, "nll_mean": g.nll_mean, "nll_sd": g.nll_sd, "seeds": g.seeds,
        "diff_reference": None if ref is None else g.nll_mean - ref, "epochs_mean": g.epochs_mean,
        "train_minutes_mean": None if g.train_seconds_mean is None else g.train_seconds_mean / 60,
        "more_references": {name: list(col[g.group]) for name, col in spec.more_references.items()
                            if g.group in col},
    }  # fmt: skip


def _mean_sd(mean: float, sd: float | None, n: int) -> str:
    return f"{mean:.2f} ± {'n/a' if sd is None else f'{sd:.2f}'} ({n})"


def _cells(r: dict[str, Any], more: Sequence[str] = ()) -> list[str]:
    others = [r["more_references"].get(name) for name in more]
    minutes = "—" if r["train_minutes_mean"] is None else f"{r['train_minutes_mean']:.1f}"
    return [
        r["row"], "—" if r["reference"] is None else f"{r['reference']:.2f}",
        *("—" if v is None else f"{v[0]:.2f}" if len(v) == 1
          else _mean_sd(*groups.seed_mean_sd(v), len(v)) for v in others),
        _mean_sd(r["nll_mean"], r["nll_sd"], len(r["seeds"])),
        "—" if r["diff_reference"] is None else f"{r['diff_reference']:+.2f}",
        ", ".join(f"{v:.2f}" for v in r["seeds"]), f"{r['epochs_mean']:.1f}", minutes,
    ]  # fmt: skip


__all__ = [
    "EvalSpec", "Launcher", "Member", "MemberStatus", "Row", "Spec", "SweepError", "check_same_spec",
    "load_spec", "members", "plan_lines", "read_spec", "row_config", "run_member", "shipped_specs",
    "status", "status_lines", "sweep", "write_table",
]  # fmt: skip
