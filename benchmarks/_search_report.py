"""Tables and verdicts of bench_search.py (kept apart so the driver stays readable)."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

from _common import LoadResult, table, verdict

TARGET_CLIENTS = 64
TARGET_OF_CEILING = 0.70
TARGET_OVER_NAIVE = 3.0
BUCKETS = ("bs_1", "bs_2-7", "bs_8-15", "bs_16-31", "bs_32-63", "bs_64+")


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


@dataclass
class Report:
    """Everything one run of bench_search.py measured."""

    rounds: int
    cores: int
    batch: int
    ceiling_seconds: float
    warmup: float
    duration: float
    levels: list[int]
    at: int
    variants: list[str]
    naive_variants: list[str]
    clients: list[str]  # load generators, "wrk" and/or "python"
    ceilings: dict[Setting, list[Ceiling]]
    results: list[LoadResult] = field(default_factory=list)
    grpo: LoadResult | None = None

    @property
    def default(self) -> Setting:
        """torch's default: one batch on all cores."""
        return Setting(1, self.cores)

    def runs(self, label: str, clients: int, client: str) -> list[LoadResult]:
        return [
            r
            for r in self.results
            if r.label == label and r.concurrency == clients and r.client == client
        ]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _batch(result: LoadResult) -> object:
    batches = result.extra.get("batches", 0)
    return result.extra["encoded"] / batches if batches else "-"


def print_report(rep: Report) -> None:
    cores = rep.cores

    def adjusted(rate: float, other_pct: float) -> float:
        """The rate scaled to the whole machine: divided by the share of the cores that the
        rest of the machine left free while it was measured (a first-order correction)."""
        return rate * cores * 100.0 / max(50.0, cores * 100.0 - other_pct)

    def ceiling_of(round_: int, setting: Setting | None, adjust: bool = False) -> float:
        """That round's ceiling in one setting; with setting=None, its best setting."""
        chosen = rep.ceilings.values() if setting is None else [rep.ceilings[setting]]
        return max(
            adjusted(c[round_].qps, c[round_].other_pct) if adjust else c[round_].qps
            for c in chosen
        )

    def of_ceiling(r: LoadResult, setting: Setting | None, adjust: bool = False) -> float:
        rate = adjusted(r.rps, r.other_cpu_pct) if adjust else r.rps
        return 100.0 * rate / ceiling_of(int(r.extra["round"]) - 1, setting, adjust)

    _print_ceilings(rep, ceiling_of)
    _print_runs(rep, lambda r: of_ceiling(r, rep.default))
    _print_breakdown(rep)
    _print_summary(rep, adjusted, of_ceiling)
    for client in rep.clients:
        _print_verdicts(rep, client, adjusted, of_ceiling)
    _print_notes(rep)


def _print_ceilings(rep: Report, ceiling_of: Callable[..., float]) -> None:
    print()
    print(
        f"encoder ceiling: Embedder.encode in this process, batches of {rep.batch} distinct "
        f"queries, {rep.ceiling_seconds:g} s per measurement, once per round (servers idle); "
        "setting = batches at once x torch threads each "
        f"({rep.default} = torch's default threads); other% = CPU the rest of the machine "
        "used meanwhile (% of one core)"
    )
    rows = [
        [
            str(s),
            *[c.qps for c in found],
            *[c.other_pct for c in found],
            median([c.cpu_qps for c in found]),
        ]
        for s, found in rep.ceilings.items()
    ]
    headers = ["setting", *[f"r{r + 1} q/s" for r in range(rep.rounds)]]
    headers += [*[f"r{r + 1} other%" for r in range(rep.rounds)], "q/cpu-s"]
    print(table(headers, rows))
    rounds = range(rep.rounds)
    print(
        f"ceiling of each round, default threads ({rep.default}): "
        + ", ".join(f"{ceiling_of(r, rep.default):.1f}" for r in rounds)
        + " q/s; best setting: "
        + ", ".join(f"{ceiling_of(r, None):.1f}" for r in rounds)
        + " q/s"
    )


