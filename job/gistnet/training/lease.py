"""A run lease: one live process per (fold, model) unit.

Two processes started with the same run id and the same unit (a CronJob that overlaps
itself, a user re-running while a pod still lives) would both train and both write. So
before training a unit a process takes its lease, ``<unit>/lease.json``, created with
``If-None-Match: *`` (``Store.write_bytes_if``): of two processes that try at once, one
creates it. The holder renews it every quarter of ``output.lease_ttl_s`` with ``If-Match``
the version it wrote last, and deletes it when the unit ends (finished, failed or
SIGTERM).

A process that finds the lease held logs who holds it (host or pod, process, since when)
and watches it for up to one TTL. Liveness is judged by whether the object changes, on this
process's own monotonic clock, so clocks that disagree between machines do not matter: a
holder that died (SIGKILL, a lost node) stops renewing, and once its lease has not changed
for a whole TTL it is taken over (``If-Match`` the stale version, so of two waiters one
wins). A holder on this machine (same host name, PID namespace and boot id: an Indexed Job's
replacement pod on another node reuses the host name) whose process no longer exists and
whose lease went unrenewed for one renewal interval (a quarter of the TTL) is taken over
then. If the lease is still being renewed after one TTL the process
exits with ``LeaseHeld`` (exit 10), which the chart's podFailurePolicy retries. A holder
that finds its lease taken over (it stalled for longer than a TTL) exits at once with the
same code rather than keep writing next to the new holder.

Fencing. A lease alone does not keep a stalled holder out: its renewals may be held back
(a network partition, a slow proxy) while another process, rightly, takes the lease over.
So, as with fencing tokens (Kleppmann, "How to do distributed locking"; etcd's revisions,
ZooKeeper's zxids), two guards stand between a stale holder and the unit's objects:

- its own clock: a holder is valid only until its last successful renewal's *send* time plus
  the TTL less a margin (``MARGIN`` of the TTL), on this process's monotonic clock. A waiter
  starts its TTL no earlier than that renewal landed, so the holder's validity ends before
  a takeover can happen. Past it, renewal errors are no longer blips: a watchdog calls
  ``on_lost`` (exit 10) and every guarded write refuses (``check``).
- the store: each acquisition has a ``generation``, one above the previous holder's. The
  holder first *claims* the unit's checkpoint pointer (the fence object): it stamps it with
  its generation, compare-and-swap (``If-Match`` its entity tag; ``If-None-Match: *`` for a
  stub when there is none). The pointer is then only ever written compare-and-swap by a
  process whose generation it carries (``write_fenced``), so once a successor claimed it, a
  stale holder's pointer write fails in the store (412), and so does its ``result.json``,
  which is written ``If-None-Match: *`` only after such a fenced pointer write.
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
RENEWALS = 4  # per TTL
MARGIN = 0.2  # of the TTL: a holder stops writing this long before a waiter may take over
GENERATION = "lease_generation"  # the key fenced objects carry the writer's generation in


class Fenced(LeaseHeld):
    """This process's lease ended (taken over, or not renewed in time): it must not write."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return ""


def _boot_id() -> str:
    """This kernel's boot id: two machines (or one rebooted) never share it, while host names
    (an Indexed Job's replacement pod reuses ``<job>-<index>``) and namespace inodes may."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def identity() -> dict:
    """Who this process is, as a lease records it (a pod's host name is the pod's name)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "pid_namespace": _pid_namespace(),
            "boot_id": _boot_id()}


def _describe(holder: dict) -> str:
    return (f"{holder.get('host', '?')} (pid {holder.get('pid', '?')}) since {holder.get('since', '?')}, "
            f"last renewed {holder.get('renewed', '?')}")


