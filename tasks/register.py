"""register: log the Stage B model as an MLflow pyfunc, alias `candidate`; gate `champion`.

The gate reads the default system's row of reports/metrics.json; its rule and thresholds are
`register.gate` in params (see `GateConfig`) and are logged with every decision. Each version
carries its row as tags, so a later candidate is compared with the champion's own numbers.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jointdit.config import from_dict
from tasks.encoding import conditioning_from
from tasks.logs import get_logger
from tasks.mlflow_runs import mlflow_run
from tasks.params import cli
from tasks.paths import MODELS, REPORTS, write_json
from tasks.serving_spec import pip_requirements, signature

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class GateConfig:
    primary: str = "oracle_f1"  # higher is better
    min_gain: float = 0.0
    guards: tuple[str, ...] = ("fd_logmel", "fd_frames")  # lower is better
    tolerance: float = 0.1  # a guard may be this fraction worse than the champion's

    def rule(self) -> str:
        return (
            f"{self.primary} must beat the champion's by more than {self.min_gain:g}, and "
            f"{', '.join(self.guards) or 'no guard'} be at most {self.tolerance:.0%} worse"
        )

    def check(self, metrics: dict[str, float]) -> None:
        """Refuse a rule that names a metric the evaluation did not produce."""
        for key in (self.primary, *self.guards):
            if not math.isfinite(metrics.get(key, math.nan)):
                raise ValueError(
                    f"register.gate uses {key!r}, which the candidate's metrics lack "
                    f"(reports/metrics.json has {sorted(metrics)})"
                )


def gate(
    candidate: dict[str, float],
    champion: dict[str, float] | None,
    cfg: GateConfig,
    protocols: tuple[str, str] = ("", ""),
) -> tuple[bool, str]:
    """(promote?, why) for the candidate's and the champion's metric rows.

    ``protocols`` are the evaluation fingerprints of (candidate, champion): numbers measured on
    other clips, seeds or settings do not compare, so they never move the champion.
    """
    cfg.check(candidate)
    if champion is None:
        return True, "first version: no champion yet"
    if protocols[0] != protocols[1]:
        return False, (
            f"the champion was evaluated under protocol {protocols[1] or 'unknown'}, the "
            f"candidate under {protocols[0]}: their numbers do not compare; re-evaluate the "
            "champion under this protocol or move the alias by hand"
        )
    missing = [k for k in (cfg.primary, *cfg.guards) if k not in champion]
    if missing:
        return False, f"the champion has no {missing} to compare with; promote it by hand"
    gain = candidate[cfg.primary] - champion[cfg.primary]
    if gain <= cfg.min_gain:
        return False, (
            f"{cfg.primary} {candidate[cfg.primary]:.4f} does not beat the champion's "
            f"{champion[cfg.primary]:.4f} by more than {cfg.min_gain:g}"
        )
    for key in cfg.guards:
        if candidate[key] > champion[key] * (1 + cfg.tolerance):
            return False, (
                f"{key} {candidate[key]:.4f} is worse than the champion's {champion[key]:.4f} "
                f"beyond the tolerance {cfg.tolerance:.0%}"
            )
    return True, (
        f"{cfg.primary} {candidate[cfg.primary]:.4f} > {champion[cfg.primary]:.4f} with "
        f"{', '.join(cfg.guards) or 'no guard'} within {cfg.tolerance:.0%}"
    )


@contextlib.contextmanager
def exclusive(lock: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file `lock` (created if missing) for the block.

    Two register runs at once otherwise race three ways: on a fresh SQLite store both run
    MLflow's schema migrations and one dies; both read "no champion" before either sets it,
    and both promote themselves; and aliases and registry.json end up from different runs.
    MLflow offers no compare-and-set for aliases, so registrations in one workspace take turns,
    from the first MLflow call to the registry.json they write.
    (Registrars on different machines sharing one tracking server would need a lock on the
    server's side; the pipeline registers from one workspace.)
    """
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file is closed, or the process dies
        yield


def register(params: dict[str, Any]) -> dict[str, Any]:
    """Register the Stage B model, gate it, write reports/registry.json."""
    metrics = json.loads((REPORTS / "metrics.json").read_text())
    return register_model(params, MODELS / "stage_b", metrics, REPORTS / "registry.json")


