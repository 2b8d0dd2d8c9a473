import dataclasses
import re

import pytest
import yaml

from gistnet import config
from gistnet.errors import ConfigError


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_defaults_reproduce_the_paper():
    c = config.load_config(environ={})
    assert c.data.image_size == 224 and c.split.val_fraction == 0.2 and c.split.method == "holdout"
    assert c.train.models == ("resnet34", "resnet50")
    assert c.train.batch_size == 32 and c.train.epochs == 200
    assert c.augmentation.mode == "paper"
    assert c.evaluate.ci_method == "wilson"


def test_precedence_flag_over_env_over_yaml(tmp_path):
    p = write(tmp_path, "train:\n  epochs: 5\n  batch_size: 8\ndata:\n  image_size: 64\n")
    env = {"GISTNET_TRAIN_EPOCHS": "7", "GISTNET_DATA_IMAGE_SIZE": "48"}
    c = config.load_config(p, {"train.epochs": 9}, env)
    assert c.train.epochs == 9  # flag
    assert c.data.image_size == 48  # env over YAML
    assert c.train.batch_size == 8  # YAML over default
    assert c.train.seed == 0  # default


def test_env_parses_lists_dicts_and_bools():
    env = {"GISTNET_TRAIN_MODELS": "resnet34", "GISTNET_OUTPUT_FORCE": "true",
           "GISTNET_TRAIN_INIT_WEIGHTS": "resnet34=s3://b/w.safetensors"}
    c = config.load_config(environ=env)
    assert c.train.models == ("resnet34",)
    assert c.output.force is True
    assert c.train.init_weights == {"resnet34": "s3://b/w.safetensors"}


def test_config_file_from_env_variable(tmp_path):
    p = write(tmp_path, "train:\n  epochs: 3\n")
    assert config.load_config(environ={"GISTNET_CONFIG": str(p)}).train.epochs == 3