def _print_runs(rep: Report, of_default: Callable[[LoadResult], float]) -> None:
    print()
    print(
        f"runs, in order ({rep.warmup:g} s warm-up + {rep.duration:g} s measured each; cpu% = "
        f"% of one core over the window, the machine has {rep.cores} cores; other = everything "
        "else on the machine; encoded = queries the encoder ran, batch = per encoder call; "
        "q/cpu-s = requests per CPU-second of the server process; % ceiling = of the same "
        "round's default-thread ceiling)"
    )
    headers = ["round", "server", "client", "clients", "requests", "req/s", "p50 ms", "p99 ms"]
    headers += ["% ceiling", "encoded", "batch", "cache hits", "server cpu%", "q/cpu-s"]
    headers += ["client cpu%", "other cpu%", "errors"]
    rows = [
        [
            r.extra["round"],
            r.label,
            r.client,
            r.concurrency,
            r.completed,
            r.rps,
            r.p50_ms,
            r.p99_ms,
            of_default(r),
            r.extra.get("encoded", "-"),
            _batch(r),
            r.extra.get("cache_hits", "-"),
            r.server_cpu_pct,
            r.completed / r.window.server_s if r.window.server_s else float("nan"),
            r.client_cpu_pct,
            r.other_cpu_pct,
            r.errors,
        ]
        for r in [*rep.results, *([rep.grpo] if rep.grpo else [])]
    ]
    print(table(headers, rows))


def breakdown(r: LoadResult) -> dict[str, float]:
    """Server time per request (ms), from _search_profile's counters over the window."""
    x, n = r.extra, max(1, r.completed)
    if "loop_cpu_s" not in x:
        return {}
    encoded = max(1, int(x.get("encoded", 0)))
    loop_rest = x["loop_cpu_s"] - x["faiss_s"] - x["snippet_s"]
    return {
        "encode ms/query (wall)": 1000 * x["encode_s"] / encoded,
        "encoder threads cpu ms/req": 1000 * x["encoder_cpu_s"] / n,
        "faiss ms/req": 1000 * x["faiss_s"] / n,
        "snippets ms/req": 1000 * x["snippet_s"] / n,
        "loop rest cpu ms/req": 1000 * loop_rest / n,
        "loop cpu ms/req": 1000 * x["loop_cpu_s"] / n,
    }


def _print_breakdown(rep: Report) -> None:
    print()
    print(
        "where the server's time goes, per request (medians over rounds; _search_profile): "
        "encode = Embedder.encode wall time per query in the encoder threads; FAISS and "
        "snippets = their wall time on the event loop's thread; loop rest = the event loop "
        "thread's CPU minus those two (HTTP, FastAPI/pydantic, JSON, asyncio); batches = "
        "encoder calls by batch size"
    )
    rows = []
    for variant in rep.variants:
        for client in rep.clients:
            same = [r for r in rep.runs(variant, rep.at, client) if breakdown(r)]
            parts = [breakdown(r) for r in same]
            if not same:
                continue
            cells: list[object] = [variant, client]
            cells += [median([p[k] for p in parts]) for k in parts[0]]
            hist = [sum(int(r.extra.get(b, 0)) for r in same) for b in BUCKETS]
            cells.append(" ".join(str(h) for h in hist))
            rows.append(cells)
    if rows:
        keys = list(breakdown(next(r for r in rep.results if breakdown(r))))
        headers = ["server", "client", *keys, "batches " + "/".join(b[3:] for b in BUCKETS)]
        print(table(headers, rows))


def _print_summary(
    rep: Report, adjusted: Callable[..., float], of_ceiling: Callable[..., float]
) -> None:
    print()
    print(
        f"summary: medians over {rep.rounds} rounds (% ceiling: of the default-thread "
        "ceiling; best: of the best setting; adj. = noise-adjusted, each rate divided by the "
        "share of the machine the other load left free)"
    )
    rows = []
    for clients in rep.levels:
        for variant in rep.variants:
            for client in rep.clients:
                same = rep.runs(variant, clients, client)
                if not same:
                    continue
                rows.append(
                    [
                        variant,
                        client,
                        clients,
                        median([r.rps for r in same]),
                        median([adjusted(r.rps, r.other_cpu_pct) for r in same]),
                        median([r.p50_ms for r in same]),
                        median([r.p99_ms for r in same]),
                        median([of_ceiling(r, rep.default) for r in same]),
                        median([of_ceiling(r, None) for r in same]),
                        median([of_ceiling(r, rep.default, True) for r in same]),
                        median([r.completed / r.window.server_s for r in same]),
                        median([r.client_cpu_pct for r in same]),
                    ]
                )
    headers = ["server", "client", "clients", "req/s", "adj. req/s", "p50 ms", "p99 ms"]
    headers += ["% ceiling", "% best", "adj. % ceiling", "q/cpu-s", "client cpu%"]
    print(table(headers, rows))