def register_model(
    params: dict[str, Any],
    checkpoint: Path,
    metrics: dict[str, Any],
    record_path: Path,
    tags: dict[str, str] | None = None,
    measured: dict[str, dict[str, float]] | None = None,
) -> dict[str, Any]:
    """Register the checkpoint as a new version, gate it against the champion, write the
    record to `record_path`: one registration at a time.

    `metrics` is an evaluation (reports/metrics.json's layout: `systems`, `default_system`,
    `protocol`); `tags` go on the version as they are (e.g. its parent); `measured` holds rows
    of registered versions measured in the same evaluation ({version: row}): a champion among
    them is judged on that row instead of the numbers it was registered with.
    """
    with exclusive(REPORTS / ".register.lock"):
        return _register(params, checkpoint, metrics, record_path, tags or {}, measured or {})


def _register(
    params: dict[str, Any],
    checkpoint: Path,
    metrics: dict[str, Any],
    record_path: Path,
    tags: dict[str, str],
    measured: dict[str, dict[str, float]],
) -> dict[str, Any]:
    import mlflow
    from mlflow import MlflowClient

    log = get_logger()
    cfg = params["register"]
    rule = from_dict(GateConfig, cfg["gate"], "register.gate")
    name = cfg["model_name"]
    system = metrics["default_system"]
    candidate = {k: v for k, v in metrics["systems"][system].items() if math.isfinite(v)}
    rule.check(candidate)  # before anything is registered
    serving = {
        "clip": params["clip"],
        "codec": params["codec"],  # built by the same builder as in training
        "sample": params["sample"],
        "conditioning": params.get("conditioning") or {},
    }
    artifacts = {"checkpoint": str(checkpoint)}
    conditioning = conditioning_from(params)
    if conditioning.encoder == "clip":  # the served model carries its CLIP weights
        artifacts["clip"] = conditioning.clip_pretrained
    with (
        mlflow_run(params, "register", {"register": cfg}) as run,
        tempfile.TemporaryDirectory() as tmp,
    ):
        serving_path = Path(tmp) / "serving.json"
        serving_path.write_text(json.dumps(serving, indent=2))
        mlflow.log_metrics({f"{system}/{k}": v for k, v in candidate.items()})
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(ROOT / "tasks" / "pyfunc_model.py"),
            artifacts={**artifacts, "serving": str(serving_path)},
            code_paths=[str(ROOT / "jointdit")],
            pip_requirements=pip_requirements(),
            signature=signature(),
            registered_model_name=name,
        )
        client = MlflowClient()
        version = info.registered_model_version
        client.set_model_version_tag(name, version, "run_id", run.info.run_id)
        client.set_model_version_tag(name, version, "system", system)
        client.set_model_version_tag(name, version, "protocol", metrics["protocol"])
        for k, v in candidate.items():
            client.set_model_version_tag(name, version, k, f"{v:.6f}")
        for k, v in tags.items():
            client.set_model_version_tag(name, version, k, v)
        client.set_registered_model_alias(name, "candidate", version)
        try:
            current = client.get_model_version_by_alias(name, "champion")
            champion_version = current.version
            # measured beside the candidate, on its clips (keys: version numbers as strings)
            if str(champion_version) in measured:
                champion = measured[str(champion_version)]
                champion_protocol = metrics["protocol"]
            else:
                champion = {k: float(v) for k, v in current.tags.items() if k in candidate}
                champion_protocol = current.tags.get("protocol", "")
        except mlflow.exceptions.MlflowException:
            champion, champion_version, champion_protocol = None, None, ""
        promote, why = gate(candidate, champion, rule, (metrics["protocol"], champion_protocol))
        if promote:
            client.set_registered_model_alias(name, "champion", version)
            champion_version = version
        log.info("register: gate rule: %s", rule.rule())
        log.info(
            "register: %s version %s %s: %s",
            name,
            version,
            "promoted to champion" if promote else "refused, stays candidate",
            why,
        )
    record = {
        "model_name": name,
        "version": int(version),
        "candidate": int(version),
        "champion": int(champion_version),
        "promoted": promote,
        "reason": why,
        "rule": rule.rule(),
        "system": system,
        "protocol": metrics["protocol"],
        "metrics": candidate,
        "model_uri": f"models:/{name}@champion",
        **({"tags": tags} if tags else {}),
    }
    write_json(record_path, record)
    return record


if __name__ == "__main__":
    cli(register)
