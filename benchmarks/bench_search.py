"""Load test of POST /search against the query encoder's own batched ceiling, in one run.

What it measures, all on 127.0.0.1 and all in one run, so that ratios survive a noisy host:

1. ceiling: the encoder alone, in this process (Embedder.encode on batches of `--batch`
   distinct queries, no server, no HTTP), in three settings: one batch on one torch thread,
   one batch on all cores (torch's default threads: the ceiling the target is judged on), and
   one batch per core side by side on one thread each (what QueryEncoder does).
2. naive servers: each request encodes its own query alone (no batching, no cache):
   naive-default (asyncio's thread pool, torch's default threads: the server as it was, minus
   batching and cache), and two tuned variants, naive-serial and naive-pool, whose encoder
   threads are set up like the batched server's, so that only batching differs.
3. batched: the shipped server (`toolgym serve`'s code path: QueryEncoder micro-batching and
   query cache), distinct queries, so the cache never hits.
4. grpo (information): the batched server with each query sent by a group of `--group`
   clients, as the rollouts of a GRPO group repeat queries (Python load generator).

Two load generators, `--loadgen wrk,python` (both by default when wrk is installed): wrk (C,
one thread, a Lua script posting distinct bodies with the Bearer token) costs the 2-core
machine a few % of a core, the Python one (benchmarks/_loadgen.py, raw asyncio, uvloop) a
quarter to half a core, which it takes from the server. Each server step runs with each
load generator back to back.

All servers start first and stay up; then `--rounds` rounds each measure the ceiling, the
batched server at 64 clients and the naive servers right after it (odd rounds in reverse
order), and the batched server at the other levels. Targets are judged on the median over
rounds of ratios taken within a round; a noise-adjusted variant divides each rate by the
share of the CPU that the rest of the machine left free while it was measured. Each server
times its encoder, FAISS and snippet selection and reads its threads' CPU
(benchmarks/_search_profile.py), so the report splits the server's time per request.

Encoder: a MiniLM-L6-shaped sentence-transformers model (6 layers, hidden 384, 12 heads,
max 256 tokens) with random weights and a WordPiece vocabulary trained on the corpus, made by
toolservers.local_model.build_transformer_model; index: FAISS flat over the synthetic corpus
(4,594 chunks; chunk vectors random unless --real-index-vectors).

Targets (64 clients, judged with wrk when it runs): batched >= 70% of the default-thread
ceiling, and >= 3x the naive server. The exit code is 0 either way; each target prints PASS
or MISS.

Run:  .venv/bin/python benchmarks/bench_search.py [--loadgen wrk,python] [--concurrency 16,64]
      [--rounds 3] [--duration 6]. About 6.5 minutes with both load generators; the first run
also builds the corpus, model and index under benchmarks/out/ (~30 s). wrk: `apt-get install
wrk` (Debian/Ubuntu).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path

from _common import (
    DEFAULT_WORKDIR,
    PYTHON,
    SERVER,
    CpuWindow,
    LoadResult,
    ServerProcess,
    free_port,
    log,
    machine_line,
    new_token,
    prepare_corpus,
    prepare_dense_index,
    prepare_transformer_model,
    quiet,
    run_loadgen,
    run_wrk,
    wrk_available,
)
from _search_report import TARGET_CLIENTS, Ceiling, Report, Setting, print_report

NAIVE_VARIANTS = ("naive-default", "naive-serial", "naive-pool")
LOADGENS = ("wrk", "python")
WRK_MISSING = "wrk not found: `apt-get install wrk` (Debian/Ubuntu) to measure with it too"
# Queries drawn per second of load: above any rate measured, so no run runs out.
QUERIES_PER_SECOND = 600

TEMPLATES = (
    "{company} {metric} {period}",
    "What was {company}'s {metric} in {quarter} {year}?",
    "{ticker} {form} {year} {metric}",
    "{company} {metric} {quarter} fiscal {year} filing",
    "how did {metric} change at {company} in {period}",
    "{company} ({ticker}) {form} {period} reported {metric}",
)


class QueryPool:
    """Distinct, realistic queries built from the corpus facts; `take` never repeats one."""

    def __init__(self, corpus: Path, seed: int = 0) -> None:
        seen: dict[str, None] = {}
        with (corpus / "facts.jsonl").open() as fh:
            facts = [json.loads(line) for line in fh]
        for fact in facts:
            period = str(fact["period"])
            values = {
                "company": fact["company"],
                "ticker": fact["ticker"],
                "form": fact["form"],
                "metric": str(fact["metric"]).replace("_", " "),
                "period": period,
                "quarter": period.rsplit("-", 1)[-1],
                "year": fact["fiscal_year"],
            }
            for template in TEMPLATES:
                seen[template.format(**values)] = None
        self.queries = list(seen)
        random.Random(seed).shuffle(self.queries)
        self.used = 0

    def take(self, n: int) -> list[str]:
        out = []
        for i in range(self.used, self.used + n):
            base = self.queries[i % len(self.queries)]
            rounds = i // len(self.queries)
            out.append(base if rounds == 0 else f"{base} (variant {rounds})")
        self.used += n
        return out


def search_bodies(queries: list[str], top_k: int = 5) -> list[str]:
    return [
        json.dumps({"arguments": {"query": q, "top_k": top_k}, "call_id": f"c{i}"})
        for i, q in enumerate(queries)
    ]


class EncoderCeiling:
    """Embedder.encode on batches of distinct queries in this process: no server, no HTTP."""

    def __init__(self, model: Path, pool: QueryPool, batch: int) -> None:
        from toolservers.embedding import Embedder

        with quiet():
            self.embedder = Embedder(str(model))
        self.pool = pool
        self.lock = threading.Lock()
        self.batch = batch
        cores = os.cpu_count() or 1
        # One batch on one thread; one batch on all cores (torch's default); one batch per
        # core side by side, each on one thread (what QueryEncoder does).
        self.settings = sorted({Setting(1, 1), Setting(1, cores), Setting(cores, 1)}, key=str)
        self.executors = {
            s: ThreadPoolExecutor(s.streams, initializer=_set_threads, initargs=(s.threads,))
            for s in self.settings
        }
        for setting in self.settings:
            self.measure(setting, 0.0)  # warm-up: first calls allocate

    def _take(self) -> list[str]:
        with self.lock:
            return self.pool.take(self.batch)

    def _stream(self, deadline: float) -> int:
        done = 0
        while time.perf_counter() < deadline or done == 0:
            self.embedder.encode(self._take(), batch_size=self.batch)
            done += self.batch
        return done

    def measure(self, setting: Setting, seconds: float) -> Ceiling:
        window = CpuWindow([os.getpid()])
        window.start()
        deadline = time.perf_counter() + seconds
        done = sum(self.executors[setting].map(self._stream, [deadline] * setting.streams))
        window.stop()
        other = max(0.0, window.machine_busy_s - window.server_s)
        return Ceiling(
            qps=done / window.wall_s,
            cpu_qps=done / window.server_s if window.server_s else float("nan"),
            other_pct=100.0 * other / window.wall_s,
        )


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _numbers(text: str) -> list[int]:
    return sorted({int(c) for c in text.split(",") if c.strip()})


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--concurrency", default=f"16,{TARGET_CLIENTS}", help="client counts, batched server"
    )
    parser.add_argument(
        "--naive-concurrency", default=str(TARGET_CLIENTS), help="client counts, naive servers"
    )
    parser.add_argument(
        "--naive",
        default=",".join(NAIVE_VARIANTS),
        help=f"naive variants to run, comma separated, from {','.join(NAIVE_VARIANTS)}",
    )
    parser.add_argument(
        "--loadgen",
        default="wrk,python",
        help="load generators, comma separated: wrk (C) and/or python (_loadgen.py)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians)")
    parser.add_argument("--duration", type=float, default=6.0, help="seconds measured per run")
    parser.add_argument("--warmup", type=float, default=1.5, help="seconds before measuring")
    parser.add_argument("--batch", type=int, default=64, help="batch size of the ceiling")
    parser.add_argument("--ceiling-seconds", type=float, default=4.0)
    parser.add_argument("--group", type=int, default=8, help="GRPO group size (cache run)")
    parser.add_argument("--no-grpo", action="store_true", help="skip the GRPO-like run")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument(
        "--real-index-vectors",
        action="store_true",
        help="embed the chunks with the encoder (~8 min) instead of random unit vectors",
    )
    args = parser.parse_args()
    args.naive_variants = [v for v in args.naive.split(",") if v.strip()]
    for variant in args.naive_variants:
        if variant not in NAIVE_VARIANTS:
            parser.error(f"unknown naive variant {variant!r}; choose from {NAIVE_VARIANTS}")
    args.loadgens = [g for g in args.loadgen.split(",") if g.strip()]
    for gen in args.loadgens:
        if gen not in LOADGENS:
            parser.error(f"unknown load generator {gen!r}; choose from {LOADGENS}")
    if "wrk" in args.loadgens and not wrk_available():
        log(WRK_MISSING)
        args.loadgens = [g for g in args.loadgens if g != "wrk"] or ["python"]
    return args


class Bench:
    """The servers' command lines, the query pools and the load runs of one benchmark run."""

    def __init__(self, args: argparse.Namespace, corpus: Path, model: Path, index: Path) -> None:
        self.args = args
        self.corpus, self.model, self.index = corpus, model, index
        self.token = new_token()
        # Only the batched server has a cache, so only it must never see a query twice. Each
        # server and the ceiling draw from their own copy of the same shuffled pool: they all
        # encode the same queries in the same order.
        self.pools: dict[str, QueryPool] = {}

    def pool(self, name: str) -> QueryPool:
        return self.pools.setdefault(name, QueryPool(self.corpus))

    def server(self, encoder: str) -> ServerProcess:
        port = free_port()
        stats = self.args.workdir / f"encoder-stats-{encoder}.jsonl"
        stats.unlink(missing_ok=True)
        command = [PYTHON, str(SERVER), "--corpus", str(self.corpus), "--index", str(self.index)]
        command += ["--embedding-model", str(self.model), "--port", str(port)]
        command += ["--encoder", encoder, "--stats", str(stats)]
        return ServerProcess(command, port, self.token, encoder, stats_file=stats)

    def bodies(self, srv: ServerProcess, seconds: float, clients: int, group: int = 1) -> list[str]:
        return search_bodies(
            self.pool(srv.label).take(int(seconds * QUERIES_PER_SECOND) // group + clients)
        )

    def load(
        self, srv: ServerProcess, clients: int, round_: int, client: str, group: int = 1
    ) -> LoadResult:
        label = srv.label if group == 1 else f"grpo (x{group})"
        log(f"  round {round_ + 1}: {label}, {clients} clients, {client}")
        if client == "wrk":
            result = self._wrk(srv, clients)
        else:
            before = len(_stats_lines(srv))
            result = run_loadgen(
                label=label,
                server=srv,
                path="/search",
                bodies=self.bodies(srv, self.args.warmup + self.args.duration, clients, group),
                concurrency=clients,
                duration=self.args.duration,
                warmup=self.args.warmup,
                group=group,
                error_marker='"output":"Error',
            )
            # run_loadgen marks the window (SIGUSR1 at START and STOP) but reads the counters
            # after a fixed pause, which a loaded server can miss: read them again, waiting.
            result.extra = _stats_delta(srv, before)
            if result.repeats and group == 1:
                log(f"  warning: {result.repeats} queries repeated in {label}")
        result.extra["round"] = round_ + 1
        return result

    def _wrk(self, srv: ServerProcess, clients: int) -> LoadResult:
        """wrk's warm-up and measured window post different bodies, so no query repeats."""
        args = self.args
        wrk = functools.partial(
            run_wrk, label=srv.label, server=srv, path="/search", concurrency=clients, warmup=0
        )
        if args.warmup > 0:
            wrk(bodies=self.bodies(srv, max(1.0, args.warmup) + 1, clients), duration=args.warmup)
        bodies = self.bodies(srv, args.duration + 1, clients)
        before = len(_stats_lines(srv))
        _mark_stats(srv)
        result = wrk(bodies=bodies, duration=args.duration)
        _mark_stats(srv)
        result.extra = _stats_delta(srv, before)
        if result.completed + result.errors > len(bodies):
            log(f"  warning: wrk sent more requests than the {len(bodies)} distinct bodies")
        return result


def _mark_stats(srv: ServerProcess) -> None:
    os.kill(srv.pid, signal.SIGUSR1)  # the server appends its counters (_server.py --stats)


def _stats_lines(srv: ServerProcess) -> list[str]:
    assert srv.stats_file is not None
    return srv.stats_file.read_text().splitlines() if srv.stats_file.exists() else []


def _stats_delta(srv: ServerProcess, before: int, timeout: float = 10.0) -> dict[str, object]:
    """Counters over the window: the two lines the server appended after the first `before`.
    A loaded server may take a while to run its signal handler, so wait for both."""
    deadline = time.monotonic() + timeout
    lines = _stats_lines(srv)
    while len(lines) < before + 2 and time.monotonic() < deadline:
        time.sleep(0.05)
        lines = _stats_lines(srv)
    if len(lines) < before + 2:
        log(f"  warning: {srv.label} wrote no counters for this run")
        return {}
    first, last = (json.loads(line) for line in lines[before : before + 2])
    return {key: last[key] - first[key] for key in last}


def main() -> int:
    args = parse_args()
    levels = _numbers(args.concurrency)
    naive_levels = _numbers(args.naive_concurrency)
    naive_variants: list[str] = args.naive_variants
    at = TARGET_CLIENTS if TARGET_CLIENTS in levels else max(levels)

    print(machine_line())
    print(f"load generators: {', '.join(args.loadgens)}")
    corpus = prepare_corpus(args.workdir)
    model = prepare_transformer_model(args.workdir, corpus)
    index_name = "index-dense-real" if args.real_index_vectors else "index-dense"
    index = prepare_dense_index(
        corpus, model, args.workdir / index_name, real_vectors=args.real_index_vectors
    )
    bench = Bench(args, corpus, model, index)
    encoder = EncoderCeiling(model, bench.pool("ceiling"), args.batch)
    variants = [*naive_variants, "batched"]
    report = Report(
        rounds=args.rounds,
        cores=os.cpu_count() or 1,
        batch=args.batch,
        ceiling_seconds=args.ceiling_seconds,
        warmup=args.warmup,
        duration=args.duration,
        levels=levels,
        at=at,
        variants=variants,
        naive_variants=naive_variants,
        clients=args.loadgens,
        ceilings={s: [] for s in encoder.settings},
    )
    log(f"starting {len(variants)} servers: {', '.join(variants)}")
    with ExitStack() as stack:
        servers = {v: stack.enter_context(_started(bench.server(v))) for v in variants}
        for srv in servers.values():
            srv.wait_ready()
        # One round: the ceiling, then the batched server at the target level, then the naive
        # servers (strongest first), then the other levels; odd rounds run it backwards. So
        # each ceiling sits next to a batched run, and each batched run next to a naive one.
        # Each step runs every load generator, in reverse order on odd rounds too.
        steps: list[tuple[str, int]] = [("ceiling", 0), ("batched", at)]
        steps += [(v, at) for v in reversed(naive_variants) if at in naive_levels]
        steps += [(v, c) for c in naive_levels if c != at for v in naive_variants]
        steps += [("batched", c) for c in levels if c != at]
        for round_ in range(args.rounds):
            forward = round_ % 2 == 0
            for variant, clients in steps if forward else steps[::-1]:
                if variant == "ceiling":
                    _measure_ceiling(encoder, report, args, round_)
                    continue
                for client in args.loadgens if forward else args.loadgens[::-1]:
                    report.results.append(bench.load(servers[variant], clients, round_, client))
        if not args.no_grpo:
            log(f"GRPO-like: groups of {args.group} clients send the same queries")
            report.grpo = bench.load(
                servers["batched"], max(levels), args.rounds - 1, "python", args.group
            )
    print_report(report)
    for name, used in bench.pools.items():
        if used.used > len(used.queries):
            print(
                f"note: {name} used {used.used} queries, more than the {len(used.queries)} "
                "distinct ones: later ones carry a '(variant N)' suffix (still distinct)"
            )
    return 0


def _measure_ceiling(
    encoder: EncoderCeiling, report: Report, args: argparse.Namespace, round_: int
) -> None:
    log(f"  round {round_ + 1}: encoder ceiling, batches of {args.batch}")
    for setting in report.ceilings:
        found = encoder.measure(setting, args.ceiling_seconds)
        report.ceilings[setting].append(found)
        log(f"    {setting} (batches at once x threads): {found.qps:.1f} q/s")


@contextmanager
def _started(srv: ServerProcess) -> Iterator[ServerProcess]:
    """Start a server without waiting for it (so several load their models at once)."""
    try:
        yield srv.start()
    finally:
        srv.__exit__(None, None, None)


if __name__ == "__main__":
    sys.exit(main())