def _dead_here(holder: dict, me: dict) -> bool:
    """True when the holder ran on this machine (same boot id), in this PID namespace, on this
    host name, and its process is gone."""
    if not me["pid_namespace"] or not me.get("boot_id"):
        return False
    if any(holder.get(k) != me.get(k) for k in ("host", "pid_namespace", "boot_id")):
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
    """The lease object ``key`` in ``store`` for the unit called ``what``; ``fence`` is the
    ``(store, key)`` of the object it claims and fences (the unit's checkpoint pointer)."""

    def __init__(self, store: Store, key: str, ttl_s: float, what: str,
                 on_lost: Callable[[str], None] = _exit_lost, clock: Callable[[], float] = time.monotonic,
                 me: dict | None = None, fence: tuple[Store, str] | None = None):
        self.store, self.key, self.ttl, self.what = store, key, float(ttl_s), what
        self.on_lost, self.clock, self.fence = on_lost, clock, fence
        self.me = me or identity()
        self.token = uuid.uuid4().hex
        self.since = _now()
        self.beats = 0
        self.generation = 0
        self.etag: str | None = None
        self.lost: str | None = None  # why this process may no longer write
        self.valid_until = 0.0  # on self.clock: the last successful renewal's send time + TTL - margin
        self.renewed_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watchdog: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def uri(self) -> str:
        return self.store.uri_of(self.key)

    def _body(self) -> bytes:
        return json.dumps({**self.me, "token": self.token, "unit": self.what, "since": self.since,
                           "renewed": _now(), "beats": self.beats, "ttl_s": self.ttl,
                           "generation": self.generation}, indent=1).encode()

    def _renewed(self, sent: float) -> None:
        self.renewed_at = sent
        self.valid_until = sent + self.ttl * (1 - MARGIN)

    def _fence_generation(self) -> int:
        if self.fence is None:
            return 0
        store, key = self.fence
        try:
            value = _parse(store.read(key)).get(GENERATION)
        except FileNotFoundError:
            return 0
        return value if isinstance(value, int) else 0

    def acquire(self) -> None:
        """Take the lease (waiting up to one TTL for a holder to end or go stale), or raise LeaseHeld;
        then claim the fence object with this acquisition's generation."""
        poll = min(max(self.ttl / 10, 0.05), 5.0)
        deadline = seen_etag = seen_at = None
        while True:
            self.generation = self._fence_generation() + 1
            sent = self.clock()
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
            # A holder whose process is gone is taken over early, but only once its lease went
            # unrenewed for a renewal interval: one that renews lives, whatever its PID says here.
            dead = now - seen_at >= self.ttl / RENEWALS + poll and _dead_here(holder, self.me)
            if dead or now - seen_at >= self.ttl:
                held = holder.get("generation")
                self.generation = max(self._fence_generation(), held if isinstance(held, int) else 0) + 1
                sent = self.clock()
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
        self._renewed(sent)
        self._thread = threading.Thread(target=self._heartbeat, name=f"lease {self.what}", daemon=True)
        self._thread.start()
        self._watchdog = threading.Thread(target=self._watch, name=f"lease watchdog {self.what}", daemon=True)
        self._watchdog.start()
        if self.fence is not None:
            self._claim()

    def _lose(self, message: str) -> None:
        if self.lost is None:
            self.lost = message
            self.on_lost(message)

    def _watch(self) -> None:
        """Stop this process once its lease may have been taken over, even while a renewal hangs."""
        while not self._stop.wait(min(self.ttl / 20, 1.0)):
            if self.lost is None and self.clock() > self.valid_until:
                self._lose(f"{self.what}: could not renew its lease {self.uri} for "
                           f"{self.clock() - self.renewed_at:.1f}s (output.lease_ttl_s {self.ttl:g}s); another "
                           "process may take it over now, so this one stops without writing more")
                return

    def _heartbeat(self) -> None:
        interval = self.ttl / RENEWALS
        while not self._stop.wait(interval):
            with self._lock:
                if self._stop.is_set() or self.lost is not None:
                    return
                self.beats += 1
                sent = self.clock()
                try:
                    self.etag = self.store.write_bytes_if(self.key, self._body(), if_match=self.etag)
                    self._renewed(sent)
                except PreconditionFailed:
                    holder, etag = self._current_holder()
                    if holder.get("token") == self.token:  # this renewal landed, its reply was lost (a retry)
                        self.etag = etag
                        self._renewed(sent)
                        continue
                    self.etag = None
                    self._lose(f"{self.what}: lost its lease {self.uri} to {_describe(holder)} (its last renewal "
                               f"that landed was sent {self.clock() - self.renewed_at:.1f}s ago); stopping "
                               "without writing more")
                    return
                except StorageError as exc:  # a blip while the lease is valid; the watchdog ends it after
                    log.warning("%s: could not renew the lease %s: %s", self.what, self.uri, exc)

    def valid(self) -> bool:
        """Whether this process may still write, by its own clock (``check`` without raising)."""
        return self.lost is None and self.clock() <= self.valid_until

    def check(self) -> None:
        """Raise ``Fenced`` unless this process still holds the lease by its own clock."""
        if self.lost is None and self.clock() > self.valid_until:
            self._lose(f"{self.what}: its lease {self.uri} was last renewed {self.clock() - self.renewed_at:.1f}s "
                       f"ago (output.lease_ttl_s {self.ttl:g}s); stopping without writing more")
        if self.lost is not None:
            raise Fenced(self.lost)

    def _claim(self) -> None:
        """Stamp the fence object with this acquisition's generation (a stub when there is none),
        so that a previous holder's compare-and-swap on it fails in the store from now on."""
        store, key = self.fence
        for _ in range(ATTEMPTS):
            self.check()
            try:
                data, etag = store.read_with_etag(key)
                value = _parse(data)
            except FileNotFoundError:
                value, etag = {}, None
            held = value.get(GENERATION)
            if isinstance(held, int) and held >= self.generation:
                self._lose(f"{self.what}: {store.uri_of(key)} was claimed by generation {held} of its lease, "
                           f"after this process's ({self.generation}); stopping without writing more")
                raise Fenced(self.lost)
            if self._cas(store, key, {**value, GENERATION: self.generation}, etag):
                return
        raise Fenced(f"{self.what}: could not claim {store.uri_of(key)}: it kept changing")

    @staticmethod
    def _cas(store: Store, key: str, value: dict, etag: str | None) -> bool:
        data = json.dumps(value).encode()
        try:
            if etag is None:
                store.write_bytes_if(key, data, if_none_match=True)
            else:
                store.write_bytes_if(key, data, if_match=etag)
        except PreconditionFailed:
            return False
        return True

    def write_fenced(self, store: Store, key: str, value: dict) -> None:
        """Write ``value`` (a JSON object, stamped with this generation) to ``key`` only while the
        stored one carries this process's generation: compare-and-swap on its entity tag, so a
        successor's claim in between makes this write fail in the store (``Fenced``)."""
        for _ in range(ATTEMPTS):
            self.check()
            try:
                data, etag = store.read_with_etag(key)
            except FileNotFoundError:
                data, etag = b"{}", None
            held = _parse(data).get(GENERATION)
            if held != self.generation:
                self._lose(f"{self.what}: {store.uri_of(key)} belongs to generation {held} of its lease, not "
                           f"this process's ({self.generation}); stopping without writing more")
                raise Fenced(self.lost)
            if self._cas(store, key, {**value, GENERATION: self.generation}, etag):
                return
        raise Fenced(f"{self.what}: could not write {store.uri_of(key)}: it kept changing")

    def write_once_fenced(self, store: Store, key: str, value: dict) -> None:
        """Write ``value`` to ``key`` once (``If-None-Match: *``), right after proving in the store
        that this process still holds the fence (its pointer rewritten compare-and-swap)."""
        if self.fence is not None:
            fence_store, fence_key = self.fence
            try:
                current = _parse(fence_store.read(fence_key))
            except FileNotFoundError:
                current = {}
            self.write_fenced(fence_store, fence_key, current)
        self.check()
        try:
            store.write_bytes_if(key, json.dumps({**value, GENERATION: self.generation}).encode(), if_none_match=True)
        except PreconditionFailed:
            self._lose(f"{self.what}: {store.uri_of(key)} was written by another process; not replacing it")
            raise Fenced(self.lost) from None

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
            if self.etag is None or self.lost is not None:
                return
            try:
                if _parse(self.store.read(self.key)).get("token") == self.token:
                    self.store.delete(self.key)
            except FileNotFoundError:
                pass
            except StorageError as exc:  # it expires after one TTL anyway
                log.warning("%s: could not release the lease %s: %s", self.what, self.uri, exc)
            self.etag = None


ATTEMPTS = 8


def _parse(data: bytes) -> dict:
    try:
        holder = json.loads(data)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


@contextlib.contextmanager
def hold(store: Store, key: str, ttl_s: float, what: str, enabled: bool = True,
         fence: tuple[Store, str] | None = None):
    """``with hold(...)``: the body runs while this process holds the lease ``key`` (and has
    claimed ``fence``)."""
    if not enabled:
        yield None
        return
    lease = Lease(store, key, ttl_s, what, fence=fence)
    lease.acquire()
    try:
        yield lease
    finally:
        lease.release()
