"""A run lease: one live process per (fold, model) unit.

Two processes started with the same run id and the same unit (a CronJob that overlaps
itself, a user re-running while a pod still lives) would both train and both write. So
before training a unit a process takes its lease, ``<unit>/lease.json``, created with
``If-None-Match: *`` (``Store.write_bytes_if``): of two processes that try at once, one
creates it. The holder renews it every third of ``output.lease_ttl_s`` with ``If-Match``
the version it wrote last, and deletes it when the unit ends (finished, failed or
SIGTERM).

A process that finds the lease held logs who holds it (host or pod, process, since when)
and watches it for up to one TTL. Liveness is judged by whether the object changes, on this
process's own monotonic clock, so clocks that disagree between machines do not matter: a
holder that died (SIGKILL, a lost node) stops renewing, and once its lease has not changed
for a whole TTL it is taken over (``If-Match`` the stale version, so of two waiters one
wins). A holder on this host (same host name and PID namespace) whose process no longer
exists is taken over at once. If the lease is still being renewed after one TTL the process
exits with ``LeaseHeld`` (exit 10), which the chart's podFailurePolicy retries. A holder
that finds its lease taken over (it stalled for longer than a TTL) exits at once with the
same code rather than keep writing next to the new holder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Callable

from gistnet.data.storage import Store
from gistnet.errors import EXIT_LEASED, LeaseHeld, PreconditionFailed, StorageError

log = logging.getLogger(__name__)

LEASE = "lease.json"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return ""


def identity() -> dict:
    """Who this process is, as a lease records it (a pod's host name is the pod's name)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "pid_namespace": _pid_namespace()}


def _describe(holder: dict) -> str:
    return (f"{holder.get('host', '?')} (pid {holder.get('pid', '?')}) since {holder.get('since', '?')}, "
            f"last renewed {holder.get('renewed', '?')}")


def _dead_here(holder: dict, me: dict) -> bool:
    """True when the holder ran on this host, in this PID namespace, and its process is gone."""
    if not me["pid_namespace"] or holder.get("host") != me["host"] or holder.get("pid_namespace") != me["pid_namespace"]:
        return False
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0 or pid == me["pid"]:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by someone else
        return False
    return False


def _exit_lost(message: str) -> None:
    """The default for a holder whose lease was taken over: stop writing at once."""
    log.error("%s", message)
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stderr.write(f"gistnet: unit leased: {message}\n")
    sys.stderr.flush()
    os._exit(EXIT_LEASED)


class Lease:
    """The lease object ``key`` in ``store`` for the unit called ``what``."""

    def __init__(self, store: Store, key: str, ttl_s: float, what: str,
                 on_lost: Callable[[str], None] = _exit_lost, clock: Callable[[], float] = time.monotonic,
                 me: dict | None = None):
        self.store, self.key, self.ttl, self.what = store, key, float(ttl_s), what
        self.on_lost, self.clock = on_lost, clock
        self.me = me or identity()
        self.token = uuid.uuid4().hex
        self.since = _now()
        self.beats = 0
        self.etag: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def uri(self) -> str:
        return self.store.uri_of(self.key)

    def _body(self) -> bytes:
        return json.dumps({**self.me, "token": self.token, "unit": self.what, "since": self.since,
                           "renewed": _now(), "beats": self.beats, "ttl_s": self.ttl}, indent=1).encode()

    def acquire(self) -> None:
        """Take the lease (waiting up to one TTL for a holder to end or go stale), or raise LeaseHeld."""
        poll = min(max(self.ttl / 10, 0.05), 5.0)
        deadline = seen_etag = seen_at = None
        while True:
            try:
                self.etag = self.store.write_bytes_if(self.key, self._body(), if_none_match=True)
                log.info("%s: leased to this process (%s)", self.what, self.uri)
                break
            except PreconditionFailed:
                pass
            try:
                data, etag = self.store.read_with_etag(self.key)
            except FileNotFoundError:
                continue  # released meanwhile: try to create it again
            holder = _parse(data)
            if holder.get("token") == self.token:  # this process's create landed, its reply was lost
                self.etag = etag
                break
            now = self.clock()
            if deadline is None:
                deadline = now + self.ttl
                log.warning("%s is being trained by %s (%s); waiting up to %gs (output.lease_ttl_s) for it to end",
                            self.what, _describe(holder), self.uri, self.ttl)
            if etag != seen_etag:
                seen_etag, seen_at = etag, now  # first seen, or renewed since
            dead = _dead_here(holder, self.me)
            if dead or now - seen_at >= self.ttl:
                try:
                    self.etag = self.store.write_bytes_if(self.key, self._body(), if_match=etag)
                except PreconditionFailed:
                    continue  # renewed, released or taken by another waiter just now: look again
                why = "its process is gone" if dead else f"not renewed for {self.ttl:g}s"
                log.warning("%s: took over the lease of %s (%s)", self.what, _describe(holder), why)
                break
            if now >= deadline:
                raise LeaseHeld(f"{self.what} is being trained by {_describe(holder)}: its lease {self.uri} was "
                                f"renewed within the last {self.ttl:g}s (output.lease_ttl_s); not training it twice")
            time.sleep(poll)
        self._thread = threading.Thread(target=self._heartbeat, name=f"lease {self.what}", daemon=True)
        self._thread.start()

    def _heartbeat(self) -> None:
        interval = self.ttl / 3
        while not self._stop.wait(interval):
            with self._lock:
                if self._stop.is_set():
                    return
                self.beats += 1
                try:
                    self.etag = self.store.write_bytes_if(self.key, self._body(), if_match=self.etag)
                except PreconditionFailed:
                    holder, etag = self._current_holder()
                    if holder.get("token") == self.token:  # this renewal landed, its reply was lost (a retry)
                        self.etag = etag
                        continue
                    self.etag = None
                    self.on_lost(f"{self.what}: lost its lease {self.uri} to {_describe(holder)} (this process did "
                                 f"not renew it for over {self.ttl:g}s); stopping without writing more")
                    return
                except StorageError as exc:  # a blip: the next beat tries again, well within the TTL
                    log.warning("%s: could not renew the lease %s: %s", self.what, self.uri, exc)

    def _current_holder(self) -> tuple[dict, str | None]:
        try:
            data, etag = self.store.read_with_etag(self.key)
            return _parse(data), etag
        except Exception:  # noqa: BLE001 - gone or unreadable: not this process's
            return {}, None

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still this process's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, self.ttl))
        with self._lock:
            if self.etag is None:
                return
            try:
                if _parse(self.store.read(self.key)).get("token") == self.token:
                    self.store.delete(self.key)
            except FileNotFoundError:
                pass
            except StorageError as exc:  # it expires after one TTL anyway
                log.warning("%s: could not release the lease %s: %s", self.what, self.uri, exc)
            self.etag = None


def _parse(data: bytes) -> dict:
    try:
        holder = json.loads(data)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


@contextlib.contextmanager
def hold(store: Store, key: str, ttl_s: float, what: str, enabled: bool = True):
    """``with hold(...)``: the body runs while this process holds the lease ``key``."""
    if not enabled:
        yield None
        return
    lease = Lease(store, key, ttl_s, what)
    lease.acquire()
    try:
        yield lease
    finally:
        lease.release()
