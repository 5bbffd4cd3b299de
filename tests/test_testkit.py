"""The shared wait helpers fail fast when what they wait on dies, and fail after the deadline
when their condition never comes true: a broken test must fail, not hang."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from testkit import (
    WaitFailed,
    process_alive,
    start_worker,
    task_alive,
    thread_alive,
    wait_until,
    wait_until_async,
)

NEVER = 120.0  # a deadline no passing test reaches: failing before it proves the watch worked
FAST_S = 10.0  # what "at once" allows on a loaded 2-core machine (a process start included)


def never() -> bool:
    return False


def crash() -> None:
    raise ValueError("boom in the worker")


def test_a_thread_that_dies_at_once_fails_the_wait_with_its_exception() -> None:
    worker = start_worker(crash, name="crasher")
    started = time.monotonic()
    with pytest.raises(WaitFailed, match="thread 'crasher' raised ValueError") as failed:
        wait_until(never, what="a checkpoint", alive=thread_alive(worker), timeout_s=NEVER)
    assert time.monotonic() - started < FAST_S
    assert "while waiting for a checkpoint" in str(failed.value)
    assert isinstance(failed.value.__cause__, ValueError)  # the traceback shows where it broke


def test_a_thread_that_returns_without_the_condition_fails_the_wait() -> None:
    worker = start_worker(lambda: None, name="quitter")
    with pytest.raises(WaitFailed, match="thread 'quitter' returned"):
        wait_until(never, what="a file", alive=thread_alive(worker), timeout_s=NEVER)


def test_a_process_that_dies_at_once_fails_the_wait_with_its_code_and_log(tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    script = "import sys; print('last words before dying'); sys.exit(3)"
    with log.open("w") as out:
        child = subprocess.Popen([sys.executable, "-c", script], stdout=out, stderr=out)
    started = time.monotonic()
    with pytest.raises(WaitFailed, match="process 'child' exited with code 3") as failed:
        wait_until(never, what="a port", alive=process_alive(child, name="child", log=log))
    assert time.monotonic() - started < FAST_S
    assert "last words before dying" in str(failed.value)


def test_an_asyncio_task_that_dies_at_once_fails_the_wait_with_its_exception() -> None:
    async def crashing() -> None:
        raise RuntimeError("train() broke")

    async def go() -> None:
        task = asyncio.create_task(crashing())
        await wait_until_async(
            never, what="step 2", alive=task_alive(task, name="train"), timeout_s=NEVER
        )

    started = time.monotonic()
    with pytest.raises(WaitFailed, match="task 'train' raised RuntimeError") as failed:
        asyncio.run(go())
    assert time.monotonic() - started < FAST_S
    assert isinstance(failed.value.__cause__, RuntimeError)


def test_a_condition_that_never_comes_true_fails_after_the_deadline() -> None:
    stop = threading.Event()
    worker = start_worker(stop.wait, name="sleeper")  # alive throughout the wait
    started = time.monotonic()
    try:
        with pytest.raises(WaitFailed, match=r"gave up after 0\.3s waiting for the impossible"):
            wait_until(never, what="the impossible", alive=thread_alive(worker), timeout_s=0.3)
    finally:
        stop.set()
    assert 0.3 <= time.monotonic() - started < FAST_S


def test_the_async_wait_has_a_deadline_too() -> None:
    with pytest.raises(WaitFailed, match=r"gave up after 0\.2s waiting for nothing"):
        asyncio.run(wait_until_async(never, what="nothing", timeout_s=0.2))


def test_work_done_just_before_the_worker_exits_counts() -> None:
    done = threading.Event()
    worker = start_worker(done.set, name="finisher")
    worker.join()
    wait_until(done.is_set, what="the work", alive=thread_alive(worker), timeout_s=1)


def test_a_condition_that_comes_true_ends_the_wait() -> None:
    ready, stop = threading.Event(), threading.Event()

    def work() -> None:
        time.sleep(0.1)
        ready.set()
        stop.wait()  # still running when the wait sees `ready`

    worker = start_worker(work, name="worker")
    try:
        wait_until(ready.is_set, what="ready", alive=thread_alive(worker), timeout_s=NEVER)
    finally:
        stop.set()
