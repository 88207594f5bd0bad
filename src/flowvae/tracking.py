"""Experiment tracking: ``train.track=mlflow`` logs a run to MLflow (the optional extra
``pip install "flowvae[mlflow]"``, MLflow's client ``mlflow-skinny``).

A run logs its resolved config as params (``model.posterior``, ...), each evaluation's metrics
row by step (``valid_elbo``, ``train_elbo``, ``kl``, ...), the sample and reconstruction grids as
artifacts, and, from a sweep, the final scores; to ``$MLFLOW_TRACKING_URI`` or, by default, the
file store ``./mlruns`` of the working directory (``MLFLOW_ALLOW_FILE_STORE`` is set for it: MLflow
3 keeps that store in maintenance mode; a server or a database URI works as well). The run's id is
kept in ``RUN/mlflow.json``, so a resume continues the same MLflow run. A member of a sweep
(``R/<row>/seed-i`` beside ``R/sweep.json``) logs to the experiment named after the sweep's folder,
tagged with its row and seed; another run to ``$MLFLOW_EXPERIMENT_NAME``, else ``flowvae``.
"""

from __future__ import annotations

import json
import os
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from .config import Config, ConfigError

RUN_FILE = "mlflow.json"
PARAMS_PER_CALL = 100  # MLflow's limit of params in one log_batch


def _client(uri: str) -> Any:
    try:
        import mlflow
    except ImportError:
        raise ConfigError('train.track=mlflow needs MLflow: pip install "flowvae[mlflow]"') from None
    if uri.startswith("file:"):  # MLflow 3 refuses its file store unless this is set
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return mlflow.MlflowClient(tracking_uri=uri)


def tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else the file store ``./mlruns`` (an absolute ``file:`` URI)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return (Path.cwd() / "mlruns").resolve().as_uri()


def run_context(run_dir: Path, seed: int) -> tuple[str, dict[str, str]]:
    """The experiment and tags of a run: a sweep's member is tagged with its row and seed."""
    run_dir = Path(run_dir).resolve()
    sweep = run_dir.parent.parent
    if (sweep / "sweep.json").is_file():
        tags = {"flowvae.sweep": str(sweep), "row": run_dir.parent.name, "seed": str(seed)}
        return sweep.name, {**tags, "flowvae.run_dir": str(run_dir)}
    return os.environ.get("MLFLOW_EXPERIMENT_NAME", "flowvae"), {"flowvae.run_dir": str(run_dir)}


def _experiment(client: Any, name: str, uri: str) -> str:
    """The id of the experiment ``name``, created if missing (by whichever member comes first).

    A server or database refuses a second experiment of the same name (the loser reads the
    winner's); MLflow's file store does not check across processes, so two members starting at
    once could each create one and split the sweep's runs between them: there the check and the
    creation hold a lock file in the store."""
    if not uri.startswith("file:"):
        return _get_or_create(client, name)
    store = Path(urllib.request.url2pathname(urllib.parse.urlparse(uri).path))
    store.mkdir(parents=True, exist_ok=True)
    import fcntl  # POSIX: the file store's lock

    with open(store / ".flowvae-experiments.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        return _get_or_create(client, name)


def _get_or_create(client: Any, name: str) -> str:
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:  # another member of the sweep created it meanwhile
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = str(value)[:6000]
    return out


class MlflowTracker:
    """One flowvae run's MLflow run."""

    def __init__(self, client: Any, run_id: str):
        self.client, self.run_id = client, run_id

    @classmethod
    def open(cls, run_dir: Path, cfg: Config, resume: bool) -> MlflowTracker:
        """Continue the run of ``RUN/mlflow.json`` (a resume), else start one with the config."""
        from mlflow.entities import Param

        file = Path(run_dir) / RUN_FILE
        if resume and file.is_file():
            saved = json.loads(file.read_text())
            client = _client(saved["uri"])
            client.update_run(saved["run_id"], status="RUNNING")
            return cls(client, saved["run_id"])
        uri = tracking_uri()
        client = _client(uri)
        experiment, tags = run_context(run_dir, cfg.train.seed)
        name = Path(run_dir).resolve().name
        run = client.create_run(_experiment(client, experiment, uri), tags=tags, run_name=name)
        params = [Param(k, v) for k, v in _flat(cfg.to_dict()).items()]
        for start in range(0, len(params), PARAMS_PER_CALL):
            client.log_batch(run.info.run_id, params=params[start : start + PARAMS_PER_CALL])
        file.write_text(json.dumps({"uri": uri, "run_id": run.info.run_id}) + "\n")
        return cls(client, run.info.run_id)

    def log_metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in values.items() if v == v]  # NaN: not logged
        self.client.log_batch(self.run_id, metrics=metrics)

    def log_artifacts(self, paths: list[Path]) -> None:
        for path in paths:
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path))

    def close(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


def log_final(run_dir: Path, values: dict[str, float], step: int) -> None:
    """The final scores (e.g. a sweep's test −log p̂) into the run's MLflow run, if it has one."""
    file = Path(run_dir) / RUN_FILE
    if file.is_file():
        saved = json.loads(file.read_text())
        MlflowTracker(_client(saved["uri"]), saved["run_id"]).log_metrics(values, step)


__all__ = ["RUN_FILE", "MlflowTracker", "log_final", "run_context", "tracking_uri"]
