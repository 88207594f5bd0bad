"""A sweep's spec: rows × seeds, how every member is scored and the references it is held
against; read from YAML (a file, or the name of a spec shipped in ``flowvae/specs``) or a dict
and checked key by key, every row's config built (see :mod:`flowvae.sweeps`)."""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config import Config, ConfigError, apply_overrides
from .estimators import ESTIMATORS
from .launchers import SweepError
from .presets import preset

SPECS = Path(__file__).parent / "specs"  # the specs shipped with the package
ROW_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class Row:
    """A row of the table: a preset and overrides, trained once per seed."""

    preset: str
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class EvalSpec:
    """How every member is scored (as ``flowvae compare`` does: the same examples for all)."""

    estimator: str = "iwae"
    samples: int | None = None  # None: each run's eval.samples (iwae), else the estimator's default
    limit: int = 0  # a fixed seeded subset of this many examples (0: all)
    split: str = "test"
    seed: int = 1234


@dataclass(frozen=True)
class Spec:
    rows: dict[str, Row]
    seeds: int = 1
    caption: str = ""
    eval: EvalSpec = field(default_factory=EvalSpec)
    reference: dict[str, float] = field(default_factory=dict)
    reference_name: str = "reference"
    more_references: dict[str, dict[str, tuple[float, ...]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["rows"] = {
            name: {"preset": r.preset, "overrides": list(r.overrides)} for name, r in self.rows.items()
        }
        return out


SPEC_KEYS = {f.name for f in dataclasses.fields(Spec)}
ROW_KEYS = {f.name for f in dataclasses.fields(Row)}
EVAL_KEYS = {f.name for f in dataclasses.fields(EvalSpec)}


def _unknown(where: str, key: str, valid: set[str]) -> SweepError:
    near = difflib.get_close_matches(str(key), sorted(valid), n=1, cutoff=0.5)
    hint = f"did you mean {near[0]!r}?" if near else f"valid: {', '.join(sorted(valid))}"
    return SweepError(f"{where}: unknown key {key!r}; {hint}")


def _mapping(value: Any, where: str, valid: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SweepError(f"{where}: expected a mapping of {', '.join(sorted(valid))}, got {value!r}")
    for key in value:
        if key not in valid:
            raise _unknown(where, key, valid)
    return value


def spec_path(spec: str | Path) -> Path:
    """A spec's file: a path, or the name of a shipped spec (``vampprior-static-mnist``)."""
    path = Path(spec)
    if path.is_file():
        return path
    shipped = SPECS / f"{spec}.yaml"
    if shipped.is_file():
        return shipped
    names = shipped_specs()
    near = difflib.get_close_matches(str(spec), names, n=1, cutoff=0.5)
    hint = f"did you mean {near[0]!r}?" if near else f"shipped specs: {', '.join(names)}"
    raise SweepError(f"{spec}: no such spec file or shipped spec; {hint}")


def shipped_specs() -> list[str]:
    return sorted(p.stem for p in SPECS.glob("*.yaml"))


def load_spec(spec: str | Path | dict[str, Any], overrides: Sequence[str] = ()) -> Spec:
    """Read and check a spec (a file, a shipped spec's name or a dict); ``overrides`` are added to
    every row's (e.g. ``data.root=...``). Every row's config is built, so a bad preset, key or
    value fails here, in one line naming the row."""
    if isinstance(spec, dict):
        values, where = spec, "spec"
    else:
        path = spec_path(spec)
        try:
            values = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise SweepError(f"{path}: not YAML ({str(e).splitlines()[0]})") from None
        where = str(path)
    values = dict(_mapping(values, where, SPEC_KEYS))
    if "rows" not in values or not values["rows"]:
        raise SweepError(f"{where}: no rows (rows: {{name: {{preset: ..., overrides: [...]}}}})")
    rows = {}
    for name, row in _mapping(values["rows"], f"{where}: rows", set(values["rows"])).items():
        if not ROW_NAME.fullmatch(str(name)):
            raise SweepError(f"{where}: row name {name!r} is not a folder name (letters, digits, _ . -)")
        row = _mapping(row, f"{where}: row {name}", ROW_KEYS)
        if "preset" not in row:
            raise SweepError(f"{where}: row {name} has no preset")
        extra = row.get("overrides") or []
        if not isinstance(extra, list):
            raise SweepError(f"{where}: row {name}: overrides must be a list of key=value")
        rows[str(name)] = Row(str(row["preset"]), (*map(str, extra), *overrides))
    values["rows"] = rows
    values["eval"] = EvalSpec(**_mapping(values.get("eval") or {}, f"{where}: eval", EVAL_KEYS))
    reference = values.get("reference") or {}
    for name in _mapping(reference, f"{where}: reference", set(rows)):
        if not isinstance(reference[name], int | float):
            raise SweepError(f"{where}: reference {name}: {reference[name]!r} is not a number")
    values["reference"] = {k: float(v) for k, v in reference.items()}
    values["more_references"] = _more_references(values.get("more_references") or {}, set(rows), where)
    out = Spec(**values)
    if not isinstance(out.seeds, int) or out.seeds < 1:
        raise SweepError(f"{where}: seeds must be an integer >= 1, got {out.seeds!r}")
    _check_eval(out.eval, where)
    for name in rows:
        try:
            row_config(out, name)
        except ConfigError as e:
            raise SweepError(f"{where}: row {name}: {e}") from None
    return out


def _more_references(columns: Any, rows: set[str], where: str) -> dict[str, dict[str, tuple[float, ...]]]:
    """``{column: {row: number or [numbers]}}`` -> ``{column: {row: (numbers,)}}``."""
    if not isinstance(columns, dict):
        raise SweepError(
            f"{where}: more_references must map a column's name to {{row: number}}, got {columns!r}"
        )
    out = {}
    for column, values in columns.items():
        here = f"{where}: more_references {column}"
        out[str(column)] = {}
        for row, value in _mapping(values, here, rows).items():
            numbers = value if isinstance(value, list) else [value]
            if not numbers or not all(type(v) in (int, float) for v in numbers):  # (not a bool)
                raise SweepError(f"{here}: {row}: {value!r} is not a number or a list of numbers")
            out[str(column)][str(row)] = tuple(float(v) for v in numbers)
    return out


def _check_eval(e: EvalSpec, where: str) -> None:
    if e.estimator not in ESTIMATORS:
        raise _unknown(f"{where}: eval.estimator", e.estimator, set(ESTIMATORS)) from None
    if e.split not in ("train", "valid", "test"):
        raise SweepError(f"{where}: eval.split must be train, valid or test, got {e.split!r}")
    for key in ("samples", "limit", "seed"):
        value = getattr(e, key)
        low = 1 if key == "samples" else 0
        if value is not None and (not isinstance(value, int) or value < low):
            raise SweepError(f"{where}: eval.{key} must be an integer >= {low}, got {value!r}")


def row_config(spec: Spec, name: str) -> Config:
    """A row's config (the first seed's): its preset with its overrides."""
    row = spec.rows[name]
    return apply_overrides(preset(row.preset), list(row.overrides))


__all__ = ["EvalSpec", "Row", "Spec", "load_spec", "row_config", "shipped_specs", "spec_path"]
