"""Load test of the read and list tools over HTTP (POST /read, /list) and over MCP (/mcp).

What it measures, all on 127.0.0.1, each server in its own process:

1. HTTP: `toolgym serve --transport http` (exactly as an operator runs it, TOOL_BEARER set),
   `--concurrency` clients with keep-alive connections sending read / list calls that vary
   over every document, offset and prefix, `--rounds` times each (the target is judged on
   the median). The client is wrk (C, one thread: 15-20% of a core here) when installed
   (apt-get install wrk), otherwise benchmarks/_loadgen.py (Python, raw asyncio); with
   `--compare-clients` both run, to show what a Python client itself costs on 2 cores.
2. MCP: `toolgym serve --transport mcp` (stateless, JSON responses), first with raw JSON-RPC
   `tools/call` POSTs identical to the official client's (same client as HTTP, so the two
   transports compare like for like), then with the official `mcp` client (one session over
   an httpx2 pool, `--concurrency` concurrent call_tool calls), whose own CPU is reported.
3. For information, at 64 clients (or the highest level): HTTP served on a uvloop event
   loop (what `toolgym serve` would get from running uvicorn with its own loop factory), and
   by two server processes sharing the port (SO_REUSEPORT). Skip with `--no-variants`.

Target: /read and /list each serve >= 1,500 requests/s over HTTP (judged at 64 clients, or
the highest level run). Exit code 0 either way; each target prints PASS or MISS.

Run:  .venv/bin/python benchmarks/bench_tools.py [--concurrency 64] [--rounds 3]
      [--duration 6] [--compare-clients]. About 3 minutes; the first run also builds the
corpus and a lexical index under benchmarks/out/ (~10 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from _common import (
    DEFAULT_WORKDIR,
    PYTHON,
    SERVER,
    LoadResult,
    ServerProcess,
    free_port,
    log,
    machine_line,
    new_token,
    prepare_corpus,
    prepare_lexical_index,
    run_loadgen,
    run_marked_client,
    run_wrk,
    table,
    toolgym_serve,
    verdict,
    wrk_available,
)

TARGET_RPS = 1500.0
TARGET_CLIENTS = 64
TOOLS = ("read", "list")


# ---------------------------------------------------------------- request bodies


def tool_arguments(corpus_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Valid arguments for read and list over the whole corpus (no call should fail)."""
    from toolservers.corpus import Corpus
    from toolservers.tools import LIST_PAGE_SIZE

    corpus = Corpus(corpus_dir)
    reads: list[dict[str, Any]] = []
    for path in corpus.paths:
        length = len(corpus.text(path))
        reads.append({"path": path})
        if length > 1:
            reads.append({"path": path, "offset": length // 2})
    prefixes = ["", "filings/", *sorted({p.rsplit("-", 3)[0] for p in corpus.paths})]
    lists: list[dict[str, Any]] = []
    for prefix in prefixes:
        start, stop = corpus.under(prefix)
        pages = max(1, -(-(stop - start) // LIST_PAGE_SIZE))
        lists += [{"prefix": prefix, "page": page} for page in range(1, pages + 1)]
    # Interleave so that consecutive requests differ (the order wrk and the clients cycle in).
    return {"read": _spread(reads), "list": _spread(lists)}


def _spread(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    step = 7 if len(items) % 7 else 11
    return [items[(i * step) % len(items)] for i in range(len(items))]


def http_bodies(arguments: list[dict[str, Any]]) -> list[str]:
    return [json.dumps({"arguments": a, "call_id": f"c{i}"}) for i, a in enumerate(arguments)]


def mcp_protocol_version() -> str:
    from mcp_types.version import LATEST_PROTOCOL_VERSION

    return str(LATEST_PROTOCOL_VERSION)


def mcp_headers(tool: str) -> list[str]:
    """The headers the official client sends with a tools/call."""
    return [
        "Accept: application/json, text/event-stream",
        f"MCP-Protocol-Version: {mcp_protocol_version()}",
        "Mcp-Method: tools/call",
        f"Mcp-Name: {tool}",
    ]


def mcp_bodies(tool: str, arguments: list[dict[str, Any]]) -> list[str]:
    """JSON-RPC tools/call bodies shaped like the official client's (same _meta)."""
    meta = {
        "io.modelcontextprotocol/protocolVersion": mcp_protocol_version(),
        "io.modelcontextprotocol/clientInfo": {"name": "mcp", "version": "0.1.0"},
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    return [
        json.dumps(
            {
                "jsonrpc": "2.0",
                "id": i + 1,
                "method": "tools/call",
                "params": {"name": tool, "arguments": a, "_meta": meta},
            }
        )
        for i, a in enumerate(arguments)
    ]


def check_bodies(
    port: int, token: str, path: str, bodies: Sequence[str], headers: Sequence[str], bad: str
) -> None:
    """Send every body once: wrk only sees HTTP status, so make sure no call is refused."""
    extra = dict(h.split(": ", 1) for h in headers)
    for body in bodies:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}{path}",
            data=body.encode(),
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/json",
                **extra,
            },
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = response.read().decode()
        if response.status != 200 or bad in answer:
            raise RuntimeError(f"{path} refused {body}: {answer[:300]}")


# ---------------------------------------------------------------- the official MCP client


async def _official_mcp_load(args: argparse.Namespace) -> dict[str, Any]:
    import resource

    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    arguments = [json.loads(line) for line in Path(args.bodies).read_text().splitlines() if line]
    latencies: list[float] = []
    errors = 0
    sample = ""
    state = {"measuring": False, "stopping": False, "next": 0}

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    limits = httpx2.Limits(
        max_connections=args.concurrency, max_keepalive_connections=args.concurrency
    )
    headers = {"Authorization": f"Bearer {args.token}"}
    url = f"http://127.0.0.1:{args.port}/mcp"
    async with (
        httpx2.AsyncClient(headers=headers, limits=limits, timeout=60) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):

        async def worker() -> None:
            nonlocal errors, sample
            while not state["stopping"]:
                call = arguments[state["next"] % len(arguments)]
                state["next"] += 1
                started = time.perf_counter()
                result = await client.call_tool(args.tool, call)
                elapsed = time.perf_counter() - started
                if not state["measuring"]:
                    continue
                if result.is_error:
                    errors += 1
                    sample = sample or str(result.content)[:300]
                else:
                    latencies.append(elapsed)

        tasks = [asyncio.create_task(worker()) for _ in range(args.concurrency)]
        await asyncio.sleep(args.warmup)
        state["measuring"] = True
        print("START", flush=True)
        cpu0, t0 = cpu(), time.perf_counter()
        await asyncio.sleep(args.duration)
        state["measuring"] = False
        cpu1, t1 = cpu(), time.perf_counter()
        print("STOP", flush=True)
        state["stopping"] = True
        await asyncio.gather(*tasks)
    lat = sorted(latencies)
    n = len(lat)
    return {
        "completed": n,
        "errors": errors,
        "error_sample": sample,
        "rps": n / (t1 - t0),
        "p50_ms": lat[n // 2] * 1000 if n else float("nan"),
        "p99_ms": lat[min(n - 1, int(0.99 * n))] * 1000 if n else float("nan"),
        "client_cpu_s": cpu1 - cpu0,
    }


def official_mcp_client_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench_tools.py --official-mcp-client")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--tool", required=True)
    parser.add_argument("--bodies", required=True, help="file, one arguments object per line")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=8.0)
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(_official_mcp_load(args))), flush=True)
    return 0


def run_official_mcp(
    label: str,
    server: ServerProcess,
    tool: str,
    arguments: list[dict[str, Any]],
    concurrency: int,
    duration: float,
    warmup: float,
) -> LoadResult:
    from _common import bodies_file

    lines = [json.dumps(a) for a in arguments]
    with bodies_file(lines) as path:
        command = [
            PYTHON,
            str(Path(__file__).resolve()),
            "--official-mcp-client",
            "--port",
            str(server.port),
            "--token",
            server.token,
            "--tool",
            tool,
            "--bodies",
            path,
            "--concurrency",
            str(concurrency),
            "--warmup",
            str(warmup),
            "--duration",
            str(duration),
        ]
        return run_marked_client(label, server, command, concurrency, client="mcp (official)")


# ---------------------------------------------------------------- main


def main() -> int:
    if sys.argv[1:2] == ["--official-mcp-client"]:
        return official_mcp_client_main(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", default=str(TARGET_CLIENTS))
    parser.add_argument("--duration", type=float, default=6.0, help="seconds measured per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument("--rounds", type=int, default=3, help="HTTP runs per tool (median)")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument(
        "--client",
        choices=["auto", "wrk", "python"],
        default="auto",
        help="load generator for HTTP and raw MCP (auto: wrk when installed)",
    )
    parser.add_argument(
        "--compare-clients", action="store_true", help="also run HTTP with the Python client"
    )
    parser.add_argument("--no-variants", action="store_true", help="skip uvloop / 2 processes")
    parser.add_argument("--no-official-mcp", action="store_true")
    args = parser.parse_args()
    levels = sorted({int(c) for c in args.concurrency.split(",") if c.strip()})
    top = max(levels)
    at = TARGET_CLIENTS if TARGET_CLIENTS in levels else top
    have_wrk = wrk_available()
    if args.client == "wrk" and not have_wrk:
        parser.error("wrk is not installed (apt-get install wrk), use --client python")
    client = "wrk" if args.client == "wrk" or (args.client == "auto" and have_wrk) else "python"
    if client == "python":
        log("wrk not found: the Python load generator shares the 2 cores with the server")
    clients = [client, "python"] if args.compare_clients and client == "wrk" else [client]

    print(machine_line())
    corpus = prepare_corpus(args.workdir)
    index = prepare_lexical_index(corpus, args.workdir / "index-lexical")
    arguments = tool_arguments(corpus)
    token = new_token()
    results: list[LoadResult] = []

    def load(
        label: str,
        servers: ServerProcess | list[ServerProcess],
        path: str,
        bodies: list[str],
        clients_n: int,
        how: str,
        headers: Sequence[str] = (),
        bad: str = '"output":"Error',
    ) -> LoadResult:
        log(f"  {label}: {clients_n} clients ({how}), {args.warmup:g}+{args.duration:g} s")
        run: Callable[..., LoadResult] = run_wrk if how == "wrk" else run_loadgen
        extra = {} if how == "wrk" else {"error_marker": bad}
        result = run(
            label=label,
            server=servers,
            path=path,
            bodies=bodies,
            concurrency=clients_n,
            duration=args.duration,
            warmup=args.warmup,
            headers=headers,
            **extra,
        )
        results.append(result)
        return result

    def bench_server(extra_args: list[str], label: str, port: int | None = None) -> ServerProcess:
        port = port or free_port()
        ready = args.workdir / f"ready-{port}-{label.replace(' ', '-')}"
        ready.unlink(missing_ok=True)
        command = [PYTHON, str(SERVER), "--corpus", str(corpus), "--index", str(index)]
        command += ["--port", str(port), "--ready-file", str(ready), *extra_args]
        return ServerProcess(command, port, token, label, ready_file=ready)

    log("HTTP: toolgym serve --transport http")
    port = free_port()
    main_runs: dict[tuple[str, int, str], list[LoadResult]] = {}
    with ServerProcess(toolgym_serve(corpus, index, port), port, token, "http") as srv:
        for tool in TOOLS:
            check_bodies(port, token, f"/{tool}", http_bodies(arguments[tool]), [], "Error")
        for round_ in range(args.rounds):
            for tool in TOOLS:
                for clients_n in levels:
                    for how in clients:
                        result = load(
                            f"http /{tool}",
                            srv,
                            f"/{tool}",
                            http_bodies(arguments[tool]),
                            clients_n,
                            how,
                        )
                        result.extra["round"] = round_ + 1
                        main_runs.setdefault((tool, clients_n, how), []).append(result)

    if not args.no_variants:
        log("HTTP variants (information): uvloop event loop; 2 processes on one port")
        with bench_server(["--loop", "uvloop"], "http uvloop") as srv:
            for tool in TOOLS:
                load(
                    f"http /{tool}, uvloop",
                    srv,
                    f"/{tool}",
                    http_bodies(arguments[tool]),
                    at,
                    client,
                )
        port = free_port()
        pair = [bench_server(["--reuse-port"], f"http worker {i}", port) for i in range(2)]
        with pair[0], pair[1]:
            for tool in TOOLS:
                load(
                    f"http /{tool}, 2 processes",
                    pair,
                    f"/{tool}",
                    http_bodies(arguments[tool]),
                    at,
                    client,
                )

    log("MCP: toolgym serve --transport mcp (stateless, JSON responses)")
    port = free_port()
    with ServerProcess(toolgym_serve(corpus, index, port, "mcp"), port, token, "mcp") as srv:
        for tool in TOOLS:
            bodies = mcp_bodies(tool, arguments[tool])
            check_bodies(port, token, "/mcp", bodies, mcp_headers(tool), '"isError":true')
        for tool in TOOLS:
            for clients_n in levels:
                load(
                    f"mcp {tool}, raw JSON-RPC",
                    srv,
                    "/mcp",
                    mcp_bodies(tool, arguments[tool]),
                    clients_n,
                    client,
                    headers=mcp_headers(tool),
                    bad='"isError":true',
                )
        if not args.no_official_mcp:
            for tool in TOOLS:
                for clients_n in levels:
                    log(f"  mcp {tool}, official client: {clients_n} concurrent calls")
                    results.append(
                        run_official_mcp(
                            f"mcp {tool}, official client",
                            srv,
                            tool,
                            arguments[tool],
                            clients_n,
                            args.duration,
                            args.warmup,
                        )
                    )

    print()
    print(
        f"runs, in order ({args.warmup:g} s warm-up + {args.duration:g} s measured each). "
        "cpu% = % of one core over the window (2 cores = 200%); other = everything else on "
        f"the machine. Bodies cycled: read {len(arguments['read'])} (every document at offset "
        f"0 and half-way), list {len(arguments['list'])} (every prefix and page)."
    )
    headers = [
        "run",
        "client",
        "clients",
        "requests",
        "req/s",
        "p50 ms",
        "p99 ms",
        "server cpu%",
        "client cpu%",
        "other cpu%",
        "server ms/req",
        "errors",
    ]
    rows = [
        [
            r.label,
            r.client,
            r.concurrency,
            r.completed,
            r.rps,
            r.p50_ms,
            r.p99_ms,
            r.server_cpu_pct,
            r.client_cpu_pct,
            r.other_cpu_pct,
            1000 * r.window.server_s / r.completed if r.completed else float("nan"),
            r.errors,
        ]
        for r in results
    ]
    print(table(headers, rows))
    print()
    print(f"HTTP, toolgym serve (one process): medians over {args.rounds} rounds")
    summary = [
        [
            f"/{tool}",
            how,
            clients_n,
            statistics.median([r.rps for r in found]),
            min(r.rps for r in found),
            statistics.median([r.p50_ms for r in found]),
            statistics.median([r.p99_ms for r in found]),
            statistics.median([r.server_cpu_pct for r in found]),
            statistics.median([r.other_cpu_pct for r in found]),
        ]
        for (tool, clients_n, how), found in main_runs.items()
    ]
    print(
        table(
            [
                "tool",
                "client",
                "clients",
                "req/s",
                "lowest",
                "p50 ms",
                "p99 ms",
                "server cpu%",
                "other cpu%",
            ],
            summary,
        )
    )
    print()
    for tool in TOOLS:
        found = main_runs.get((tool, at, client), [])
        if not found or any(r.errors for r in found):
            print(f"MISS  /{tool} over HTTP: no error-free runs at {at} clients")
            continue
        rps = statistics.median([r.rps for r in found])
        print(
            f"{verdict(rps >= TARGET_RPS)}  /{tool} over HTTP at {at} clients: {rps:,.0f} req/s "
            f"(target >= {TARGET_RPS:,.0f}; median of {len(found)} runs, lowest "
            f"{min(r.rps for r in found):,.0f}; toolgym serve, one process, client {client})"
        )
    if at != TARGET_CLIENTS:
        print(f"note: targets are for {TARGET_CLIENTS} clients; judged at {at} instead")
    return 0


if __name__ == "__main__":
    sys.exit(main())
