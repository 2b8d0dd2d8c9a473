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
