"""Pseudonyms for patient ids and object keys: what outputs carry instead of the real values.

A pseudonym is an HMAC-SHA256 of the value, never an unkeyed hash (an MRN space is small
enough to hash every number and invert it). The key comes from ``GISTNET_PSEUDONYM_KEY`` (a
Secret in the chart: the same key gives the same pseudonyms across runs, so predictions can be
linked back by whoever holds it), or else is random, generated once per run and kept only at
``<run>/private/pseudonym.key`` (written only when a pseudonym was made). A run records where its
key came from, and a check value of the key (an HMAC of a constant, which reveals nothing of it),
at ``<run>/private/pseudonym-key.json``: on a run keyed from the environment ``predict``,
``evaluate`` and a resume refuse to go on without that key, or with another. With
``data.pseudonymize_keys`` the mapping pseudonym -> object key is kept at
``<run>/private/keys.json``; nothing under ``private/`` is referenced by a report.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
from contextlib import contextmanager

from gistnet.errors import ConfigError, GistnetError

log = logging.getLogger(__name__)

ENV_KEY = "GISTNET_PSEUDONYM_KEY"
PRIVATE = "private/"
KEY_FILE = "private/pseudonym.key"
KEYS_FILE = "private/keys.json"
SOURCE_FILE = "private/pseudonym-key.json"  # where the run's key came from and its check value, never the key


class Pseudonymizer:
    def __init__(self, secret: bytes, from_env: bool, pseudonymize_keys: bool = False, generated: bool = True):
        if len(secret) < 16:
            raise ConfigError(f"{ENV_KEY} must be at least 16 bytes")
        self._secret = secret
        self.from_env = from_env
        self.generated = generated and not from_env  # new in this process: save() keeps it
        self.pseudonymize_keys = pseudonymize_keys
        self.keys: dict[str, str] = {}  # pseudonym -> object key
        self.used = False  # whether any pseudonym was made (the key then matters)
        self.listed: set[str] = set()  # the data's object keys: scrubbed from an error that stops the run

    def watch(self, keys) -> None:
        """Remember the data's object keys, so that ``kept_on_failure`` can name any of them by its pseudonym."""
        if self.pseudonymize_keys:
            self.listed.update(k for k in keys if k)

    def _digest(self, kind: str, value: str) -> str:
        self.used = True
        return hmac.new(self._secret, f"{kind}\0{value}".encode(), hashlib.sha256).hexdigest()[:20]

    def patient(self, value: str) -> str:
        """``p-<hmac>`` for a patient id; "" stays "" (no id)."""
        return f"p-{self._digest('patient', value)}" if value else ""

    def lesion(self, value: str) -> str:
        """``l-<hmac>`` for a lesion id (it may hold a record number, like a patient id); "" stays ""."""
        return f"l-{self._digest('lesion', value)}" if value else ""

    def key(self, key: str) -> str:
        """The object key as outputs show it: itself, or ``k-<hmac>`` with ``data.pseudonymize_keys``."""
        if not self.pseudonymize_keys:
            return key
        name = f"k-{self._digest('key', key)}"
        self.keys[name] = key
        return name

    def check(self) -> str:
        """A check value of the key: equal for equal keys, and it reveals nothing of the key."""
        return hmac.new(self._secret, b"gistnet pseudonym key check", hashlib.sha256).hexdigest()[:20]

    def save(self, out) -> None:
        """Keep a key generated here (never an environment one), once used, and the key mapping, under
        ``private/`` (merged with a mapping already there: a resumed run, an earlier failed attempt).
        Where the key came from is recorded with its check value (an environment key by that only)."""
        if self.generated and self.used:
            out.write_bytes(KEY_FILE, self._secret.hex().encode())
            log.info("no %s: pseudonyms use a random key, kept at %s", ENV_KEY, out.uri_of(KEY_FILE))
        if (self.generated or self.from_env) and self.used:  # a new run's key (a --force re-run replaces it)
            out.write_bytes(SOURCE_FILE, json.dumps({"source": "environment" if self.from_env else "random",
                                                     "variable": ENV_KEY, "check": self.check()}, indent=1).encode())
        if self.keys:
            try:
                kept = json.loads(out.read(KEYS_FILE))
            except (FileNotFoundError, ValueError):
                kept = {}
            out.write_bytes(KEYS_FILE, json.dumps({**kept, **self.keys}, indent=1, sort_keys=True).encode())

    def scrub(self, text: str, key: str) -> str:
        """``text`` (a skip reason, an error's message) with object ``key`` replaced by its pseudonym when
        keys are pseudonymized: an exception's text may quote the path it failed on."""
        return text.replace(key, self.key(key)) if self.pseudonymize_keys and key and key in text else text


