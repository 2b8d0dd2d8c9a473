"""The one typed, frozen configuration tree.

Precedence, highest first: command-line flag > environment (``GISTNET_<SECTION>_<KEY>``)
> YAML file > the defaults below. The defaults reproduce the paper's protocol
(224 px, 8:2 stratified hold-out, 6x augmentation, batch 32, 200 epochs, both ResNets).
Every key is documented in ``docs/configuration.md``; ``gistnet config`` prints the
resolved tree, and each run saves it as ``config.yaml`` next to its outputs.
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from gistnet import bounds, classes
from gistnet.bounds import BOUND_HINTS, BOUNDS, Bound  # noqa: F401 - re-exported: config.BOUNDS
from gistnet.errors import ConfigError

MODEL_NAMES = ("resnet34", "resnet50")
COMPILE_SETTINGS = ("auto", "off", "default", "reduce-overhead")  # gistnet.training.compile.SETTINGS
CI_METHODS = ("wald", "wilson", "agresti-coull", "clopper-pearson")
ENV_PREFIX = "GISTNET_"
# Variables gistnet reads that are not config keys (secrets and the config file's path).
ENV_NON_KEYS = {"GISTNET_CONFIG", "GISTNET_TEST_S3_ENDPOINT", "GISTNET_PSEUDONYM_KEY", "GISTNET_COMPILE_CACHE_KEY"}
ROI_MODES = ("auto", "dicom", "none")  # data.roi: where the region of interest comes from (gistnet.data.region)
# Keys that moved: the old name is refused with a line naming the new one.
MOVED_KEYS = {("data", "val_fraction"): "split.val_fraction"}


@dataclass(frozen=True)
class DataConfig:
    uri: str = ""
    manifest: str = "manifest.csv"
    positive_class: str = "GIST"
    negative_class: str = "LM"
    classes: tuple[str, ...] = ("GIST", "LM")
    image_size: int = 224
    min_images_per_class: int = 5
    download_threads: int = 16
    max_image_pixels: int = 100_000_000
    roi: str = "auto"
    pseudonymize_keys: bool = False


    head_classes = property(lambda self: classes.head_order(self.classes, self.positive_class))  # classes.py
    endpoint_classes = property(lambda self: classes.endpoint_names(self.classes, self.positive_class, self.negative_class))
    positive_index = property(lambda self: self.head_classes.index(self.positive_class))


@dataclass(frozen=True)
class SplitConfig:
    method: str = "holdout"
    folds: int = 5
    val_fraction: float = 0.2


@dataclass(frozen=True)
class AugmentationConfig:
    mode: str = "paper"
    rotation_degrees: float = 30.0
    flip: str = "horizontal"
    clahe_clip_limit: float = 2.0
    clahe_grid: int = 8
    log_gain: float = 1.0
    sigmoid_cutoff: float = 0.5
    sigmoid_gain: float = 10.0
    online_probability: float = 0.5


@dataclass(frozen=True)
class TrainConfig:
    models: tuple[str, ...] = MODEL_NAMES
    epochs: int = 200
    batch_size: int = 32
    optimizer: str = "adamw"
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    seed: int = 0
    device: str = "auto"
    deterministic: bool = True
    init_weights: dict[str, str] = field(default_factory=dict)
    checkpoint_every: int = 10
    checkpoint_interval_s: int = 300
    compile: str = "auto"
    compile_cache: bool = True
    sync_batchnorm: bool = True


@dataclass(frozen=True)
class EvaluateConfig:
    ci_method: str = "wilson"
    confidence_level: float = 0.95
    selection_metric: str = "accuracy"
    subgroups: tuple[str, ...] = ()
    min_subgroup: int = 10
    meta_analysis_interval: str = "auto"  # pooled site AUC: auto (HKSJ below 10 sites, else DL z), hksj, dl


@dataclass(frozen=True)
class ExplainConfig:
    enabled: bool = True
    max_misclassified: int = 12
    correct_per_class: int = 3
    gallery: bool = True


@dataclass(frozen=True)
class OutputConfig:
    uri: str = ""
    run_id: str = ""
    force: bool = False
    lease_ttl_s: int = 60


@dataclass(frozen=True)
class StorageConfig:
    endpoint_url: str = ""
    region: str = ""
    retry_mode: str = "standard"
    max_attempts: int = 10
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    multipart_threshold_mb: int = 64


@dataclass(frozen=True)
class MetricsConfig:
    port: int = 0
    pushgateway: str = ""
    job_name: str = "gistnet"
    grouping_labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DistributedConfig:
    scale_batch: bool = False
    timeout_s: int = 1800
    master_wait_s: int = 600


@dataclass(frozen=True)
class TrackingConfig:
    mlflow_uri: str = ""
    experiment: str = "gistnet"
    model_prefix: str = "gistnet"
    required: bool = False


@dataclass(frozen=True)
class PromotionConfig:
    data: str = ""
    registry: str = ""
    auc_margin: float = 0.02
    alpha: float = 0.05
    max_calibration_shift: float = 0.1


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    explain: ExplainConfig = field(default_factory=ExplainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    promotion: PromotionConfig = field(default_factory=PromotionConfig)

    def to_dict(self) -> dict[str, Any]:
        """The tree as plain data, with credentials in URLs redacted: what is saved and reported."""
        return _plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def redact(text: str) -> str:
    """Strip ``user:password@`` from any URL in ``text``."""
    return re.sub(r"(\w+://)[^/@\s]+@", r"\1", text)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, str):
        return redact(value)
    return value


def _sections() -> dict[str, type]:
    return typing.get_type_hints(Config)


def leaf_keys() -> list[tuple[str, str, Any]]:
    """(section, key, type) for every config key, in declaration order."""
    out = []
    for section, cls in _sections().items():
        hints = typing.get_type_hints(cls)
        out.extend((section, f.name, hints[f.name]) for f in dataclasses.fields(cls))
    return out


def env_name(section: str, key: str) -> str:
    return f"{ENV_PREFIX}{section}_{key}".upper()


# ---------------------------------------------------------------- coercion


def _coerce(path: str, value: Any, typ: Any, from_text: bool) -> Any:
    """Check (or, for env/flag text, parse) one value against its declared type."""
    origin = typing.get_origin(typ)
    if typ is bool:
        if isinstance(value, bool):
            return value
        if from_text and isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise ConfigError(f"{path}: expected true or false, got {value!r}")
    if typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if from_text and isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{path}: expected an integer, got {value!r}")
    if typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if from_text and isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{path}: expected a number, got {value!r}")
    if typ is str:
        if isinstance(value, str):
            return value
        if value is None:
            return ""
        raise ConfigError(f"{path}: expected a string, got {value!r}")
    if origin is tuple:
        if from_text and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError(f"{path}: expected a list of strings, got {value!r}")
    if origin is dict:
        if from_text and isinstance(value, str):
            pairs = [p for p in value.split(",") if p.strip()]
            if not all("=" in p for p in pairs):
                raise ConfigError(f"{path}: expected NAME=VALUE[,NAME=VALUE], got {value!r}")
            value = dict(p.strip().split("=", 1) for p in pairs)
        if value is None:
            return {}
        if isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            return dict(value)
        raise ConfigError(f"{path}: expected a mapping of strings, got {value!r}")
    raise TypeError(f"unsupported config type {typ} at {path}")  # pragma: no cover


# ---------------------------------------------------------------- loading


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config file ({exc.strerror or exc})") from None
    return parse_yaml(text, str(p))


def parse_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{source}{where}: malformed YAML ({problem})") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(loaded).__name__}")
    return loaded


def _from_yaml(raw: Mapping[str, Any], source: str) -> dict[tuple[str, str], Any]:
    sections = _sections()
    types_by_key = {(s, k): t for s, k, t in leaf_keys()}
    out: dict[tuple[str, str], Any] = {}
    for section, body in raw.items():
        if section not in sections:
            raise ConfigError(f"{source}: unknown section {section!r} (known: {', '.join(sections)})")
        if body is None:
            continue
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: section {section!r} must be a mapping")
        for key, value in body.items():
            if (section, key) in MOVED_KEYS:
                raise ConfigError(f"{source}: {section}.{key} moved to {MOVED_KEYS[(section, key)]}")
            if (section, key) not in types_by_key:
                known = ", ".join(k for s, k, _ in leaf_keys() if s == section)
                raise ConfigError(f"{source}: unknown key {section}.{key} (known in {section}: {known})")
            out[(section, key)] = _coerce(f"{source}: {section}.{key}", value, types_by_key[(section, key)], False)
    return out


def _from_env(environ: Mapping[str, str]) -> dict[tuple[str, str], Any]:
    out = {}
    for (section, key), new in MOVED_KEYS.items():
        if env_name(section, key) in environ:
            raise ConfigError(f"{env_name(section, key)}: moved to {env_name(*new.split('.'))}")
    for section, key, typ in leaf_keys():
        name = env_name(section, key)
        if name in environ:
            out[(section, key)] = _coerce(name, environ[name], typ, True)
    return out


def unknown_env(environ: Mapping[str, str]) -> list[str]:
    known = {env_name(s, k) for s, k, _ in leaf_keys()} | ENV_NON_KEYS
    return sorted(n for n in environ if n.startswith(ENV_PREFIX) and n not in known)


def _from_flags(flags: Mapping[str, Any]) -> dict[tuple[str, str], Any]:
    types_by_key = {f"{s}.{k}": ((s, k), t) for s, k, t in leaf_keys()}
    out = {}
    for dotted, value in flags.items():
        if value is None:
            continue
        (section, key), typ = types_by_key[dotted]
        out[(section, key)] = _coerce(f"--{key.replace('_', '-')}", value, typ, True)
    return out


def given_keys(yaml_path: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None,
               flags: Mapping[str, Any] | None = None) -> set[tuple[str, str]]:
    """The (section, key) pairs the YAML file, the environment or the flags set (the rest are defaults)."""
    environ = os.environ if environ is None else environ
    yaml_path = yaml_path or environ.get("GISTNET_CONFIG") or None
    given = set(_from_yaml(read_yaml(yaml_path), str(yaml_path))) if yaml_path else set()
    return given | set(_from_env(environ)) | set(_from_flags(flags or {}))


def load_config(
    yaml_path: str | os.PathLike | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Resolve the configuration: flags > env > YAML > defaults, then validate."""
    environ = os.environ if environ is None else environ
    yaml_path = yaml_path or environ.get("GISTNET_CONFIG") or None
    merged: dict[tuple[str, str], Any] = {}
    if yaml_path:
        merged.update(_from_yaml(read_yaml(yaml_path), str(yaml_path)))
    merged.update(_from_env(environ))
    merged.update(_from_flags(flags or {}))
    return _build(merged)


