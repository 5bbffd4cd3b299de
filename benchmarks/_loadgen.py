"""Closed-loop HTTP/1.1 load generator, kept as cheap as Python allows (run as a subprocess).

Each of `--concurrency` clients holds one keep-alive connection (raw asyncio streams, uvloop
when installed) and sends pre-built POST requests back to back. Request bodies come from a
file, one per line. With `--group 1` every request takes the next unused body, so no two
requests repeat (`repeats` counts wrap-arounds if the file runs out); with `--group G` the
clients form groups of G that walk the same sequence of bodies, as the members of a GRPO
group repeat each other's queries.

Prints `START` when the measured window opens, `STOP` when it closes, then one JSON line:
completed requests, errors, requests/s, latency percentiles (ms) and the client's own CPU
seconds inside the window. Not meant to be run by hand: the bench_*.py scripts drive it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _request(path: str, port: int, token: str, body: bytes, extra: list[str]) -> bytes:
    head = [
        f"POST {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        f"Authorization: Bearer {token}",
        "Content-Type: application/json",
        *extra,
        f"Content-Length: {len(body)}",
        "",
        "",
    ]
    return "\r\n".join(head).encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    at = lower.find(b"\r\ncontent-length:")
    if at >= 0:
        end = lower.index(b"\r\n", at + 2)
        length = int(lower[at + 17 : end])
        return status, await reader.readexactly(length)
    if b"transfer-encoding: chunked" not in lower:
        raise RuntimeError("response has neither Content-Length nor chunked encoding")
    parts: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return status, b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


class Load:
    def __init__(self, args: argparse.Namespace) -> None:
        bodies = Path(args.bodies).read_bytes().splitlines()
        extra = list(args.header or [])
        self.requests = [_request(args.path, args.port, args.token, b, extra) for b in bodies]
        self.args = args
        self.group = max(1, args.group)
        self.groups = (args.concurrency + self.group - 1) // self.group
        self.next_body = 0
        self.repeats = 0
        self.measuring = False
        self.stopping = False
        self.latencies: list[float] = []
        self.errors = 0
        self.error_marker = args.error_marker.encode() if args.error_marker else None
        self.sample: bytes = b""

    def _take(self, client: int, k: int) -> bytes:
        if self.group == 1:
            index = self.next_body
            self.next_body += 1
        else:
            index = (client // self.group) + k * self.groups
        if index >= len(self.requests):
            self.repeats += 1
        return self.requests[index % len(self.requests)]

    async def client(self, client: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.args.port)
        k = 0
        try:
            while not self.stopping:
                request = self._take(client, k)
                k += 1
                started = time.perf_counter()
                writer.write(request)
                status, body = await _read_response(reader)
                elapsed = time.perf_counter() - started
                if not self.measuring:
                    continue
                failed = status != 200 or (
                    self.error_marker is not None and self.error_marker in body
                )
                if failed:
                    self.errors += 1
                    if not self.sample:
                        self.sample = body[:300]
                else:
                    self.latencies.append(elapsed)
        finally:
            writer.close()

    async def run(self) -> dict[str, object]:
        tasks = [asyncio.create_task(self.client(c)) for c in range(self.args.concurrency)]
        await asyncio.sleep(self.args.warmup)
        self.measuring = True
        print("START", flush=True)
        cpu0, t0 = _cpu_seconds(), time.perf_counter()
        await asyncio.sleep(self.args.duration)
        self.measuring = False
        cpu1, t1 = _cpu_seconds(), time.perf_counter()
        print("STOP", flush=True)
        self.stopping = True
        done, _ = await asyncio.wait(tasks, timeout=30)
        failures = [t.exception() for t in done if t.exception() is not None]
        if failures:
            raise RuntimeError(f"{len(failures)} clients failed: {failures[0]!r}")
        lat = sorted(self.latencies)
        n = len(lat)

        def pct(p: float) -> float:
            return lat[min(n - 1, int(p * n))] * 1000 if n else float("nan")

        return {
            "completed": n,
            "errors": self.errors,
            "error_sample": self.sample.decode("utf-8", "replace"),
            "repeats": self.repeats,
            "window_s": t1 - t0,
            "rps": n / (t1 - t0),
            "p50_ms": pct(0.50),
            "p90_ms": pct(0.90),
            "p99_ms": pct(0.99),
            "max_ms": lat[-1] * 1000 if n else float("nan"),
            "client_cpu_s": cpu1 - cpu0,
        }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--bodies", required=True, help="file, one JSON request body per line")
    parser.add_argument("--header", action="append", help="extra 'Name: value' header")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--group", type=int, default=1)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--error-marker", default="", help="a 200 body containing this fails")
    args = parser.parse_args()
    loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        result = runner.run(Load(args).run())
    print(json.dumps(result), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
