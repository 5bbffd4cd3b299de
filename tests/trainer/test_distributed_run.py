"""`toolgym train` data-parallel as a user runs it: real processes, gloo, 2 ranks on CPU.

The run's environment comes from a plugin (a distribution on PYTHONPATH with a `toolgym.envs`
entry point), so that every rank the launcher starts registers it on `import envs`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pluginkit import TOOLGYM, run_env, run_toolgym, write_config, write_plugin, write_rows
from rollout.tiny_policy import build_tiny_policy
from testkit import process_alive, wait_until

ENV_ID = "toolgym-test/DistVowels-v0"
GRADER = """
import re


class VowelShareGrader:
    \"\"\"The share of the answer's letters that are vowels: differs between attempts, so
    every group carries signal and every step updates.\"\"\"

    async def grade(self, row, answer, tools_used):
        letters = re.sub(r"[^a-z]", "", answer.lower())
        score = sum(c in "aeiou" for c in letters) / len(letters) if letters else 0.0
        return GradeResult(score=score, verdict=verdict_for(score))
"""
STEPS = 3
STEP_WAIT_S = 240  # a step takes seconds; minutes on a machine shared many ways, never more


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """-> (the run's config, the environment its processes need)."""
    root = tmp_path_factory.mktemp("dist_run")
    plugin = write_plugin(root, "dist_vowels", ENV_ID, GRADER, "VowelShareGrader")
    words = "revenue margin income company quarter report growth cash total assets".split()  # noqa: SIM905
    texts = [f"{w} {i} {w.upper()} {i * 7}" for i in range(300) for w in words[i % 10 : i % 10 + 1]]
    model = build_tiny_policy(root / "model", texts, vocab_size=400, initializer_range=0.3)
    write_rows(root / "rows.jsonl", "vowels", "Say something", "a", 8)
    config = {
        "base_model": str(model),
        "environment": {"id": ENV_ID, "limits": {"max_turns": 1}},
        "train_dataset": "rows.jsonl",
        "policy": {"backend": "local", "max_tokens_per_turn": 6, "concurrency": 8},
        "lora": {"rank": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        "group_size": 4,
        "batch_size": 4,
        "steps": STEPS,
        "learning_rate": 3e-2,
        "output_dir": "run",
        "distributed_timeout_s": 120,
    }
    return write_config(root / "train.yaml", config), run_env(plugin)


def toolgym(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_toolgym(env, STEP_WAIT_S * 2, *args)


def checkpointed(out: Path) -> int:
    state = out / "checkpoint" / "state.json"
    return int(json.loads(state.read_text())["step"]) if state.exists() else 0


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc: no dependency)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


def rank_pid(launcher: int, rank: int) -> int | None:
    for pid in descendants(launcher):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        launched = any(entry.startswith(b"TORCHELASTIC_RUN_ID=") for entry in environ)
        if launched and f"RANK={rank}".encode() in environ:
            return pid
    return None


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_dead_rank_stops_the_run_which_resumes_with_the_same_world_size(
    setup: tuple[Path, dict[str, str]],
) -> None:
    config, env = setup
    out = config.parent / "run"
    log = config.parent / "first.log"
    with log.open("w") as handle:
        launcher = subprocess.Popen(
            [TOOLGYM, "train", "--config", str(config), "--nproc-per-node", "2", "--quiet"],
            stdout=handle, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
    try:
        alive = process_alive(launcher, name="toolgym train", log=log)
        wait_until(lambda: checkpointed(out) >= 1, what="step 1's checkpoint", alive=alive,
                   timeout_s=STEP_WAIT_S)  # fmt: skip
        victim = rank_pid(launcher.pid, 1)
        assert victim is not None, descendants(launcher.pid)
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        _, stderr = launcher.communicate(timeout=60)  # the run stops: no hang on rank 0
    finally:
        if launcher.poll() is None:
            launcher.kill()
    stopped_s = time.monotonic() - killed
    last = stderr.strip().splitlines()[-1]
    assert launcher.returncode == 2, stderr
    assert last.startswith("toolgym: error: rank 1 ") and "killed by SIGKILL" in last, stderr
    assert stopped_s < 60
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["world_size"] == 2 and state["step"] < STEPS

    # another world size is refused, in one line, before any rank starts
    other = toolgym(env, "train", "--config", str(config), "--resume", "--quiet")
    assert other.returncode == 2
    assert other.stderr.strip().count("\n") == 0, other.stderr
    assert "trained by 2 process(es), not 1" in other.stderr

    # the same world size, through the user's own torchrun: the ranks join and finish the run
    resumed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         "-m", "trainer.cli", "train", "--config", str(config), "--resume"],
        capture_output=True, text=True, timeout=STEP_WAIT_S * 2, env=env,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count("adapter v0003") == 1  # rank 0 reports; the other is quiet
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sorted({r["step"] for r in records}) == list(range(1, STEPS + 1))
    assert all(r["signal_groups"] > 0 and r["updates"] == 1 for r in records), records
    assert all(r["prompts_played"] == 4 for r in records)  # both ranks' shares, once
    final = json.loads((out / "checkpoint" / "state.json").read_text())
    assert (final["step"], final["world_size"]) == (STEPS, 2)
    shares = sorted(p.name for p in (out / "rollouts").iterdir())
    assert shares == [f"step-{s:05d}.rank{r}.jsonl" for s in range(1, STEPS + 1) for r in (0, 1)]