def load_saved(text: str, source: str) -> Config:
    """A run's saved ``config.yaml`` exactly as it was: no environment, no flags."""
    raw = parse_yaml(text, source)
    if isinstance(raw.get("data"), dict) and "roi" not in raw["data"]:
        raw["data"]["roi"] = "none"  # a run saved before data.roi existed used the whole image
    return _build(_from_yaml(raw, source))


def _build(merged: dict[tuple[str, str], Any]) -> Config:
    classes.resolve(merged, DataConfig.positive_class, DataConfig.negative_class)
    sections: dict[str, dict[str, Any]] = {}
    for (section, key), value in merged.items():
        sections.setdefault(section, {})[key] = value
    config = Config(**{name: cls(**sections.get(name, {})) for name, cls in _sections().items()})
    validate(config)
    return config


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def check_model_names(names: tuple[str, ...], where: str) -> None:
    """ConfigError unless ``names`` lists known models, at least one, none twice."""
    _check(len(names) >= 1, f"{where} must name at least one model")
    for m in names:
        _check(m in MODEL_NAMES, f"{where}: unknown model {m!r} (known: {', '.join(MODEL_NAMES)})")
    _check(len(set(names)) == len(names), f"{where} lists a model twice")


def _check_bounds(c: Config) -> None:
    for (section, key), bound in BOUNDS.items():
        value = getattr(getattr(c, section), key)
        _check(bound.contains(value), f"{section}.{key} must be {bound.phrase()}, got {value}"
                                      f"{BOUND_HINTS.get((section, key), '')}")


