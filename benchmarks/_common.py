"""Shared pieces of the benchmarks: fixtures on disk, server processes, load runs, tables.

Everything is built under a work directory (default `benchmarks/out/`, gitignored) and reused
by later runs while it is still current. Servers and load generators are separate processes
on 127.0.0.1, so the CPU each one burns is visible and reported.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_WORKDIR = HERE / "out"
PYTHON = sys.executable
LOADGEN = HERE / "_loadgen.py"
SERVER = HERE / "_server.py"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextmanager
def quiet() -> Iterator[None]:
    """Silence the progress bars of corpus/index building."""
    with open(os.devnull, "w") as sink, redirect_stdout(sink), redirect_stderr(sink):
        yield


# ---------------------------------------------------------------- fixtures on disk


def prepare_corpus(workdir: Path) -> Path:
    from toolservers.synth import synthesize_corpus

    corpus = workdir / "corpus"
    if not (corpus / "facts.jsonl").is_file():
        log(f"making the synthetic corpus in {corpus}")
        with quiet():
            synthesize_corpus(corpus, seed=0)
    return corpus


def prepare_transformer_model(workdir: Path, corpus: Path) -> Path:
    """MiniLM-L6-shaped encoder (6 layers, hidden 384, 12 heads), random weights.

    Its WordPiece tokenizer is trained on the corpus, so queries split into realistic tokens.
    """
    from toolservers.local_model import _corpus_passages, build_transformer_model

    model = workdir / "minilm-l6-random"
    if not (model / "modules.json").is_file():
        log(f"making a random-weight MiniLM-L6-shaped encoder in {model}")
        with quiet():
            build_transformer_model(model, tokenizer_texts=_corpus_passages(corpus))
    return model.resolve()


def _index_current(corpus: Path, index: Path, model: str | None) -> bool:
    from toolservers.corpus import Corpus
    from toolservers.errors import ToolServerError
    from toolservers.index import load_index

    try:
        with quiet():
            load_index(Corpus(corpus), index_dir=index, expect_model=model)
    except ToolServerError:
        return False
    return True


def prepare_dense_index(corpus: Path, model: Path, index: Path, real_vectors: bool) -> Path:
    """Dense (FAISS flat) index of the corpus for `model`.

    By default the chunk vectors are random unit vectors: the encoder has random weights, so
    its own chunk vectors would be just as meaningless, and embedding ~4,600 chunks of up to
    256 tokens takes ~8 minutes on 2 cores. Query encoding (what is measured) is unaffected,
    and so is the FAISS scan, whose cost does not depend on the values. `real_vectors=True`
    embeds the chunks with the encoder instead.
    """
    from toolservers import index as index_module
    from toolservers.embedding import Embedder
    from toolservers.index import SearchMode, build_index

    name = str(model)
    if _index_current(corpus, index, name):
        return index

    class RandomChunkVectors(Embedder):
        def encode(
            self, texts: list[str], batch_size: int = 64, progress: bool = False
        ) -> np.ndarray:
            rng = np.random.default_rng(len(texts))
            vectors = rng.standard_normal((len(texts), self.dimension)).astype(np.float32)
            return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)  # (n, dim)

    log(f"building a dense index in {index} ({'real' if real_vectors else 'random'} vectors)")
    started = time.perf_counter()
    with quiet():
        if real_vectors:
            build_index(corpus, search=SearchMode.DENSE, embedding_model=name, index_dir=index)
        else:
            with mock.patch.object(index_module, "Embedder", RandomChunkVectors):
                build_index(corpus, search=SearchMode.DENSE, embedding_model=name, index_dir=index)
    log(f"  built in {time.perf_counter() - started:.0f} s")
    return index


def prepare_lexical_index(corpus: Path, index: Path) -> Path:
    from toolservers.index import SearchMode, build_index

    if not _index_current(corpus, index, None):
        log(f"building a lexical index in {index}")
        with quiet():
            build_index(corpus, search=SearchMode.LEXICAL, index_dir=index)
    return index


# ---------------------------------------------------------------- CPU accounting


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores together."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(values[:8])
    idle = values[3] + values[4]
    return (total - idle) / CLK_TCK, total / CLK_TCK


@dataclass
class CpuWindow:
    """CPU burnt between `start()` and `stop()`: server, whole machine, wall time."""

    server_pids: Sequence[int]
    server_s: float = 0.0
    machine_busy_s: float = 0.0
    machine_total_s: float = 0.0
    wall_s: float = 0.0
    _marks: list[tuple[float, float, float, float]] = field(default_factory=list)

    def _mark(self) -> tuple[float, float, float, float]:
        server = sum(process_cpu_seconds(pid) for pid in self.server_pids)
        busy, total = machine_cpu()
        return server, busy, total, time.perf_counter()

    def start(self) -> None:
        self._marks = [self._mark()]

    def stop(self) -> None:
        end = self._mark()
        begin = self._marks[0]
        self.server_s = end[0] - begin[0]
        self.machine_busy_s = end[1] - begin[1]
        self.machine_total_s = end[2] - begin[2]
        self.wall_s = end[3] - begin[3]


# ---------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def new_token() -> str:
    return secrets.token_urlsafe(24)


class ServerProcess:
    """A tool server in its own process, up once GET /health answers; stopped on exit."""

    def __init__(
        self,
        command: list[str],
        port: int,
        token: str,
        label: str,
        stats_file: Path | None = None,
        ready_file: Path | None = None,
    ) -> None:
        """`stats_file`: the server appends its counters there on SIGUSR1 (_server.py).
        `ready_file`: the server writes it once it listens (_server.py --ready-file), for
        processes that share a port, where /health may be answered by another one."""
        self.command = command
        self.stats_file = stats_file
        self.ready_file = ready_file
        self.port = port
        self.token = token
        self.label = label
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tempfile.NamedTemporaryFile(prefix="toolgym-bench-", suffix=".log")  # noqa: SIM115

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> ServerProcess:
        env = {**os.environ, "TOOL_BEARER": self.token, "HF_HUB_OFFLINE": "1"}
        self.proc = subprocess.Popen(
            self.command, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT
        )
        return self

    def wait_ready(self, timeout: float = 180.0) -> ServerProcess:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.port}/health"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.label} server exited at start-up:\n{self.log_tail()}")
            if self.ready_file is not None:
                if self.ready_file.is_file():
                    return self
                time.sleep(0.2)
                continue
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        tail = self.log_tail()
        self.__exit__(None, None, None)
        raise RuntimeError(f"{self.label} server did not come up:\n{tail}")

    def __enter__(self) -> ServerProcess:
        try:
            return self.start().wait_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise

    def log_tail(self) -> str:
        return Path(self.log.name).read_text(errors="replace")[-3000:]

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        if self.ready_file is not None:
            self.ready_file.unlink(missing_ok=True)


def toolgym_serve(
    corpus: Path,
    index: Path,
    port: int,
    transport: str = "http",
    embedding_model: str | None = None,
) -> list[str]:
    """The command line of `toolgym serve`, exactly as an operator runs it."""
    command = [
        str(Path(PYTHON).parent / "toolgym"),
        "serve",
        "--corpus",
        str(corpus),
        "--index",
        str(index),
        "--port",
        str(port),
        "--transport",
        transport,
    ]
    if embedding_model:
        command += ["--embedding-model", embedding_model]
    return command


# ---------------------------------------------------------------- load runs


@dataclass
class LoadResult:
    label: str
    concurrency: int
    completed: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float
    client_cpu_s: float
    window: CpuWindow
    client: str = "python"
    repeats: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def cpu_share(self, seconds: float) -> float:
        """CPU seconds as a percentage of one core over the window."""
        return 100.0 * seconds / self.window.wall_s if self.window.wall_s else float("nan")

    @property
    def server_cpu_pct(self) -> float:
        return self.cpu_share(self.window.server_s)

    @property
    def client_cpu_pct(self) -> float:
        return self.cpu_share(self.client_cpu_s)

    @property
    def other_cpu_pct(self) -> float:
        """CPU used on the machine by everything but the server and this client (% of a core)."""
        other = self.window.machine_busy_s - self.window.server_s - self.client_cpu_s
        return self.cpu_share(max(0.0, other))


def _pids(servers: ServerProcess | Sequence[ServerProcess]) -> list[ServerProcess]:
    return [servers] if isinstance(servers, ServerProcess) else list(servers)


def run_marked_client(
    label: str,
    servers: ServerProcess | Sequence[ServerProcess],
    command: list[str],
    concurrency: int,
    client: str = "python",
) -> LoadResult:
    """Run a client that prints START / STOP around its measured window, then a JSON report
    (completed, errors, rps, p50_ms, p99_ms, client_cpu_s); account the servers' CPU."""
    group = _pids(servers)
    window = CpuWindow([s.pid for s in group])
    stats = group[0].stats_file

    def mark_stats() -> None:
        if stats is not None:
            os.kill(group[0].pid, signal.SIGUSR1)

    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    report: dict[str, Any] | None = None
    for line in proc.stdout:
        if line.startswith("START"):
            window.start()
            mark_stats()
        elif line.startswith("STOP"):
            window.stop()
            mark_stats()
        elif line.startswith("{"):
            report = json.loads(line)
    if proc.wait(timeout=120) != 0 or report is None:
        raise RuntimeError(f"load generator failed for {label} (exit {proc.returncode})")
    if report["errors"]:
        log(f"  {label}: {report['errors']} failed requests, e.g. {report['error_sample']!r}")
    extra: dict[str, Any] = {}
    if stats is not None:
        time.sleep(0.2)
        lines = stats.read_text().splitlines()[-2:]
        if len(lines) == 2:
            first, last = (json.loads(line) for line in lines)
            extra = {key: last[key] - first[key] for key in last}
    return LoadResult(
        label=label,
        concurrency=concurrency,
        completed=report["completed"],
        errors=report["errors"],
        rps=report["rps"],
        p50_ms=report["p50_ms"],
        p99_ms=report["p99_ms"],
        client_cpu_s=report["client_cpu_s"],
        window=window,
        client=client,
        repeats=report.get("repeats", 0),
        extra=extra,
    )


