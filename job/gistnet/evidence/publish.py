"""Writing ``report.json`` compare-and-swap, so a complete report is never replaced by a partial one.

Several processes may aggregate one run at once: every fan-out unit that finishes last (as it
sees it), and a hand-run ``gistnet aggregate``. Each pools the units it found finished; one that
looked before the last unit finished builds a partial report. Written blindly, whichever
finished last would win, and a run whose units all finished could end ``partial``.

So ``publish`` reads the stored report and its entity tag first, builds, and then writes
``report.json`` with ``If-Match`` that tag (``If-None-Match: *`` when there was none): if
another process wrote in between, the write fails and this one reads and builds again, now
seeing at least the units the other saw. A built report never replaces one that is complete
while it is partial, or one that covers units it does not. The documents beside the report
(report.md, report.html, checklist.md, model cards) are written only after this process's
report won the compare-and-swap, so a losing aggregation, or one that dies before its write,
leaves no document of its own; a winner that finds, once its documents are written, that
another process stored a report after its own aggregates again, so the documents written last
are those of the report stored last. (A process killed between its report and its documents
leaves the previous documents; ``gistnet aggregate`` writes them again.)
"""

from __future__ import annotations

import json
import logging
from typing import Callable

from gistnet.data.storage import Store
from gistnet.errors import PreconditionFailed, StorageError

log = logging.getLogger(__name__)

REPORT = "report.json"
ATTEMPTS = 8  # each retry follows another process's successful write, so this bounds contention


def covered(report: dict) -> set[tuple]:
    """The (fold, model) units a report pools."""
    return {(u.get("fold"), u.get("model")) for u in report.get("evaluation", {}).get("finished", [])}


def may_replace(new: dict, old: dict) -> bool:
    """False when ``new`` would lose something ``old`` has: complete -> partial, or a unit
    ``old`` pools and ``new`` does not."""
    if old.get("status") == "complete" and new.get("status") != "complete":
        return False
    return covered(old) <= covered(new)


def read_report(out: Store) -> tuple[dict | None, str | None]:
    """The stored report and its entity tag; (None, None) when there is none."""
    try:
        data, etag = out.read_with_etag(REPORT)
    except FileNotFoundError:
        return None, None
    try:
        return json.loads(data), etag
    except ValueError:  # damaged: replaceable, but only in the version read
        return {}, etag


def publish(out: Store, build: Callable[[], tuple[dict, Callable[[], None]]], attempts: int = ATTEMPTS) -> dict:
    """``build()`` pools what is stored now and returns the report and a function that writes
    its documents; store the report compare-and-swap and return it (or the stored one that a
    fresh build could not improve on)."""
    refused = None
    for _ in range(attempts):
        old, etag = read_report(out)
        final, write_documents = build()
        if old and not may_replace(final, old):
            if refused == etag:  # built twice from what is stored now, and still less: keep the stored one
                log.warning("%s pools units no longer stored (deleted?); left as it is", out.uri_of(REPORT))
                return old
            # Another process stored more while this one built from an older listing: build again.
            refused = etag
            log.info("%s pools more units than this aggregation saw; aggregating again", out.uri_of(REPORT))
            continue
        data = json.dumps(final, indent=2).encode()
        try:
            if etag is None:
                stored = out.write_bytes_if(REPORT, data, if_none_match=True)
            else:
                stored = out.write_bytes_if(REPORT, data, if_match=etag)
        except PreconditionFailed:
            log.info("%s was written by another process meanwhile; aggregating again", out.uri_of(REPORT))
            continue
        write_documents()  # only the winner of the compare-and-swap writes documents
        if read_report(out)[1] != stored:  # another report was stored since: its documents must be the last
            log.info("%s was replaced while its documents were written; aggregating again", out.uri_of(REPORT))
            continue
        return final
    raise StorageError(f"{out.uri_of(REPORT)} kept changing while aggregating ({attempts} attempts); "
                       "run gistnet aggregate again")
