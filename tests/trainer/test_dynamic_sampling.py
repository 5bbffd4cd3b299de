"""Dynamic sampling: groups without signal are replaced by fresh prompts, up to refill_rounds.

The environment here makes signal a property of the row: "flat" rows score 0.0 whatever the
answer (never any signal), "live" rows score a hash of the answer (a tiny random policy at
temperature 1 never says the same thing four times). So which groups carry signal, and so which
prompts each refill round draws, is known before any step runs.
"""

from __future__ import annotations

import asyncio
import json
import zlib
from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest

from envs.graders.base import GradeResult, verdict_for
from envs.tool_env import make_tool_env
from rollout.store import read_trajectories
from rollout.trajectory import Trajectory, TrajectoryGroup, TurnTokens, group_trajectories
from testkit import task_alive, wait_until_async
from trainer.batch import BatchStats, TrainSequence, build_sequences
from trainer.config import TrainConfig
from trainer.metrics import table_header, table_row
from trainer.step_rows import refill_count, refill_order, rows_for_step
from trainer.train import train

ENV_ID = "toolgym-test/FlatOrLive-v0"
STEP_WAIT_S = 120  # a step takes seconds here; a hang, not a slow machine, passes this
TOOL = {
    "type": "function",
    "function": {"name": "noop", "description": "Does nothing.", "parameters": {}},
}
BATCH = 4
GROUP = 4
ROWS = [f"flat{i}" if i % 2 else f"live{i}" for i in range(16)]


class FlatOrLiveGrader:
    async def grade(self, row: Any, answer: str, tools_used: set[str]) -> GradeResult:
        score = 0.0 if row.id.startswith("flat") else (zlib.crc32(answer.encode()) % 11) / 10
        return GradeResult(score=score, verdict=verdict_for(score))


def make_env(**kwargs: Any) -> Any:
    return make_tool_env(grader=FlatOrLiveGrader(), tools_url="http://unused", **kwargs)