@pytest.mark.parametrize("text, fragment", [
    ("train:\n  epoch: 5\n", "unknown key train.epoch"),
    ("trian:\n  epochs: 5\n", "unknown section 'trian'"),
    ("train:\n  epochs: five\n", "train.epochs: expected an integer"),
    ("train:\n  epochs: 0\n", "train.epochs must be >= 1"),
    ("train:\n  batch_size: -4\n", "train.batch_size must be >= 2"),
    ("train:\n  batch_size: 1\n", "train.batch_size must be >= 2, got 1"),
    ("train:\n  epochs: -3\n", "train.epochs must be >= 1, got -3"),
    ("storage:\n  connect_timeout: -5\n", "storage.connect_timeout must be > 0, got -5"),
    ("split:\n  val_fraction: .nan\n", "split.val_fraction must be in (0, 1), got nan"),
    ("metrics:\n  port: 70000\n", "metrics.port must be in [0, 65535], got 70000"),
    ("train:\n  models: [resnet18]\n", "unknown model 'resnet18'"),
    ("train: [1, 2\n", "malformed YAML"),
    ("- a\n- b\n", "top level must be a mapping"),
    ("evaluate:\n  ci_method: exact\n", "evaluate.ci_method must be one of"),
    ("train:\n  deterministic: maybe\n", "expected true or false"),
    ("train:\n  checkpoint_interval_s: -1\n", "train.checkpoint_interval_s must be >= 0"),
])
def test_bad_config_names_the_key(tmp_path, text, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        config.load_config(write(tmp_path, text), environ={})


def test_bad_env_value_names_the_variable():
    with pytest.raises(ConfigError, match="GISTNET_TRAIN_EPOCHS"):
        config.load_config(environ={"GISTNET_TRAIN_EPOCHS": "lots"})


def test_missing_config_file():
    with pytest.raises(ConfigError, match="cannot read config file"):
        config.load_config("/nonexistent/gistnet.yaml", environ={})


def test_round_trip_yaml_and_frozen():
    c = config.load_config(environ={})
    again = config.load_config(environ={}, flags={})
    assert yaml.safe_load(c.to_yaml()) == again.to_dict()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.train.epochs = 3  # type: ignore[misc]


def test_every_key_is_documented():
    doc = (config.Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    for section, key, _ in config.leaf_keys():
        assert f"`{section}.{key}`" in doc, f"{section}.{key} missing from docs/configuration.md"
        assert config.env_name(section, key) in doc


def test_no_variable_gistnet_reads_is_called_unknown():
    """Every GISTNET_* name in the package's source or the chart (a secret such as
    GISTNET_COMPILE_CACHE_KEY, the config path) is a config key or a known non-key: the
    "ignoring ...: not a gistnet config key" warning never names one gistnet uses."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    text = "".join(p.read_text() for d in ("job/gistnet", "helm") for p in (root / d).rglob("*")
                   if p.is_file() and p.suffix in (".py", ".yaml", ".tpl"))
    used = set(re.findall(r"GISTNET_[A-Z0-9_]*[A-Z0-9]", text))
    assert "GISTNET_COMPILE_CACHE_KEY" in used
    assert config.unknown_env({name: "x" for name in used}) == []


def test_unknown_env_is_reported():
    assert config.unknown_env({"GISTNET_TRAIN_EPOCH": "1", "GISTNET_TRAIN_EPOCHS": "1"}) == ["GISTNET_TRAIN_EPOCH"]


NUMERIC = [(s, k) for s, k, t in config.leaf_keys() if t in (int, float)]


def test_every_numeric_key_has_one_bound():
    assert sorted(config.BOUNDS) == sorted(NUMERIC)


def _outside(bound: config.Bound) -> list:
    """Values just outside each end of a bound (an open end: the end itself)."""
    values = []
    if bound.low is not None:
        values.append(bound.low if bound.low_open else bound.low - 1)
    if bound.high is not None:
        values.append(bound.high if bound.high_open else bound.high + 1)
    return values


def _inside(bound: config.Bound) -> list:
    values = [v for v in (bound.low, bound.high) if v is not None and bound.contains(v)]
    if values:
        return values
    return [(bound.low + bound.high) / 2] if bound.high is not None else [bound.low + 0.5]


@pytest.mark.parametrize("section, key", NUMERIC)
def test_each_bound_is_enforced_at_both_ends(section, key):
    bound = config.BOUNDS[(section, key)]
    typ = int if isinstance(getattr(getattr(config.Config(), section), key), int) else float
    for value in _outside(bound):
        with pytest.raises(ConfigError, match=rf"^{section}\.{key} must be "):
            config.load_config(environ={config.env_name(section, key): str(typ(value))})
    for value in _inside(bound):
        if typ is int and value != int(value):
            continue
        loaded = config.load_config(environ={config.env_name(section, key): str(typ(value))})
        assert getattr(getattr(loaded, section), key) == typ(value)


def test_docs_show_the_bound_of_every_key():
    """docs/configuration.md's range column is the BOUNDS table, key by key (empty when unbounded)."""
    doc = (config.Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    shown = {}
    for line in doc.splitlines():
        m = re.match(r"\| `(\w+)\.(\w+)` \|", line)
        if m:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            shown[(m.group(1), m.group(2))] = cells[4]
    assert set(shown) == {(s, k) for s, k, _ in config.leaf_keys()}
    for key, cell in shown.items():
        bound = config.BOUNDS.get(key)
        assert cell == (f"`{bound.describe()}`" if bound else ""), (key, cell)


def test_saved_and_printed_config_never_holds_url_credentials():
    env = {"GISTNET_METRICS_PUSHGATEWAY": "http://gw-user:pw-SENTINEL@127.0.0.1:9091",
           "GISTNET_STORAGE_ENDPOINT_URL": "http://minio:pw-SENTINEL2@minio:9000"}
    c = config.load_config(environ=env)
    assert c.metrics.pushgateway == env["GISTNET_METRICS_PUSHGATEWAY"]  # the job itself still has it
    text = c.to_yaml()
    assert "pw-SENTINEL" not in text and "gw-user" not in text
    assert c.to_dict()["metrics"]["pushgateway"] == "http://127.0.0.1:9091"
    assert c.to_dict()["storage"]["endpoint_url"] == "http://minio:9000"


def test_moved_val_fraction_names_its_new_key(tmp_path):
    (tmp_path / "c.yaml").write_text("data:\n  val_fraction: 0.3\n")
    with pytest.raises(ConfigError, match=r"data.val_fraction moved to split.val_fraction"):
        config.load_config(tmp_path / "c.yaml", environ={})
    with pytest.raises(ConfigError, match=r"GISTNET_DATA_VAL_FRACTION: moved to GISTNET_SPLIT_VAL_FRACTION"):
        config.load_config(None, environ={"GISTNET_DATA_VAL_FRACTION": "0.3"})
    assert config.load_config(None, {"split.val_fraction": "0.3"}, environ={}).split.val_fraction == 0.3


@pytest.mark.parametrize("flags, message", [({"split.folds": 1}, "split.folds must be >= 2"),
                                            ({"split.method": "loo"}, "split.method must be holdout, kfold or site")])
def test_bad_split_settings(flags, message):
    with pytest.raises(ConfigError, match=message):
        config.load_config(None, flags, environ={})


def test_json_schema_carries_every_bound_and_accepts_exactly_what_the_bounds_accept():
    """The chart's values.schema.json config section (config.json_schema()) refuses the same
    numbers at install time that gistnet refuses at start, checked by jsonschema against
    Bound.contains at each end of every bound."""
    import jsonschema

    schema = config.json_schema()
    for (section, key), bound in config.BOUNDS.items():
        leaf = schema["properties"][section]["properties"][key]
        for end in (bound.low, bound.high):
            if end is None:
                continue
            for value in (end - 1, end, end + 1) if leaf["type"] == "integer" else (end - 0.5, end, end + 0.5):
                accepted = jsonschema.Draft7Validator(leaf).is_valid(value)
                assert accepted == bound.contains(value), (section, key, value)


# ---------------------------------------------------------------- K classes (issue 27)


def test_default_classes_keep_the_binary_label_encoding():
    """Negative 0, positive 1: the encoding every two-class run has used, byte for byte."""
    c = config.load_config(environ={})
    assert c.data.classes == ("GIST", "LM")
    assert c.data.head_classes == ("LM", "GIST") and c.data.positive_index == 1


def test_a_config_without_classes_reads_its_two_classes_from_positive_and_negative():
    c = config.load_config(environ={"GISTNET_DATA_POSITIVE_CLASS": "A", "GISTNET_DATA_NEGATIVE_CLASS": "B"})
    assert c.data.classes == ("A", "B") and c.data.head_classes == ("B", "A")


def test_k_classes_head_order_is_the_other_classes_in_order_then_the_positive_last():
    c = config.load_config(environ={"GISTNET_DATA_CLASSES": "GIST,LM,schwannoma,NET"})
    assert c.data.head_classes == ("LM", "schwannoma", "NET", "GIST") and c.data.positive_index == 3
    assert c.data.negative_class == ""  # no negative class with K > 2
    assert config.load_saved(c.to_yaml(), "saved").data == c.data  # a run's saved config reads back the same


def test_two_classes_resolve_the_negative_class_to_the_other_one():
    c = config.load_config(environ={"GISTNET_DATA_CLASSES": "GIST,schwannoma"})
    assert c.data.negative_class == "schwannoma" and c.data.head_classes == ("schwannoma", "GIST")


@pytest.mark.parametrize("env, fragment", [
    ({"GISTNET_DATA_CLASSES": "LM,schwannoma"}, "data.positive_class 'GIST' is not one of data.classes"),
    ({"GISTNET_DATA_CLASSES": "GIST,LM,NET", "GISTNET_DATA_NEGATIVE_CLASS": "LM"}, "is for two classes"),
    ({"GISTNET_DATA_CLASSES": "GIST,LM", "GISTNET_DATA_NEGATIVE_CLASS": "NET"}, "is not the class of data.classes"),
    ({"GISTNET_DATA_CLASSES": "GIST"}, "data.classes must name 2 to 10 classes, got 1"),
    ({"GISTNET_DATA_CLASSES": ",".join(f"c{i}" for i in range(11)) + ",GIST"}, "must name 2 to 10 classes, got 12"),
    ({"GISTNET_DATA_CLASSES": "GIST,LM,GIST"}, "names a class twice"),
    ({"GISTNET_DATA_CLASSES": "GIST,a/b"}, "must be non-empty and contain no '/'"),
])
def test_bad_classes_are_config_errors(env, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)) as caught:
        config.load_config(environ=env)
    assert caught.value.exit_code == 3