def _print_verdicts(
    rep: Report,
    client: str,
    adjusted: Callable[..., float],
    of_ceiling: Callable[..., float],
) -> None:
    at = rep.at
    batched = rep.runs("batched", at, client)
    if not batched:
        return
    print()
    print(f"with the {client} load generator:")
    for setting, what in ((rep.default, "default-thread"), (None, "best-setting")):
        for adjust in (False, True):
            ratio = median([of_ceiling(r, setting, adjust) / 100.0 for r in batched])
            how = "noise-adjusted rates" if adjust else "median of same-round ratios"
            mark = verdict(ratio >= TARGET_OF_CEILING) if setting is not None else "info"
            print(
                f"{mark}  /search at {at} clients reaches {100 * ratio:.0f}% of the {what} "
                f"encoder ceiling (target >= {100 * TARGET_OF_CEILING:.0f}% of the "
                f"default-thread one; {how})"
            )

    def speedup(naives: list[str], adjust: bool = False) -> float:
        """Median over rounds of batched / naive req/s, both from the same round and load
        generator; with several naive variants, the fastest of them in that round."""
        pairs = []
        for r in batched:
            rival = [
                adjusted(n.rps, n.other_cpu_pct) if adjust else n.rps
                for v in naives
                for n in rep.runs(v, at, client)
                if n.extra["round"] == r.extra["round"]
            ]
            if rival and max(rival) > 0:
                pairs.append((adjusted(r.rps, r.other_cpu_pct) if adjust else r.rps) / max(rival))
        return median(pairs)

    if "naive-default" in rep.naive_variants and rep.runs("naive-default", at, client):
        for adjust in (False, True):
            x = speedup(["naive-default"], adjust)
            how = "noise-adjusted" if adjust else "median of same-round ratios"
            print(
                f"{verdict(x >= TARGET_OVER_NAIVE)}  /search at {at} clients is {x:.1f}x the "
                f"naive server (target >= {TARGET_OVER_NAIVE:.0f}x; {how}; naive-default: each "
                "request encoded alone in asyncio's thread pool with torch's default threads)"
            )
    tuned = [v for v in rep.naive_variants if v != "naive-default"]
    if tuned and any(rep.runs(v, at, client) for v in tuned):
        x = speedup(tuned)
        print(
            f"{verdict(x >= TARGET_OVER_NAIVE)}  stricter: {x:.1f}x the fastest tuned naive "
            f"variant of each round, of {', '.join(tuned)} (their encoder threads are set up "
            "like the batched server's, so only batching differs)"
        )
    server_cpu = median([r.completed / r.window.server_s for r in batched])
    encoder_cpu = max(median([c.cpu_qps for c in found]) for found in rep.ceilings.values())
    print(
        f"info  per CPU-second, which other load on the machine barely affects: the server "
        f"answers {server_cpu:.0f} searches, the encoder alone encodes {encoder_cpu:.0f} "
        f"queries at best ({100 * server_cpu / encoder_cpu:.0f}%)"
    )


def _print_notes(rep: Report) -> None:
    print()
    grpo = rep.grpo
    if grpo is not None:
        top = max(rep.levels)
        distinct = median([r.rps for r in rep.runs("batched", top, grpo.client)])
        print(
            f"info  GRPO-like load (groups of clients repeat each query, {top} clients, "
            f"{grpo.client} client): {grpo.rps:.1f} req/s, {grpo.rps / distinct:.1f}x the "
            f"distinct-query rate ({grpo.completed} answered, {grpo.extra.get('encoded', 0)} "
            f"encoded, {grpo.extra.get('cache_hits', 0)} cache hits: the other repeats shared "
            "an encode in progress)"
        )
    if rep.at != TARGET_CLIENTS:
        print(f"note: targets are for {TARGET_CLIENTS} clients; judged at {rep.at} instead")
    if any(r.errors for r in [*rep.results, *([grpo] if grpo else [])]):
        print("note: some requests failed; see the errors column")
