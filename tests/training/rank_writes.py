"""``python -m tests.training.rank_writes ARGS...``: ``gistnet ARGS...`` with every store write
recorded with the rank that made it, so a test can tell which training process wrote what.

Each process appends ``<RANK> <method> <uri>`` lines to ``$GISTNET_TEST_WRITES/writes-<pid>.txt``
for every write, upload and delete on any store (local folder or S3). Run it under torchrun
in place of ``-m gistnet``.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

WRITES_ENV = "GISTNET_TEST_WRITES"
METHODS = ("write_bytes", "write_bytes_if", "upload_file", "delete")


def install(folder: str | os.PathLike) -> None:
    """Record every store write of this process under ``folder``."""
    from gistnet.data import storage

    log = Path(folder) / f"writes-{os.getpid()}.txt"
    rank = os.environ.get("RANK", "0")
    for cls in (storage.LocalStore, storage.S3Store):
        for name in METHODS:
            method = cls.__dict__.get(name)
            if method is None or getattr(method, "recorded", False):
                continue

            def recorder(self, key, *args, _method=method, _name=name, **kwargs):
                with open(log, "a") as f:
                    f.write(f"{rank} {_name} {self.uri_of(key)}\n")
                return _method(self, key, *args, **kwargs)

            wrapped = functools.wraps(method)(recorder)
            wrapped.recorded = True
            setattr(cls, name, wrapped)


def read(folder: str | os.PathLike) -> list[tuple[int, str, str]]:
    """Every recorded write: (rank, method, uri)."""
    rows = []
    for path in sorted(Path(folder).glob("writes-*.txt")):
        for line in path.read_text().splitlines():
            rank, method, uri = line.split(" ", 2)
            rows.append((int(rank), method, uri))
    return rows


def writers_other_than_rank_0(rows: list[tuple[int, str, str]]) -> list[tuple[int, str, str]]:
    return [row for row in rows if row[0] != 0]


if __name__ == "__main__":
    install(os.environ[WRITES_ENV])
    from gistnet.cli import main

    main()
