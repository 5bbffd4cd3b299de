"""The `toolgym` command as a user runs it: real processes, real ports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from testkit import free_port

TOOLGYM = str(Path(sys.executable).with_name("toolgym"))


def run(
    *args: str, env: dict[str, str] | None = None, timeout: int = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TOOLGYM, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def start(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [TOOLGYM, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **env},
    )


def wait_healthy(url: str, process: subprocess.Popen[str], seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"server exited: {process.stdout.read() if process.stdout else ''}"
            )
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError("server never became healthy")


def stop(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGINT)
    try:
        out, _ = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
    return out


def test_serve_refuses_to_start_without_a_token(corpus_dir: Path, hybrid_index: Path) -> None:
    result = run("serve", "--corpus", str(corpus_dir), env={"TOOL_BEARER": ""})
    assert result.returncode == 2
    assert "TOOL_BEARER" in result.stderr
    assert "--insecure-no-auth" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_example_placeholder_token_is_refused(corpus_dir: Path, hybrid_index: Path) -> None:
    result = run(
        "serve", "--corpus", str(corpus_dir), env={"TOOL_BEARER": "replace-me-with-a-random-token"}
    )
    assert result.returncode == 2
    assert "placeholder" in result.stderr
    assert "replace-me-with" not in result.stderr


def test_insecure_mode_binds_loopback_and_says_so(corpus_dir: Path, hybrid_index: Path) -> None:
    port = free_port()
    process = start(
        "serve",
        "--corpus",
        str(corpus_dir),
        "--insecure-no-auth",
        "--host",
        "0.0.0.0",
        "--port",
        str(port),
        env={"TOOL_BEARER": ""},
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}", process)
        response = httpx.post(f"http://127.0.0.1:{port}/list", json={"arguments": {}})
        assert response.status_code == 200  # no token needed in this mode
    finally:
        output = stop(process)
    assert "INSECURE" in output
    assert "binding 127.0.0.1 only" in output
    assert "on http://127.0.0.1:" in output


def test_tokens_never_reach_the_logs(corpus_dir: Path, hybrid_index: Path) -> None:
    port = free_port()
    secret = "s3cr3t-token-that-must-not-leak"
    process = start(
        "serve",
        "--corpus",
        str(corpus_dir),
        "--port",
        str(port),
        "--access-log",
        env={"TOOL_BEARER": f"{secret},{secret}-next"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        ok = httpx.post(
            f"{url}/list",
            json={"arguments": {}},
            headers={"Authorization": f"Bearer {secret}-next"},
        )
        assert ok.status_code == 200
        bad = httpx.post(
            f"{url}/list",
            json={"arguments": {}},
            headers={"Authorization": f"Bearer {secret}-wrong"},
        )
        assert bad.status_code == 401
        assert secret not in bad.text
    finally:
        output = stop(process)
    assert "POST /list" in output  # the access log was on
    assert secret not in output


def test_stale_index_is_refused_at_start_with_the_fix(small_corpus: Path) -> None:
    built = run("index", "build", "--corpus", str(small_corpus), "--search", "lexical")
    assert built.returncode == 0, built.stderr
    assert "indexed 12 documents" in built.stdout
    (small_corpus / "filings" / "new-10k-2026.html").write_text("<p>new filing</p>")
    result = run("serve", "--corpus", str(small_corpus), env={"TOOL_BEARER": "t"})
    assert result.returncode == 2
    assert "toolgym index build --corpus" in result.stderr
    assert "Traceback" not in result.stderr


def test_synth_then_index_with_a_local_model_directory(
    tmp_path: Path, embedding_model: Path
) -> None:
    corpus = tmp_path / "corpus"
    synth = run("corpus", "synth", "--out", str(corpus), "--seed", "3")
    assert synth.returncode == 0, synth.stderr
    assert (corpus / "filings" / "henderson-industries-10q-2025-q3.html").is_file()
    built = run(
        "index",
        "build",
        "--corpus",
        str(corpus),
        "--embedding-model",
        str(embedding_model),
        "--search",
        "hybrid",
    )
    assert built.returncode == 0, built.stderr
    assert "search=hybrid" in built.stdout
    assert (corpus / "index" / "dense.faiss").is_file()


def test_unknown_embedding_model_is_a_clear_error(small_corpus: Path, tmp_path: Path) -> None:
    result = run(
        "index",
        "build",
        "--corpus",
        str(small_corpus),
        "--embedding-model",
        str(tmp_path / "no-such-model"),
        env={"HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 2
    assert "cannot load embedding model" in result.stderr
    assert "Traceback" not in result.stderr
