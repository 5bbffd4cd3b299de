"""A tool server for the benchmarks: `toolgym serve`'s code path, with options to compare.

    --encoder batched   the shipped QueryEncoder (micro-batching + query cache), i.e. exactly
                        what `toolgym serve` runs
    --encoder naive-*   each request encodes its own query alone (no batching, no cache):
                        naive-default  in asyncio's default thread pool, torch's default threads
                        naive-serial   one at a time, on one thread with one torch thread
                        naive-pool     one per core at once, each on one torch thread

    --loop uvloop       run uvicorn on a uvloop event loop (`toolgym serve` uses asyncio's)
    --reuse-port        bind with SO_REUSEPORT, so several processes can share one port
    --stats FILE        time the encoder, FAISS and snippet selection (_search_profile.py,
                        a few microseconds per call) and append the counters to FILE on SIGUSR1

With neither --loop uvloop nor --reuse-port it calls toolservers.serve.serve(), as `toolgym
serve` does. Reads TOOL_BEARER like `toolgym serve`. Not meant to be run by hand: the
bench_*.py scripts drive it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
from _search_profile import install as install_profile

from toolservers.auth import TokenSet
from toolservers.embedding import Embedder, QueryEncoder
from toolservers.serve import (
    Listener,
    Transport,
    build_app,
    resolve_tokens,
    serve,
    uvicorn_server,
)
from toolservers.service import open_toolbox
from toolservers.tools import Toolbox


class NaiveQueryEncoder(QueryEncoder):
    """One encode call per request, in a worker thread: no coalescing, no cache.

    `workers`/`threads`: a pool of that many threads, each pinned to that many torch threads;
    with workers=None, asyncio.to_thread's default pool and torch's default threads (what the
    server did before its encoder got its own thread).
    """

    def __init__(
        self, embedder: Embedder, workers: int | None = None, threads: int | None = None
    ) -> None:
        super().__init__(embedder, max_batch=1, cache_size=0)
        self.pool = (
            None
            if workers is None
            else ThreadPoolExecutor(workers, initializer=_pin, initargs=(threads or 1,))
        )

    async def encode(self, query: str) -> np.ndarray:
        loop = asyncio.get_running_loop()
        vectors = await loop.run_in_executor(self.pool, self.embedder.encode, [query])  # (1, dim)
        self.batches += 1
        self.encoded += 1
        return vectors[0]


def _pin(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _run_uvicorn(toolbox: Toolbox, listener: Listener, tokens: TokenSet, args: Any) -> None:
    """serve()'s body, with a choice of event loop and an optional SO_REUSEPORT socket."""
    app = build_app(toolbox, listener.transport, tokens, listener.host)
    server = uvicorn_server(app, listener)
    sockets = None
    if args.reuse_port:
        # proto=IPPROTO_TCP, or asyncio leaves Nagle on for the accepted connections
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((listener.host, listener.port))
        sockets = [sock]
    loop_factory = asyncio.new_event_loop
    if args.loop == "uvloop":
        import uvloop

        loop_factory = uvloop.new_event_loop

    async def run() -> None:
        task = asyncio.create_task(server.serve(sockets=sockets))
        while not server.started and not task.done():
            await asyncio.sleep(0.05)
        if args.ready_file is not None and server.started:
            args.ready_file.write_text("ready\n")  # this very process listens now
        await task

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(run())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--embedding-model", default=None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--transport", choices=["http", "mcp"], default="http")
    parser.add_argument(
        "--encoder",
        choices=["batched", "naive-default", "naive-serial", "naive-pool"],
        default="batched",
    )
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    parser.add_argument("--reuse-port", action="store_true", help="bind with SO_REUSEPORT")
    parser.add_argument("--ready-file", type=Path, help="written once this process listens")
    parser.add_argument(
        "--stats",
        type=Path,
        help="time encode/FAISS/snippets and, on SIGUSR1, append counters here (_search_profile)",
    )
    args = parser.parse_args()
    transport = Transport(args.transport)
    tokens, host = resolve_tokens(False, "127.0.0.1")
    toolbox = open_toolbox(args.corpus, index_dir=args.index, embedding_model=args.embedding_model)
    encoder = toolbox.searcher.encoder
    if encoder is not None and args.encoder != "batched":
        workers = {"naive-default": None, "naive-serial": 1, "naive-pool": os.cpu_count() or 1}
        encoder = NaiveQueryEncoder(encoder.embedder, workers=workers[args.encoder], threads=1)
        toolbox.searcher.encoder = encoder
    if args.stats is not None:
        stats_file: Path = args.stats
        profile = install_profile(toolbox)

        def dump(signum: int, frame: FrameType | None) -> None:
            counters = {k: getattr(encoder, k, 0) for k in ("batches", "encoded", "cache_hits")}
            counters.update(profile.counters())
            with stats_file.open("a") as fh:
                fh.write(json.dumps(counters) + "\n")

        signal.signal(signal.SIGUSR1, dump)
    listener = Listener(transport, host, args.port)
    if args.loop == "asyncio" and not args.reuse_port and args.ready_file is None:
        serve(toolbox, listener, tokens)  # exactly what `toolgym serve` does
    else:
        _run_uvicorn(toolbox, listener, tokens, args)


if __name__ == "__main__":
    main()
