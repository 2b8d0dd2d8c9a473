"""MLflow's side of a promotion decision: the champion alias of one gistnet registry, and the decision
itself as a run.

Each gistnet registry (the folder or bucket prefix that holds ``production.json``) has its own
alias, ``champion-<registry id>``, the id being the first 12 hex digits of the sha256 of the
registry's URI (credentials redacted). Two registries on one MLflow server (staging and production,
two teams) thus never move each other's alias. A promotion sets the alias on the challenger's
version and, in the same decision, removes it from every other registered model that held it (a
switch of architecture from ``gistnet-resnet34`` to ``gistnet-resnet50`` leaves one champion, not
two). The registered model's tag ``gistnet.alias.<alias>`` names the registry the alias serves.

Only ``config`` and ``errors`` are imported from gistnet (through ``observe.tracking``).
"""

from __future__ import annotations

import hashlib
import json
import os
import time

from gistnet.config import redact

ALIAS_PREFIX = "champion"
ALIAS_TAG = "gistnet.alias."  # + alias: the registry URI that alias serves
ROLE_PROMOTION = "promotion"


def registry_id(registry_uri: str) -> str:
    """A registry's short id: the first 12 hex digits of the sha256 of its URI (credentials redacted)."""
    return hashlib.sha256(redact(registry_uri).rstrip("/").encode()).hexdigest()[:12]


def champion_alias(registry_uri: str) -> str:
    """The MLflow alias of the model in production in ``registry_uri``: ``champion-<registry id>``."""
    return f"{ALIAS_PREFIX}-{registry_id(registry_uri)}"


def client(uri: str):
    from gistnet.observe.tracking import HTTP_DEFAULTS
    from mlflow.tracking import MlflowClient

    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _holders(mlflow_client, alias: str) -> list[str]:
    """Every registered model on the server whose aliases include ``alias``."""
    names, token = [], None
    while True:
        page = mlflow_client.search_registered_models(max_results=100, page_token=token)
        names += [m.name for m in page if alias in _aliases(m)]
        token = page.token
        if not token:
            return names


def _aliases(model) -> set[str]:
    aliases = model.aliases or {}
    return set(aliases) if isinstance(aliases, dict) else {getattr(a, "alias", a) for a in aliases}


def move_champion(uri: str, registry_uri: str, registered: str, version: str) -> dict:
    """Point ``registry_uri``'s champion alias at ``registered`` version ``version`` and take it off
    every other registered model. Returns what was done (``alias``, ``removed_from``)."""
    mlflow_client = client(uri)
    alias = champion_alias(registry_uri)
    mlflow_client.set_registered_model_alias(registered, alias, version)
    mlflow_client.set_registered_model_tag(registered, ALIAS_TAG + alias, redact(registry_uri))
    removed = []
    for name in _holders(mlflow_client, alias):
        if name != registered:
            mlflow_client.delete_registered_model_alias(name, alias)
            mlflow_client.delete_registered_model_tag(name, ALIAS_TAG + alias)
            removed.append(name)
    return {"registered_model": registered, "version": version, "alias": alias, "registry": redact(registry_uri),
            "removed_from": removed}


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def decision_metrics(record: dict) -> dict[str, float]:
    """The numbers of a promotion decision (``promotion.json``) as MLflow metrics: ``promoted`` (1/0),
    the non-inferiority test (``p``, ``margin``, ``auc_challenger``, ``auc_champion``, ``difference``,
    ``se``), the challenger's calibration, the overlap count and the consecutive refusals."""
    test = record.get("non_inferiority") or {}
    challenger = record.get("challenger") or {}
    auc = ((challenger.get("evaluation") or {}).get("roc_auc") or {}).get("value")
    values = {"promoted": 1.0 if record.get("decision") == "promoted" else 0.0,
              "auc_challenger": test.get("auc_challenger", auc), "margin": (record.get("criteria") or {}).get("auc_margin"),
              **{k: test.get(k) for k in ("auc_champion", "difference", "se", "p")},
              "mean_calibration_difference": challenger.get("mean_calibration_difference"),
              "overlap": (record.get("overlap") or {}).get("count"),
              "consecutive_refusals": record.get("consecutive_refusals")}
    return {k: float(v) for k, v in values.items() if _number(v) is not None}


def log_decision(uri: str, parent_run_id: str, record: dict) -> str:
    """Log a promotion decision as a run nested under the challenger's MLflow run: tags
    ``gistnet.role: promotion``, ``gistnet.registry``, ``gistnet.decision``, ``gistnet.reason``; the
    criteria as params; ``decision_metrics``; ``promotion.json`` as an artifact. The parent run gets
    the tag ``gistnet.promotion.<registry id>: promoted|refused``. Returns the new run's id; a run
    whose logging fails ends FAILED with the reason."""
    from mlflow.entities import Metric, Param, RunTag

    from gistnet.observe.tracking import ERROR_TAG, PARENT_TAG, ROLE_TAG, RUN_TAG, run_tags

    mlflow_client = client(uri)
    experiment = mlflow_client.get_run(parent_run_id).info.experiment_id
    rid = registry_id(record["registry"])
    tags = {PARENT_TAG: parent_run_id, ROLE_TAG: ROLE_PROMOTION, RUN_TAG: str(record.get("run_id")),
            "gistnet.registry": redact(record["registry"]), "gistnet.decision": str(record.get("decision"))}
    run_id = mlflow_client.create_run(experiment, tags=run_tags(tags), run_name=f"promotion {rid}").info.run_id
    try:
        now = int(time.time() * 1000)
        mlflow_client.log_batch(
            run_id, metrics=[Metric(k, v, now, 0) for k, v in decision_metrics(record).items()],
            params=[Param(k, str(v)) for k, v in (record.get("criteria") or {}).items()],
            tags=[RunTag("gistnet.reason", redact(str(record.get("reason")))[:5000])])
        mlflow_client.log_text(run_id, json.dumps(record, indent=1), "promotion.json")
        mlflow_client.set_tag(parent_run_id, f"gistnet.promotion.{rid}", str(record.get("decision")))
        mlflow_client.set_terminated(run_id, "FINISHED")
    except Exception as exc:
        try:
            mlflow_client.set_tag(run_id, ERROR_TAG, redact(f"{type(exc).__name__}: {exc}")[:5000])
            mlflow_client.set_terminated(run_id, "FAILED")
        except Exception:  # noqa: BLE001 - the server is still failing; the first error is raised
            pass
        raise
    return run_id
