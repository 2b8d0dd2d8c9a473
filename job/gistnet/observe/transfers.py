"""Bytes moved to and from storage, counted for the metrics."""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass
class TransferStats:
    """Byte counters the metrics stage reads; guarded because downloads run in threads."""

    bytes_downloaded: int = 0
    bytes_uploaded: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def add(self, downloaded: int = 0, uploaded: int = 0) -> None:
        with self._lock:
            self.bytes_downloaded += downloaded
            self.bytes_uploaded += uploaded
