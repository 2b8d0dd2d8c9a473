"""Pseudonyms: keyed (HMAC), stable for one key, the random key kept only under private/."""

import hashlib
import hmac
import json
import logging

import pytest
from gistnet.data import privacy
from gistnet.data.storage import LocalStore
from gistnet.errors import ConfigError


def test_pseudonym_is_an_hmac_of_the_value_not_an_unkeyed_hash():
    key = b"k" * 32
    p = privacy.Pseudonymizer(key, True)
    expected = hmac.new(key, b"patient\0MRN123", hashlib.sha256).hexdigest()[:20]
    assert p.patient("MRN123") == f"p-{expected}"
    assert hashlib.sha256(b"MRN123").hexdigest()[:20] not in p.patient("MRN123")
    assert privacy.Pseudonymizer(b"j" * 32, True).patient("MRN123") != p.patient("MRN123")
    assert p.patient("") == ""


def test_the_environment_key_is_used_and_never_written(tmp_path):
    out = LocalStore(tmp_path)
    p = privacy.for_run(out, True, environ={privacy.ENV_KEY: "a-secret-from-the-chart-0123456789"})
    assert p.from_env and p.key("MRN123/a.dcm").startswith("k-")
    p.save(out)
    assert not out.exists(privacy.KEY_FILE)
    assert json.loads(out.read(privacy.KEYS_FILE)) == {p.key("MRN123/a.dcm"): "MRN123/a.dcm"}
    with pytest.raises(ConfigError, match="at least 16 bytes"):
        privacy.for_run(out, False, environ={privacy.ENV_KEY: "short"})


def test_a_random_key_is_kept_under_private_and_reused_on_resume(tmp_path):
    out = LocalStore(tmp_path)
    first = privacy.for_run(out, False, environ={})
    name = first.patient("MRN123")
    first.save(out)
    assert out.exists(privacy.KEY_FILE) and privacy.KEY_FILE.startswith(privacy.PRIVATE)
    again = privacy.for_run(out, False, environ={})
    assert again.patient("MRN123") == name and not again.generated
    assert privacy.for_run(LocalStore(tmp_path / "other"), False, environ={}).patient("MRN123") != name
    assert first.key("MRN123/a.dcm") == "MRN123/a.dcm"  # data.pseudonymize_keys off: keys as they are


def test_several_processes_need_the_environment_key(tmp_path):
    p = privacy.for_run(LocalStore(tmp_path), False, environ={})
    privacy.check_shared(p, True)  # no pseudonym made yet: nothing to agree on
    p.patient("x")
    with pytest.raises(ConfigError, match="set GISTNET_PSEUDONYM_KEY"):
        privacy.check_shared(p, True)
    privacy.check_shared(p, False)


def test_a_run_keyed_from_the_environment_refuses_to_go_on_without_that_key(tmp_path):
    run = LocalStore(tmp_path)
    key = "a-secret-from-the-chart-0123456789"
    trained = privacy.for_run(run, False, environ={privacy.ENV_KEY: key})
    name = trained.patient("MRN123")
    trained.save(run)
    with pytest.raises(ConfigError, match="was keyed with GISTNET_PSEUDONYM_KEY .*: set GISTNET_PSEUDONYM_KEY"):
        privacy.for_run(run, False, environ={})
    assert not run.exists(privacy.KEY_FILE)
    assert key not in "".join(p.read_text() for p in (tmp_path / "private").iterdir())  # recorded, never written
    with pytest.raises(ConfigError, match="GISTNET_PSEUDONYM_KEY is not the key run"):
        privacy.for_run(run, False, environ={privacy.ENV_KEY: "another-secret-of-the-same-length"})
    assert privacy.for_run(run, False, environ={privacy.ENV_KEY: key}).patient("MRN123") == name
    # a run trained again from scratch (--force) makes new pseudonyms with whatever key it has
    assert privacy.for_run(run, False, environ={}, fresh=True).generated


def test_the_random_key_is_logged_only_where_and_when_it_is_written(tmp_path, caplog):
    run = LocalStore(tmp_path)
    with caplog.at_level(logging.INFO, logger="gistnet"):
        unused = privacy.for_run(run, False, environ={})
        unused.save(run)  # no patient id, no pseudonymized key: no pseudonym, no key to keep
    assert "random key" not in caplog.text and not run.exists(privacy.KEY_FILE)
    with caplog.at_level(logging.INFO, logger="gistnet"):
        used = privacy.for_run(run, False, environ={})
        used.patient("MRN123")
        used.save(run)
    assert f"pseudonyms use a random key, kept at {run.uri_of(privacy.KEY_FILE)}" in caplog.text
    assert run.exists(privacy.KEY_FILE)
