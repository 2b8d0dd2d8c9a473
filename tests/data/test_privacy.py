"""Pseudonyms: keyed (HMAC), stable for one key, the random key kept only under private/."""

import hashlib
import hmac
import json

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
