import threading
import time

import pytest

from gistnet.data import reading
from gistnet.errors import DataError
from tests.conftest import loader_threads


def test_read_then_decode_decodes_every_row_once_and_holds_at_most_its_bound():
    readers, decoders, lock = 5, 2, threading.Lock()
    state = {"held": 0, "max_held": 0, "decoding": 0, "max_decoding": 0}
    decoded: list[int] = []

    def change(key: str, by: int) -> None:
        with lock:
            state[key] += by
            state["max_" + key] = max(state["max_" + key], state[key])

    def read(row):
        change("held", 1)
        return row * 2

    def decode(row, data):
        change("decoding", 1)
        time.sleep(0.0005)  # slower than reading, so reads pile up against the bound
        decoded.append(data // 2)
        change("decoding", -1)
        change("held", -1)

    reading.read_then_decode(300, read, decode, readers, decoders)
    assert sorted(decoded) == list(range(300))
    assert state["max_decoding"] == decoders  # decodes ran side by side, never on more threads
    assert state["max_held"] <= 2 * readers + decoders
    assert not loader_threads()


def test_read_then_decode_passes_read_errors_on_and_raises_the_first_decode_error_at_once():
    seen, reads = {}, []

    def read(row):
        reads.append(row)
        if row == 3:
            raise OSError("disk gone")
        return b"x"

    def decode(row, data):
        seen[row] = data
        if row == 40:
            raise DataError("the manifest asks for frame 9")

    with pytest.raises(DataError, match="frame 9"):
        reading.read_then_decode(2000, read, decode, readers=4, decoders=2)
    assert isinstance(seen[3], OSError) and seen[0] == b"x"
    assert len(reads) < 2000  # stopped: no read started after the failure but those already waiting
    assert not loader_threads()


def test_decoding_threads_are_at_most_the_usable_cpus():
    import joblib

    assert reading.decode_threads(1) == 1
    assert reading.decode_threads(10_000) == joblib.cpu_count()
