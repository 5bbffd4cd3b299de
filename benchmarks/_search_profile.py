"""Where a /search request's time goes, counted inside a benchmark server (`_server.py --stats`).

Wraps, in the server process only, the three costly steps of a search and reads the CPU of
each thread, so the benchmark can split the server's time per request into: the encoder
(`Embedder.encode`, in the encoder threads), FAISS, snippet selection, and the rest of the
event loop's thread (HTTP parsing, FastAPI/pydantic, JSON, asyncio). Batch sizes actually
formed go into a histogram. Nothing here changes what the server answers; `toolgym serve`
never loads this module.

`counters()` gives flat, cumulative numbers (the benchmark subtracts two snapshots).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

# Upper bounds of the batch-size histogram buckets: 1, 2-7, 8-15, 16-31, 32-63, 64+.
BUCKETS = ((1, "bs_1"), (7, "bs_2-7"), (15, "bs_8-15"), (31, "bs_16-31"), (63, "bs_32-63"))
TOP_BUCKET = "bs_64+"


class SearchProfile:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values: dict[str, float] = {"encode_s": 0.0, "faiss_s": 0.0, "snippet_s": 0.0}
        self.values.update({name: 0 for _, name in BUCKETS})
        self.values[TOP_BUCKET] = 0
        self.main_tid = threading.get_native_id()

    def add(self, key: str, amount: float) -> None:
        with self.lock:  # encoder threads add too
            self.values[key] += amount

    def batch(self, size: int) -> None:
        name = next((n for bound, n in BUCKETS if size <= bound), TOP_BUCKET)
        self.add(name, 1)

    def timed(self, key: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(key, time.perf_counter() - started)

        return wrapper

    def counters(self) -> dict[str, float]:
        loop_cpu, other_cpu = _thread_cpu(self.main_tid)
        with self.lock:
            return {**self.values, "loop_cpu_s": loop_cpu, "encoder_cpu_s": other_cpu}


class _TimedIndex:
    """A FAISS index whose `search` is timed; everything else goes to the real one."""

    def __init__(self, inner: Any, profile: SearchProfile) -> None:
        self._inner = inner
        self.search = profile.timed("faiss_s", inner.search)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def install(toolbox: Any) -> SearchProfile:
    """Wrap the encoder, FAISS and the snippet of `toolbox` (a Toolbox) with timers."""
    import toolservers.tools

    profile = SearchProfile()
    searcher = toolbox.searcher
    if searcher.encoder is not None:
        embedder = searcher.encoder.embedder
        encode = embedder.encode

        def counted_encode(texts: list[str], *args: Any, **kwargs: Any) -> Any:
            profile.batch(len(texts))
            return encode(texts, *args, **kwargs)

        embedder.encode = profile.timed("encode_s", counted_encode)
    if searcher.index.dense is not None:
        searcher.index.dense = _TimedIndex(searcher.index.dense, profile)
    # Where the search tool looks it up (it imported it by name), so it is timed once.
    for name in ("snippet", "snippets"):
        if hasattr(toolservers.tools, name):
            setattr(
                toolservers.tools,
                name,
                profile.timed("snippet_s", getattr(toolservers.tools, name)),
            )
    # Choosing which chunk of each hit's document shows it is snippet selection too.
    chooser = getattr(searcher, "snippet_chunks", None)
    if chooser is not None:
        chooser.choose = profile.timed("snippet_s", chooser.choose)
    return profile


def _thread_cpu(main_tid: int) -> tuple[float, float]:
    """CPU seconds of the event loop's thread, and of all other threads of this process."""
    ticks = os.sysconf("SC_CLK_TCK")
    main = other = 0.0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        seconds = (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
        if int(tid) == main_tid:
            main += seconds
        else:
            other += seconds
    return main, other