def validate(c: Config) -> None:
    _check_bounds(c)
    _check(c.data.roi in ROI_MODES, f"data.roi must be one of {', '.join(ROI_MODES)}, got {c.data.roi!r}")
    _check(c.split.method in ("holdout", "kfold", "site"),
           f"split.method must be holdout, kfold or site, got {c.split.method!r}")
    classes.check(c.data.classes, c.data.positive_class, c.data.negative_class)
    _check(c.augmentation.mode in ("paper", "online", "none"), f"augmentation.mode must be paper, online or none, got {c.augmentation.mode!r}")
    _check(c.augmentation.flip in ("horizontal", "vertical"), f"augmentation.flip must be horizontal or vertical, got {c.augmentation.flip!r}")
    check_model_names(c.train.models, "train.models")
    _check(c.train.optimizer in ("adamw", "sgd"), f"train.optimizer must be adamw or sgd, got {c.train.optimizer!r}")
    _check(c.train.device in ("auto", "cpu", "cuda"), f"train.device must be auto, cpu or cuda, got {c.train.device!r}")
    _check(c.train.compile in COMPILE_SETTINGS,
           f"train.compile must be one of {', '.join(COMPILE_SETTINGS)}, got {c.train.compile!r}")
    for m in c.train.init_weights:
        _check(m in MODEL_NAMES, f"train.init_weights: unknown model {m!r}")
    _check(c.evaluate.ci_method in CI_METHODS, f"evaluate.ci_method must be one of {', '.join(CI_METHODS)}, got {c.evaluate.ci_method!r}")
    _check(c.evaluate.selection_metric in ("accuracy", "roc_auc"), "evaluate.selection_metric must be accuracy or roc_auc")
    _check(c.evaluate.meta_analysis_interval in ("auto", "hksj", "dl"),
           f"evaluate.meta_analysis_interval must be auto, hksj or dl, got {c.evaluate.meta_analysis_interval!r}")
    _check("/" not in c.output.run_id and ".." not in c.output.run_id, f"output.run_id {c.output.run_id!r} must not contain '/' or '..'")
    _check(bool(c.tracking.model_prefix) and "/" not in c.tracking.model_prefix,
           f"tracking.model_prefix must be non-empty and contain no '/', got {c.tracking.model_prefix!r}")
    _check(c.storage.retry_mode in ("standard", "adaptive", "legacy"), "storage.retry_mode must be standard, adaptive or legacy")


def json_schema() -> dict[str, Any]:
    """JSON Schema of a config file (used by the Helm chart's values.schema.json)."""
    return bounds.config_schema(leaf_keys())


def replace(config: Config, **sections: Mapping[str, Any]) -> Config:
    """A copy with some keys changed, e.g. ``replace(c, output={"run_id": "x"})``."""
    return dataclasses.replace(
        config, **{name: dataclasses.replace(getattr(config, name), **values) for name, values in sections.items()}
    )
