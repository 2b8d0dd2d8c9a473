"""Objects read on many threads and decoded on as many as there are CPUs.

Reading an object is waiting (an object store's latency wants many requests in flight, hence
``data.download_threads``); decoding it is CPU work that holds Python's GIL between its C calls,
so decoding threads beyond the cores only queue for it (benchmarks/README.md, the loader with
the fan mask). ``read_then_decode`` keeps the two apart with a bounded queue between them.
"""

from __future__ import annotations

import queue
import threading


def decode_threads(threads: int) -> int:
    """Threads that decode: ``threads`` (data.download_threads), at most the CPUs this process may
    use (``joblib.cpu_count``: affinity and a container's CPU quota). Decoding holds the GIL between
    its C calls, so threads beyond the cores only queue for it (benchmarks/README.md, issue 29)."""
    from joblib import cpu_count

    return max(1, min(threads, cpu_count()))


def read_then_decode(count: int, read, decode, readers: int, decoders: int) -> None:
    """``read(row)`` for rows 0..count-1 on ``readers`` threads (network latency wants many),
    ``decode(row, data)`` on ``decoders`` threads (CPU work). ``read``'s exception is passed to
    ``decode`` as its ``data``; an exception ``decode`` raises stops both sides and is raised here.
    At most ``readers`` objects wait between the two, so at most 2 x readers + decoders are held."""
    readers, decoders = max(1, readers), max(1, decoders)
    rows, take = iter(range(count)), threading.Lock()
    ready: queue.Queue = queue.Queue(maxsize=readers)
    stop, failures = threading.Event(), []

    def reader() -> None:
        while not stop.is_set():
            with take:
                row = next(rows, None)
            if row is None:
                return
            try:
                data = read(row)
            except Exception as exc:  # noqa: BLE001 - decode decides: a skip, or the end of the load
                data = exc
            ready.put((row, data))

    def decoder() -> None:
        while (item := ready.get()) is not None:
            if stop.is_set():
                continue  # drained, so a reader never waits on a full queue
            try:
                decode(*item)
            except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread
                failures.append(exc)
                stop.set()

    reading = [threading.Thread(target=reader, name=f"gistnet-read-{i}", daemon=True) for i in range(readers)]
    decoding = [threading.Thread(target=decoder, name=f"gistnet-decode-{i}", daemon=True) for i in range(decoders)]
    for thread in reading + decoding:
        thread.start()
    try:
        for thread in reading:
            thread.join()
    except BaseException:  # KeyboardInterrupt in the join: no new reads; each reader ends after its current one
        stop.set()
        raise
    finally:
        for thread in reading:
            thread.join()
        for _ in decoding:
            ready.put(None)
        for thread in decoding:
            thread.join()
    if failures:
        raise failures[0]