@pytest.fixture(autouse=True, scope="module")
def registered() -> None:
    if ENV_ID not in gym.registry:
        gym.register(ENV_ID, entry_point=make_env, nondeterministic=True)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("flat_or_live") / "rows.jsonl"
    rows = [
        {
            "id": row_id,
            "prompt": f"Say something ({row_id}).",
            "reference_answer": "x",
            "tools": [TOOL],
            "metadata": {"task_type": row_id.rstrip("0123456789"), "difficulty": "easy"},
        }
        for row_id in ROWS
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def config(model: Path, dataset: Path, out: Path, **changes: Any) -> TrainConfig:
    base = {
        "base_model": str(model),
        "environment": {"id": ENV_ID, "limits": {"max_turns": 1}},
        "train_dataset": str(dataset),
        "policy": {"backend": "local", "max_tokens_per_turn": 4, "concurrency": 32},
        "lora": {"rank": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        "group_size": GROUP,
        "batch_size": BATCH,
        "steps": 1,
        "learning_rate": 1e-3,
        "output_dir": str(out),
        "seed": 0,
    }
    base.update(changes)
    return TrainConfig.model_validate(base)


def metrics(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def rounds_of(path: Path, step: int) -> dict[int, list[TrajectoryGroup]]:
    """The step's groups in its rollouts file, by round (0: its first prompts)."""
    by_round: dict[int, list[TrajectoryGroup]] = {}
    for group in group_trajectories(read_trajectories(path).trajectories):
        prefix = group.group_id.split("/")[0]  # step3 or step3r2
        head, _, round_ = prefix.partition("r")
        assert head == f"step{step}", group.group_id
        by_round.setdefault(int(round_ or 0), []).append(group)
    return by_round


def expected_rounds(step: int, refill_rounds: int, signal_of: Any) -> list[list[str]]:
    """The row ids each round should play, from the pure functions and each row's signal."""
    rounds = [rows_for_step(ROWS, step, BATCH, 0)]
    candidates = refill_order(ROWS, step, BATCH, 0)
    for _ in range(refill_rounds):
        played = [r for round_ in rounds for r in round_]
        signal = sum(1 for r in played if signal_of(r))
        if signal >= BATCH or len(played) - len(rounds[0]) >= len(candidates):
            break
        drawn = len(played) - len(rounds[0])
        count = refill_count(BATCH - signal, signal, len(played), BATCH)
        rounds.append(candidates[drawn : drawn + count])
    return rounds


def live(row_id: str) -> bool:
    return row_id.startswith("live")


# --- the pure parts --------------------------------------------------------------------------


@pytest.mark.parametrize("count", [9, 16])
def test_refill_prompts_are_the_other_rows_in_an_order_fixed_by_seed_and_step(count: int) -> None:
    rows = list(range(count))
    for step in range(1, 6):
        first = rows_for_step(rows, step, BATCH, seed=3)
        order = refill_order(rows, step, BATCH, seed=3)
        assert not set(first) & set(order)  # never a prompt the step already played
        assert sorted(first + order) == rows  # and every other row, each once
        assert order == refill_order(rows, step, BATCH, seed=3)  # a resumed step draws the same
    orders = {tuple(refill_order(rows, step, BATCH, seed)) for step in (1, 2) for seed in (0, 1)}
    assert len(orders) == 4  # another step or seed, another draw


@pytest.mark.parametrize(
    ("missing", "signal", "played", "expected"),
    [
        (4, 0, 4, 4),  # nothing had signal yet: a whole batch
        (2, 2, 4, 4),  # half had signal: twice the missing ones
        (1, 3, 4, 2),  # ceil(1 * 4 / 3)
        (3, 1, 4, 4),  # 12 by the share, but never more than a batch
        (1, 7, 8, 2),
    ],
)
def test_a_refill_round_oversamples_by_the_observed_signal_share(
    missing: int, signal: int, played: int, expected: int
) -> None:
    assert refill_count(missing, signal, played, BATCH) == expected


def trajectory(group: str, index: int, reward: float, token: int) -> Trajectory:
    turn = TurnTokens(
        prompt_ids=[1, 2],
        completion_ids=[token, token],
        logprobs=[-0.5, -0.5],
        finish_reason="stop",
        model="m",
        latency_s=0.1,
    )
    return Trajectory(
        row_id=group,
        group_id=group,
        sample_index=index,
        env_id=ENV_ID,
        policy_version="v0000",
        messages=[{"role": "user", "content": "q"}],
        turns=[turn],
        reward=reward,
    )


def test_only_the_first_max_groups_signal_groups_are_trained_on() -> None:
    rewards = {"a": [0, 0], "b": [0, 1], "c": [1, 1], "d": [1, 0], "e": [0, 1]}
    tokens = {name: 10 + i for i, name in enumerate(rewards)}  # a group's sequences' id
    groups = group_trajectories(
        [
            trajectory(name, i, float(r), tokens[name])
            for name, values in rewards.items()
            for i, r in enumerate(values)
        ]
    )

    def trained(sequences: list[TrainSequence]) -> list[str]:
        names = {token: name for name, token in tokens.items()}
        return sorted({names[s.ids[-1]] for s in sequences})

    sequences, stats = build_sequences(groups, scale_rewards=False, max_tokens=64, max_groups=2)
    assert trained(sequences) == ["b", "d"]  # e has signal too, but comes after two that do
    assert stats == BatchStats(groups=5, zero_signal_groups=2, signal_groups=2)
    sequences, stats = build_sequences(groups, scale_rewards=False, max_tokens=64)
    assert trained(sequences) == ["b", "d", "e"] and stats.signal_groups == 3


def test_the_live_table_shows_signal_groups_and_prompts_played() -> None:
    header = table_header().split()
    cells = table_row({"step": 3, "signal_groups": 4, "prompts_played": 11}).split()
    assert len(cells) == len(header)
    assert cells[header.index("signal_groups")] == "4"
    assert cells[header.index("prompts_played")] == "11"
    assert table_row({"step": 1}).split()[header.index("signal_groups")] == "-"  # an old row


def test_refill_rounds_is_off_by_default() -> None:
    assert TrainConfig.model_validate({"base_model": "m"}).refill_rounds == 0


# --- through the real trainer -----------------------------------------------------------------


def test_without_refill_a_step_plays_its_batch_and_nothing_else(
    tiny_policy_dir: Path, dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    asyncio.run(train(config(tiny_policy_dir, dataset, out), echo=False))
    by_round = rounds_of(out / "rollouts" / "step-00001.jsonl", 1)
    first = rows_for_step(ROWS, 1, BATCH, 0)
    assert list(by_round) == [0]
    assert [g.group_id for g in by_round[0]] == [f"step1/{r}" for r in first]  # as before
    assert any(not live(r) for r in first)  # so there was something to refill
    (record,) = metrics(out)
    signal = [g for g in by_round[0] if g.has_signal]
    assert [g.row_id for g in signal] == [r for r in first if live(r)]  # the premise holds
    assert record["prompts_played"] == BATCH and record["refill_rounds_used"] == 0
    assert record["signal_groups"] == len(signal) < BATCH
    assert record["zero_signal"] == pytest.approx(1 - len(signal) / BATCH)
    assert record["updates"] == 1


def test_refill_rounds_replace_zero_signal_groups_with_fresh_prompts(
    tiny_policy_dir: Path, dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import trainer.loop

    trained: list[tuple[list[TrajectoryGroup], int]] = []

    def recorded(groups: list[TrajectoryGroup], **kwargs: Any) -> Any:
        sequences, stats = build_sequences(groups, **kwargs)
        trained.append((groups, len(sequences)))
        return sequences, stats

    monkeypatch.setattr(trainer.loop, "build_sequences", recorded)
    out = tmp_path / "run"
    cfg = config(tiny_policy_dir, dataset, out, refill_rounds=3, steps=2)
    asyncio.run(train(cfg, echo=False))
    for step, record in enumerate(metrics(out), start=1):
        by_round = rounds_of(out / "rollouts" / f"step-{step:05d}.jsonl", step)
        planned = expected_rounds(step, 3, live)
        assert [[g.row_id for g in by_round[r]] for r in sorted(by_round)] == planned
        assert len(planned) > 1  # the step did refill
        first, refills = set(planned[0]), [r for round_ in planned[1:] for r in round_]
        assert not first & set(refills) and len(set(refills)) == len(refills)  # fresh prompts
        played = [g for r in sorted(by_round) for g in by_round[r]]
        signal = [g for g in played if g.has_signal]
        assert [g.row_id for g in signal] == [g.row_id for g in played if live(g.row_id)]
        assert len(signal) > BATCH  # over-sampled (seed 0): more than the step may train on
        assert record["signal_groups"] == BATCH  # at most batch_size trained on
        assert record["prompts_played"] == len(played) > BATCH
        assert record["refill_rounds_used"] == len(planned) - 1
        assert record["zero_signal"] == pytest.approx(1 - len(signal) / len(played))
        groups, sequences = trained[step - 1]
        assert [g.group_id for g in groups] == [g.group_id for g in played]
        assert sequences == BATCH * GROUP  # one segment per episode, from the signal groups only


def test_a_step_killed_mid_refill_resumes_with_the_same_groups(
    tiny_policy_dir: Path, dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import trainer.loop

    # One episode at a time, so the kill lands inside a refill round, not between rounds.
    slow = {"policy": {"backend": "local", "max_tokens_per_turn": 4, "concurrency": 1}}
    out = tmp_path / "run"
    cfg = config(tiny_policy_dir, dataset, out, refill_rounds=3, steps=2, **slow)
    rollouts = out / "rollouts" / "step-00002.jsonl"

    def refilling() -> bool:
        return rollouts.exists() and '"group_id":"step2r1/' in rollouts.read_text()

    async def killed_in_step_2s_refill() -> None:
        task = asyncio.create_task(train(cfg, echo=False))
        alive = task_alive(task, name="train()")
        try:
            await wait_until_async(
                refilling,
                what="step 2's first refill",
                alive=alive,
                timeout_s=STEP_WAIT_S,
                interval_s=0.005,
            )
        finally:
            task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(killed_in_step_2s_refill())
    before = {t.key: t for t in read_trajectories(rollouts).trajectories}
    refilled_before = {t.group_id for t in before.values() if t.group_id.startswith("step2r")}
    assert refilled_before and len(before) < sum(map(len, expected_rounds(2, 3, live))) * GROUP

    trained: list[list[TrajectoryGroup]] = []

    def recorded(groups: list[TrajectoryGroup], **kwargs: Any) -> Any:
        trained.append(groups)
        return build_sequences(groups, **kwargs)

    monkeypatch.setattr(trainer.loop, "build_sequences", recorded)
    asyncio.run(train(cfg, resume=True, echo=False))
    (groups,) = trained  # step 2, resumed
    played = {t.key: t for g in groups for t in g.trajectories}
    assert refilled_before <= {g.group_id for g in groups}  # the same refill prompts
    assert all(played[k].model_dump() == t.model_dump() for k, t in before.items())  # not replayed
    uninterrupted = tmp_path / "again"
    trained.clear()
    again = config(tiny_policy_dir, dataset, uninterrupted, refill_rounds=3, steps=2, **slow)
    asyncio.run(train(again, echo=False))
    assert [g.group_id for g in groups] == [g.group_id for g in trained[1]]
    assert [r["step"] for r in metrics(out)] == [1, 2]