@contextmanager
def bodies_file(bodies: Sequence[str]) -> Iterator[str]:
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as fh:
        fh.write("\n".join(bodies) + "\n")
    try:
        yield fh.name
    finally:
        os.unlink(fh.name)


def run_loadgen(
    *,
    label: str,
    server: ServerProcess | Sequence[ServerProcess],
    path: str,
    bodies: Sequence[str],
    concurrency: int,
    duration: float,
    warmup: float,
    group: int = 1,
    headers: Sequence[str] = (),
    error_marker: str = "",
) -> LoadResult:
    """Run benchmarks/_loadgen.py (Python, raw asyncio HTTP/1.1) against the server(s)."""
    first = _pids(server)[0]
    with bodies_file(bodies) as bodies_path:
        command = [
            PYTHON,
            str(LOADGEN),
            "--port",
            str(first.port),
            "--path",
            path,
            "--token",
            first.token,
            "--bodies",
            bodies_path,
            "--concurrency",
            str(concurrency),
            "--group",
            str(group),
            "--warmup",
            str(warmup),
            "--duration",
            str(duration),
            "--error-marker",
            error_marker,
        ]
        for header in headers:
            command += ["--header", header]
        return run_marked_client(label, server, command, concurrency, client="python")


WRK_SCRIPT = """
local bodies = {}
for line in io.lines(os.getenv("BENCH_BODIES")) do
  if #line > 0 then bodies[#bodies + 1] = line end
end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN")
for name, value in string.gmatch(os.getenv("BENCH_HEADERS") or "", "([^:\\n]+): ([^\\n]*)") do
  wrk.headers[name] = value
end
local i = 0
request = function()
  i = i + 1
  return wrk.format(nil, nil, nil, bodies[(i % #bodies) + 1])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "status_errors": %d, "socket_errors": %d, '
    .. '"p50_us": %d, "p99_us": %d}\\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def run_wrk(
    *,
    label: str,
    server: ServerProcess | Sequence[ServerProcess],
    path: str,
    bodies: Sequence[str],
    concurrency: int,
    duration: float,
    warmup: float,
    headers: Sequence[str] = (),
    threads: int = 1,
) -> LoadResult:
    """Closed-loop load with wrk (C, one thread by default): far cheaper than any Python client.

    wrk cannot look inside bodies, so only HTTP-level failures count as errors here: check the
    bodies' answers beforehand. Latency percentiles are wrk's.
    """
    group = _pids(server)
    first = group[0]
    with tempfile.TemporaryDirectory() as tmp, bodies_file(bodies) as bodies_path:
        script = Path(tmp) / "post.lua"
        script.write_text(WRK_SCRIPT)
        env = {
            **os.environ,
            "BENCH_BODIES": bodies_path,
            "BENCH_TOKEN": first.token,
            "BENCH_HEADERS": "\n".join(headers),
        }
        url = f"http://127.0.0.1:{first.port}{path}"

        def wrk(seconds: float) -> tuple[str, float]:
            command = [
                "wrk",
                f"-t{threads}",
                f"-c{concurrency}",
                f"-d{max(1, round(seconds))}s",
                "--timeout",
                "10s",
                "-s",
                str(script),
                url,
            ]
            with tempfile.TemporaryFile("w+") as out:
                proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
                _, status, usage = os.wait4(proc.pid, 0)
                proc.returncode = os.waitstatus_to_exitcode(status)
                out.seek(0)
                text = out.read()
            if proc.returncode != 0:
                raise RuntimeError(f"wrk failed for {label}: {text[-2000:]}")
            return text, usage.ru_utime + usage.ru_stime

        if warmup > 0:
            wrk(warmup)
        window = CpuWindow([s.pid for s in group])
        window.start()
        text, client_cpu = wrk(duration)
        window.stop()
    line = next((ln for ln in text.splitlines() if ln.startswith("{")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no report for {label}: {text[-2000:]}")
    report = json.loads(line)
    errors = report["status_errors"] + report["socket_errors"]
    if errors:
        log(f"  {label}: {errors} failed requests (HTTP status or socket errors)")
    wall = report["duration_us"] / 1e6
    completed = report["requests"] - errors
    return LoadResult(
        label=label,
        concurrency=concurrency,
        completed=completed,
        errors=errors,
        rps=completed / wall,
        p50_ms=report["p50_us"] / 1000,
        p99_ms=report["p99_us"] / 1000,
        client_cpu_s=client_cpu,
        window=window,
        client="wrk",
    )


# ---------------------------------------------------------------- output


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        return f"{value:,.1f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def verdict(passed: bool) -> str:
    return "PASS" if passed else "MISS"


def machine_line() -> str:
    import platform

    load = os.getloadavg()
    return (
        f"machine: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at start; "
        f"python {platform.python_version()}"
    )