def namer(store, pseudo: Pseudonymizer | None, out=None):
    """How an error or a log line names an object key of ``store``: its URI; with
    ``data.pseudonymize_keys`` the URI of its pseudonym instead, and where the mapping is kept
    (``out``'s ``private/keys.json``, written by ``kept_on_failure`` when the error stops the run)."""
    if pseudo is None or not pseudo.pseudonymize_keys:
        return store.uri_of
    mapping = f"; its object key is in {out.uri_of(KEYS_FILE)}" if out is not None else ""

    def name(key: str) -> str:
        return f"{store.uri_of(pseudo.key(key))} (a pseudonym: data.pseudonymize_keys{mapping})"
    return name


@contextmanager
def kept_on_failure(pseudo: Pseudonymizer | None, out, save: bool = True):
    """With data.pseudonymize_keys, an error a user can fix that stops the run names object keys by
    their pseudonyms only: any key of the data (``watch``) left in its message is replaced, and the
    mapping is saved under ``out``'s ``private/`` so the pseudonym can be looked up. Otherwise the
    message is today's and nothing is written. ``save=False`` (a torchrun rank other than 0): only
    rank 0 writes the mapping."""
    try:
        yield
    except GistnetError as exc:
        if pseudo is not None and pseudo.pseudonymize_keys:
            text = str(exc)
            scrubbed = text
            for key in sorted((k for k in pseudo.listed if k in scrubbed), key=len, reverse=True):
                scrubbed = scrubbed.replace(key, pseudo.key(key))
            if scrubbed != text:
                exc.args = (f"{scrubbed} (object keys shown as pseudonyms: data.pseudonymize_keys; the mapping is in "
                            f"{out.uri_of(KEYS_FILE)})",)
            if pseudo.keys and save:
                pseudo.save(out)
        raise


def for_run(out, pseudonymize_keys: bool, environ=None, fresh: bool = False) -> Pseudonymizer:
    """The key from the environment, else the one this run saved (a resumed run), else a new one.
    ConfigError (exit 3) when the run ``out`` was keyed from the environment and the variable is
    unset or holds another key: its pseudonyms would match none of the run's. ``fresh`` (a run
    trained again with --force) makes new pseudonyms, whatever the key was."""
    environ = os.environ if environ is None else environ
    recorded = None if fresh else _recorded(out)
    if recorded is not None and recorded.get("source") == "random":
        recorded = None  # the run's own key, read below (an environment key still wins, as before)
    if environ.get(ENV_KEY):
        pseudo = Pseudonymizer(environ[ENV_KEY].encode(), True, pseudonymize_keys)
        if recorded is not None and recorded.get("check") != pseudo.check():
            raise ConfigError(f"{ENV_KEY} is not the key run {out.uri} was keyed with (its check value in "
                              f"{out.uri_of(SOURCE_FILE)} differs): set it to that run's key, or its pseudonyms "
                              "match none of the run's")
        return pseudo
    if recorded is not None:
        raise ConfigError(f"run {out.uri} was keyed with {ENV_KEY} (recorded in {out.uri_of(SOURCE_FILE)}): set "
                          f"{ENV_KEY} to that key, or a random one would make pseudonyms that match none of the run's")
    try:
        saved = out.read(KEY_FILE).decode().strip()
        return Pseudonymizer(bytes.fromhex(saved), False, pseudonymize_keys, generated=False)
    except (FileNotFoundError, ValueError):
        pass
    return Pseudonymizer(secrets.token_bytes(32), False, pseudonymize_keys)


def _recorded(out) -> dict | None:
    """What ``save`` recorded of an environment key in run ``out`` (None: nothing)."""
    try:
        return json.loads(out.read(SOURCE_FILE))
    except FileNotFoundError:
        return None
    except ValueError:
        return {}  # unreadable: no check value matches it


def outputs(keys: list[str], patient_ids: list[str], unusable: list[dict], store, pseudo: Pseudonymizer
            ) -> tuple[list[str], list[str]]:
    """(keys, patient ids) as outputs show them, and ``unusable`` entries' ``uri`` rewritten in
    place. Patient ids become pseudonyms; when only some images have one, each image without one
    is its own patient (so a split still groups)."""
    shown = [pseudo.key(k) for k in keys]
    if any(patient_ids):
        patient_ids = [pseudo.patient(p) if p else pseudo.patient(f"\0image\0{k}") for k, p in zip(keys, patient_ids)]
    else:
        patient_ids = [""] * len(keys)
    if pseudo.pseudonymize_keys:
        prefix = store.uri.rstrip("/") + "/"
        for entry in unusable:
            if entry.get("uri", "").startswith(prefix):
                entry["uri"] = store.uri_of(pseudo.key(entry["uri"][len(prefix):]))
            if str(entry.get("reason", "")).startswith("duplicate of "):
                entry["reason"] = "duplicate of another object (same bytes)"
    return shown, patient_ids


def check_shared(pseudo: Pseudonymizer, several_processes: bool) -> None:
    """Processes sharing one run must make the same pseudonyms: a random key each cannot."""
    if several_processes and pseudo.used and pseudo.generated:
        raise ConfigError(f"this run is shared by several processes (torchrun, --fold or --model) and has pseudonymized "
                          f"patient ids or keys: set {ENV_KEY} (the chart's Secret) so they all use one key")
