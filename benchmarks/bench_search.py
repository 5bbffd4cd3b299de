"""Load test of POST /search against the query encoder's own batched ceiling, in one run.

What it measures, all on 127.0.0.1 and all in one run, so that ratios survive a noisy host:

1. ceiling: the encoder alone, in this process (Embedder.encode on batches of `--batch`
   distinct queries, no server, no HTTP), in three settings, the best of which counts:
   one batch on one torch thread, one batch on all cores (torch's default), and one batch
   per core side by side on one thread each (what QueryEncoder does).
2. naive servers: each request encodes its own query alone (no batching, no cache):
   naive-default (asyncio's thread pool, torch's default threads: the server as it was, minus
   batching and cache), and two tuned variants, naive-serial and naive-pool, whose encoder
   threads are set up like the batched server's, so that only batching differs.
3. batched: the shipped server (`toolgym serve`'s code path: QueryEncoder micro-batching and
   query cache), distinct queries, so the cache never hits.
4. grpo (information): the batched server with each query sent by a group of `--group`
   clients, as the rollouts of a GRPO group repeat queries.

All servers start first and stay up; then `--rounds` rounds each measure the ceiling, the
batched server at 64 clients and the naive servers right after it (odd rounds in reverse
order), and the batched server at the other levels. Targets are judged on the median over
rounds of ratios taken within a round; a noise-adjusted variant divides each rate by the
share of the CPU that the rest of the machine left free while it was measured.

Encoder: a MiniLM-L6-shaped sentence-transformers model (6 layers, hidden 384, 12 heads,
max 256 tokens) with random weights and a WordPiece vocabulary trained on the corpus, made by
toolservers.local_model.build_transformer_model; index: FAISS flat over the synthetic corpus
(4,594 chunks; chunk vectors random unless --real-index-vectors). Each server runs in its own
process, the load generator (benchmarks/_loadgen.py: raw asyncio HTTP/1.1, one keep-alive
connection per client, TOOL_BEARER auth) in another; the CPU of each is reported.

Targets (64 clients): batched >= 70% of the ceiling, and >= 3x the naive server. The exit
code is 0 either way; each target prints PASS or MISS.

Run:  .venv/bin/python benchmarks/bench_search.py [--concurrency 16,64] [--rounds 3]
      [--duration 6]. About 3.5 minutes; the first run also builds the corpus, model and index
under benchmarks/out/ (~30 s), later runs reuse them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
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
    table,
    verdict,
)

TARGET_CLIENTS = 64
TARGET_OF_CEILING = 0.70
TARGET_OVER_NAIVE = 3.0
NAIVE_VARIANTS = ("naive-default", "naive-serial", "naive-pool")

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


@dataclass(frozen=True)
class Setting:
    """How the ceiling encodes: `streams` batches at once, each on `threads` torch threads."""

    streams: int
    threads: int

    def __str__(self) -> str:
        return f"{self.streams} x {self.threads}"


@dataclass
class Ceiling:
    qps: float  # queries/s
    cpu_qps: float  # queries per CPU-second of this process
    other_pct: float  # CPU used meanwhile by everything else on the machine, % of a core


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


def _batch(result: LoadResult) -> object:
    batches = result.extra.get("batches", 0)
    return result.extra["encoded"] / batches if batches else "-"


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> int:
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
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians)")
    parser.add_argument("--duration", type=float, default=6.0, help="seconds measured per run")
    parser.add_argument("--warmup", type=float, default=1.5, help="seconds before measuring")
    parser.add_argument("--batch", type=int, default=64, help="batch size of the ceiling")
    parser.add_argument("--ceiling-seconds", type=float, default=4.0)
    parser.add_argument("--group", type=int, default=8, help="GRPO group size (cache run)")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument(
        "--real-index-vectors",
        action="store_true",
        help="embed the chunks with the encoder (~8 min) instead of random unit vectors",
    )
    args = parser.parse_args()
    levels = sorted({int(c) for c in args.concurrency.split(",") if c.strip()})
    naive_levels = sorted({int(c) for c in args.naive_concurrency.split(",") if c.strip()})
    naive_variants = [v for v in args.naive.split(",") if v.strip()]
    for variant in naive_variants:
        if variant not in NAIVE_VARIANTS:
            parser.error(f"unknown naive variant {variant!r}; choose from {NAIVE_VARIANTS}")
    top = max(levels)
    at = TARGET_CLIENTS if TARGET_CLIENTS in levels else top

    print(machine_line())
    corpus = prepare_corpus(args.workdir)
    model = prepare_transformer_model(args.workdir, corpus)
    index_name = "index-dense-real" if args.real_index_vectors else "index-dense"
    index = prepare_dense_index(
        corpus, model, args.workdir / index_name, real_vectors=args.real_index_vectors
    )
    # Only the batched server has a cache, so only it must never see a query twice. Each
    # server and the ceiling draw from their own copy of the same shuffled pool: they all
    # encode the same queries in the same order, and the pool never wraps around.
    pools: dict[str, QueryPool] = {}

    def pool(name: str) -> QueryPool:
        return pools.setdefault(name, QueryPool(corpus))

    token = new_token()

    def server(encoder: str) -> ServerProcess:
        port = free_port()
        stats = args.workdir / f"encoder-stats-{encoder}.jsonl"
        stats.unlink(missing_ok=True)
        command = [PYTHON, str(SERVER), "--corpus", str(corpus), "--index", str(index)]
        command += ["--embedding-model", str(model), "--port", str(port)]
        command += ["--encoder", encoder, "--stats", str(stats)]
        return ServerProcess(command, port, token, encoder, stats_file=stats)

    def load(
        label: str, srv: ServerProcess, clients: int, round_: int, group: int = 1
    ) -> LoadResult:
        # Enough distinct queries for a generous rate over warm-up + window; the load
        # generator reports any repeat it had to make.
        needed = int((args.warmup + args.duration) * 450) // group + clients
        log(f"  round {round_ + 1}: {label}, {clients} clients")
        result = run_loadgen(
            label=label,
            server=srv,
            path="/search",
            bodies=search_bodies(pool(srv.label).take(needed)),
            concurrency=clients,
            duration=args.duration,
            warmup=args.warmup,
            group=group,
            error_marker='"output":"Error',
        )
        result.extra["round"] = round_ + 1
        if result.repeats and group == 1:
            log(f"  warning: {result.repeats} queries repeated in {label}")
        return result

    encoder = EncoderCeiling(model, pool("ceiling"), args.batch)
    ceilings: dict[Setting, list[Ceiling]] = {s: [] for s in encoder.settings}
    results: list[LoadResult] = []
    variants = [*naive_variants, "batched"]
    log(f"starting {len(variants)} servers: {', '.join(variants)}")
    with ExitStack() as stack:
        servers = {v: stack.enter_context(_started(server(v))) for v in variants}
        for srv in servers.values():
            srv.wait_ready()
        # One round: the ceiling, then the batched server at the target level, then the naive
        # servers (strongest first), then the other levels; odd rounds run it backwards. So
        # each ceiling sits next to a batched run, and each batched run next to a naive one.
        steps: list[tuple[str, int]] = [("ceiling", 0), ("batched", at)]
        steps += [(v, at) for v in reversed(naive_variants) if at in naive_levels]
        steps += [(v, c) for c in naive_levels if c != at for v in naive_variants]
        steps += [("batched", c) for c in levels if c != at]
        for round_ in range(args.rounds):
            for variant, clients in steps if round_ % 2 == 0 else steps[::-1]:
                if variant == "ceiling":
                    log(f"  round {round_ + 1}: encoder ceiling, batches of {args.batch}")
                    for setting in ceilings:
                        found = encoder.measure(setting, args.ceiling_seconds)
                        ceilings[setting].append(found)
                        log(f"    {setting} (batches at once x threads): {found.qps:.1f} q/s")
                else:
                    results.append(load(variant, servers[variant], clients, round_))
        log(f"GRPO-like: groups of {args.group} clients send the same queries")
        grpo = load(f"grpo (x{args.group})", servers["batched"], top, args.rounds - 1, args.group)

    cores = os.cpu_count() or 1

    def adjusted(rate: float, other_pct: float) -> float:
        """The rate scaled to the whole machine: divided by the share of the cores that the
        rest of the machine left free while it was measured (a first-order correction)."""
        return rate * cores * 100.0 / max(50.0, cores * 100.0 - other_pct)

    def round_ceiling(round_: int, adjust: bool = False) -> float:
        return max(
            adjusted(c[round_].qps, c[round_].other_pct) if adjust else c[round_].qps
            for c in ceilings.values()
        )

    def of_ceiling(r: LoadResult, adjust: bool = False) -> float:
        rate = adjusted(r.rps, r.other_cpu_pct) if adjust else r.rps
        return 100.0 * rate / round_ceiling(int(r.extra["round"]) - 1, adjust)

    print()
    print(
        f"encoder ceiling: Embedder.encode in this process, batches of {args.batch} distinct "
        f"queries, {args.ceiling_seconds:g} s per measurement, once per round (servers idle); "
        "setting = batches at once x torch threads each; other% = CPU the rest of the "
        "machine used meanwhile (% of one core)"
    )
    print(
        table(
            [
                "setting",
                *[f"r{r + 1} q/s" for r in range(args.rounds)],
                *[f"r{r + 1} other%" for r in range(args.rounds)],
                "q/cpu-s",
            ],
            [
                [
                    str(s),
                    *[c.qps for c in found],
                    *[c.other_pct for c in found],
                    median([c.cpu_qps for c in found]),
                ]
                for s, found in ceilings.items()
            ],
        )
    )
    print(
        "ceiling of each round (its best setting): "
        + ", ".join(f"{round_ceiling(r):.1f}" for r in range(args.rounds))
        + " q/s; noise-adjusted: "
        + ", ".join(f"{round_ceiling(r, True):.1f}" for r in range(args.rounds))
    )
    print()
    print(
        f"runs, in order ({args.warmup:g} s warm-up + {args.duration:g} s measured each; cpu% = "
        f"% of one core over the window, the machine has {cores} cores; other = everything "
        "else on the machine; encoded = queries the encoder ran, batch = per encoder call; "
        "q/cpu-s = requests per CPU-second of the server process; % ceiling = of the same "
        "round's ceiling)"
    )
    headers = [
        "round",
        "server",
        "clients",
        "requests",
        "req/s",
        "p50 ms",
        "p99 ms",
        "% ceiling",
        "encoded",
        "batch",
        "cache hits",
        "server cpu%",
        "q/cpu-s",
        "client cpu%",
        "other cpu%",
        "errors",
    ]

    def row(r: LoadResult) -> list[object]:
        return [
            r.extra["round"],
            r.label,
            r.concurrency,
            r.completed,
            r.rps,
            r.p50_ms,
            r.p99_ms,
            of_ceiling(r),
            r.extra.get("encoded", "-"),
            _batch(r),
            r.extra.get("cache_hits", "-"),
            r.server_cpu_pct,
            r.completed / r.window.server_s if r.window.server_s else float("nan"),
            r.client_cpu_pct,
            r.other_cpu_pct,
            r.errors,
        ]

    print(table(headers, [row(r) for r in [*results, grpo]]))
    print()

    def runs(label: str, clients: int) -> list[LoadResult]:
        return [r for r in results if r.label == label and r.concurrency == clients]

    print(
        f"summary: medians over {args.rounds} rounds (adj. = noise-adjusted: each rate divided "
        "by the share of the machine the other load left free)"
    )
    summary = []
    for clients in levels:
        for variant in variants:
            same = runs(variant, clients)
            if same:
                summary.append(
                    [
                        variant,
                        clients,
                        median([r.rps for r in same]),
                        median([adjusted(r.rps, r.other_cpu_pct) for r in same]),
                        median([r.p50_ms for r in same]),
                        median([r.p99_ms for r in same]),
                        median([of_ceiling(r) for r in same]),
                        median([of_ceiling(r, True) for r in same]),
                        median([r.completed / r.window.server_s for r in same]),
                    ]
                )
    print(
        table(
            [
                "server",
                "clients",
                "req/s",
                "adj. req/s",
                "p50 ms",
                "p99 ms",
                "% ceiling",
                "adj. % ceiling",
                "q/cpu-s",
            ],
            summary,
        )
    )
    print()

    batched = runs("batched", at)
    for adjust in (False, True):
        ratio = median([of_ceiling(r, adjust) / 100.0 for r in batched])
        how = (
            "noise-adjusted rates"
            if adjust
            else "median over rounds of req/s / the same round's ceiling"
        )
        print(
            f"{verdict(ratio >= TARGET_OF_CEILING)}  /search at {at} clients reaches "
            f"{100 * ratio:.0f}% of the encoder ceiling (target >= "
            f"{100 * TARGET_OF_CEILING:.0f}%; {how})"
        )

    def speedup(naives: list[str], adjust: bool = False) -> float:
        """Median over rounds of batched / naive req/s, both from the same round; with several
        naive variants, the fastest of them in that round."""
        pairs = []
        for r in batched:
            rival = [
                adjusted(n.rps, n.other_cpu_pct) if adjust else n.rps
                for v in naives
                for n in runs(v, at)
                if n.extra["round"] == r.extra["round"]
            ]
            if rival and max(rival) > 0:
                pairs.append((adjusted(r.rps, r.other_cpu_pct) if adjust else r.rps) / max(rival))
        return median(pairs)

    if "naive-default" in naive_variants and at in naive_levels:
        for adjust in (False, True):
            x = speedup(["naive-default"], adjust)
            how = "noise-adjusted" if adjust else "median of same-round ratios"
            print(
                f"{verdict(x >= TARGET_OVER_NAIVE)}  /search at {at} clients is {x:.1f}x the "
                f"naive server (target >= {TARGET_OVER_NAIVE:.0f}x; {how}; naive-default: each "
                "request encoded alone in asyncio's thread pool with torch's default threads, "
                "i.e. the server as it was, minus batching and cache)"
            )
    tuned = [v for v in naive_variants if v != "naive-default"]
    if tuned and at in naive_levels:
        for adjust in (False, True):
            x = speedup(tuned, adjust)
            how = "noise-adjusted" if adjust else "median of same-round ratios"
            print(
                f"{verdict(x >= TARGET_OVER_NAIVE)}  stricter: {x:.1f}x the fastest tuned naive "
                f"variant of each round, of {', '.join(tuned)} ({how}; their encoder threads are "
                "set up like the batched server's, so only batching differs)"
            )
    if not naive_variants or at not in naive_levels:
        print(f"MISS  speed-up over naive not measured (no naive run at {at} clients)")
    server_cpu = median([r.completed / r.window.server_s for r in batched])
    encoder_cpu = max(median([c.cpu_qps for c in found]) for found in ceilings.values())
    print(
        f"info  per CPU-second, which other load on the machine barely affects: the server "
        f"answers {server_cpu:.0f} searches, the encoder alone encodes {encoder_cpu:.0f} "
        f"queries at best ({100 * server_cpu / encoder_cpu:.0f}%)"
    )
    distinct = median([r.rps for r in runs("batched", top)])
    print(
        f"info  GRPO-like load (groups of {args.group} clients repeat each query, {top} "
        f"clients): {grpo.rps:.1f} req/s, {grpo.rps / distinct:.1f}x the distinct-query rate "
        f"({grpo.completed} answered, {grpo.extra.get('encoded', 0)} encoded, "
        f"{grpo.extra.get('cache_hits', 0)} cache hits: the other repeats shared an encode in "
        "progress)"
    )
    if at != TARGET_CLIENTS:
        print(f"note: targets are for {TARGET_CLIENTS} clients; judged at {at} instead")
    if any(r.errors for r in [*results, grpo]):
        print("note: some requests failed; see the errors column")
    for name, used in pools.items():
        if used.used > len(used.queries):
            print(
                f"note: {name} used {used.used} queries, more than the {len(used.queries)} "
                "distinct ones: later ones carry a '(variant N)' suffix (still distinct)"
            )
    return 0


@contextmanager
def _started(srv: ServerProcess) -> Iterator[ServerProcess]:
    """Start a server without waiting for it (so several load their models at once)."""
    try:
        yield srv.start()
    finally:
        srv.__exit__(None, None, None)


if __name__ == "__main__":
    sys.exit(main())
