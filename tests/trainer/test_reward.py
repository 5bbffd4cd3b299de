"""Rewards without labels: `toolgym train` with a RULER judge (reward.ruler), alone or blended
with the environment's grader. The policy is a tiny local model trained by the real trainer
(TRL/PEFT); the judge is a scripted OpenAI-compatible server under a real uvicorn."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest
import yaml

from envs.graders.base import GradeResult, verdict_for
from envs.tool_env import make_tool_env
from judgekit import (
    COMPLETION_TOKENS,
    PROMPT_TOKENS,
    JudgeRequest,
    ScriptedJudge,
    scripted_judge,
)
from rollout.ruler import RulerConfig, RulerScorer, render_prompt
from rollout.store import read_trajectories
from rollout.trajectory import Trajectory, TrajectoryGroup, group_trajectories
from testkit import free_port
from trainer.config import TrainConfig, load_config
from trainer.errors import ConfigError
from trainer.reward import make_scorer, ruler_config
from trainer.step_rows import rows_for_step
from trainer.train import train

ENV_ID = "toolgym-test/Judged-v0"
TOOL = {
    "type": "function",
    "function": {"name": "noop", "description": "Does nothing.", "parameters": {}},
}
ASKED: list[str] = []  # row ids the environment's grader was asked about
RUBRIC = "Prefer answers that state a number."


def digit_share(answer: str) -> float:
    visible = re.sub(r"\s", "", answer)
    return sum(c.isdigit() for c in visible) / len(visible) if visible else 0.0


class DigitShareGrader:
    """A grader whose score is known from the answer alone: its share of digits."""

    async def grade(self, row: Any, answer: str, tools_used: set[str]) -> GradeResult:
        ASKED.append(row.id)
        score = digit_share(answer)
        return GradeResult(score=score, verdict=verdict_for(score))


def make_judged_env(**kwargs: Any) -> Any:
    return make_tool_env(grader=DigitShareGrader(), tools_url="http://unused", **kwargs)


@pytest.fixture(autouse=True)
def registered() -> Iterator[None]:
    if ENV_ID not in gym.registry:
        gym.register(ENV_ID, entry_point=make_judged_env, nondeterministic=True)
    ASKED.clear()
    yield


def write_rows(path: Path, prefix: str, count: int, *, labelled: bool) -> Path:
    rows = []
    for i in range(count):
        row: dict[str, Any] = {
            "id": f"{prefix}{i}",
            "prompt": f"Say a number ({prefix}{i}).",
            "tools": [TOOL],
            "metadata": {"task_type": "digits", "difficulty": "easy"},
        }
        if labelled:
            row["reference_answer"] = "7"
        rows.append(row)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def settings(model: Path, dataset: Path, out: Path, **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "base_model": str(model),
        "environment": {"id": ENV_ID, "limits": {"max_turns": 1}},
        "train_dataset": str(dataset),
        "policy": {"backend": "local", "max_tokens_per_turn": 6, "concurrency": 16},
        "lora": {"rank": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        "group_size": 4,
        "batch_size": 2,
        "steps": 2,
        "learning_rate": 1e-3,
        "output_dir": str(out),
        "seed": 0,
    }
    base.update(changes)
    return base


def trajectories(folder: Path) -> list[Trajectory]:
    return [t for p in sorted(folder.glob("*.jsonl")) for t in read_trajectories(p).trajectories]


def metrics(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def prompts(dataset: Path) -> dict[str, str]:
    rows = [json.loads(line) for line in dataset.read_text().splitlines()]
    return {r["id"]: r["prompt"] for r in rows}


def members(group: TrajectoryGroup) -> list[Trajectory]:
    return sorted(group.trajectories, key=lambda t: t.sample_index)


def request_for(script: ScriptedJudge, task: str, attempts: list[Trajectory]) -> JudgeRequest:
    """The request that judged these attempts (a val row played twice with the same answer is
    asked about once: the second time comes from the cache)."""
    prompt = render_prompt(task, attempts)
    (request,) = [r for r in script.for_task(task) if r.prompt == prompt]
    return request


def test_a_judge_alone_trains_on_rows_without_answers(
    tiny_policy_dir: Path, tmp_path: Path
) -> None:
    dataset = write_rows(tmp_path / "rows.jsonl", "u", 4, labelled=False)
    out = tmp_path / "run"
    with scripted_judge() as judge:
        ruler = {"judge": judge.spec, "rubric": RUBRIC}
        config = TrainConfig.model_validate(
            settings(tiny_policy_dir, dataset, out, reward={"ruler": ruler})
        )
        result = asyncio.run(train(config, echo=False))
    assert (result.adapter / "adapter_config.json").is_file() and result.version == "v0002"
    assert ASKED == []  # the environment's grader was never asked about an unlabelled row
    groups = group_trajectories(trajectories(out / "rollouts"))
    requests = judge.script.requests
    assert len(groups) == 4 and len(requests) == 4  # one request per group
    tasks = prompts(dataset)
    for group in groups:
        attempts = members(group)
        (request,) = judge.script.for_task(tasks[group.row_id])
        # every attempt of the group, together, in one prompt, with the rubric
        assert len(request.attempts) == len(attempts) == 4
        assert request.prompt == render_prompt(tasks[group.row_id], attempts, RUBRIC)
        assert request.model == "judge-model"
        assert [t.reward for t in attempts] == request.scores  # weight 1: the judge's scores
        assert all(t.scores == {"ruler": t.reward} and not t.failed for t in attempts)
    for record in metrics(out):
        assert record["judge_calls"] == 2 and record["judge_cache_hits"] == 0
        assert record["judge_prompt_tokens"] == 2 * PROMPT_TOKENS
        assert record["judge_completion_tokens"] == 2 * COMPLETION_TOKENS
        assert record["judge_failed_groups"] == 0
        assert record["signal_groups"] == 2 and record["updates"] == 1
    assert len((out / "judge-cache.jsonl").read_text().splitlines()) == 4  # the default cache


def test_grader_and_judge_blend_in_training_and_val(tiny_policy_dir: Path, tmp_path: Path) -> None:
    dataset = write_rows(tmp_path / "rows.jsonl", "l", 2, labelled=True)
    val = write_rows(tmp_path / "val.jsonl", "v", 2, labelled=True)
    out = tmp_path / "run"
    with scripted_judge() as judge:
        reward = {"grader": 0.5, "ruler": {"judge": judge.spec, "weight": 0.5}}
        changes = {"steps": 1, "val_dataset": str(val), "eval_every": 1, "reward": reward}
        config = TrainConfig.model_validate(settings(tiny_policy_dir, dataset, out, **changes))
        asyncio.run(train(config, echo=False))
    tasks = prompts(dataset) | prompts(val)
    played = group_trajectories(trajectories(out / "rollouts") + trajectories(out / "eval"))
    assert ASKED  # the grader graded: it has a share
    for group in played:
        request = request_for(judge.script, tasks[group.row_id], members(group))
        for trajectory, judged in zip(members(group), request.scores or [], strict=True):
            assert trajectory.scores["grader"] == digit_share(trajectory.answer or "")
            assert trajectory.scores["ruler"] == judged
            assert trajectory.reward == pytest.approx((trajectory.scores["grader"] + judged) / 2)
    evaluated = {r["step"]: r["val_reward"] for r in metrics(out)}
    for step in (0, 1):
        val_rewards = [
            t.reward for t in trajectories(out / "eval") if t.group_id.startswith(f"eval{step}/")
        ]
        assert len(val_rewards) == 2  # one greedy attempt per val row, judged alone
        assert evaluated[step] == pytest.approx(sum(val_rewards) / 2)  # type: ignore[arg-type]


def test_a_group_the_judge_cannot_score_is_left_out_and_counted(
    tiny_policy_dir: Path, tmp_path: Path
) -> None:
    dataset = write_rows(tmp_path / "rows.jsonl", "u", 4, labelled=False)
    tasks = prompts(dataset)
    bad, good = (row_id for row_id in rows_for_step(list(tasks), 1, 2, 0))
    out = tmp_path / "run"
    with scripted_judge(ScriptedJudge(garbage_for={tasks[bad]})) as judge:
        reward = {"ruler": {"judge": judge.spec, "max_retries": 1}}
        config = TrainConfig.model_validate(
            settings(tiny_policy_dir, dataset, out, steps=1, reward=reward)
        )
        result = asyncio.run(train(config, echo=False))
    assert result.version == "v0001"  # the other group trained
    (record,) = metrics(out)
    assert record["judge_failed_groups"] == 1 and record["signal_groups"] == 1
    assert record["updates"] == 1 and record["zero_signal"] == 0.0  # not taken for no-signal
    assert record["failed_episodes"] == 0  # the episodes themselves were fine
    assert record["judge_calls"] == 3  # the garbage was asked about twice (max_retries 1)
    assert len(judge.script.for_task(tasks[bad])) == 2
    groups = {g.row_id: g for g in group_trajectories(trajectories(out / "rollouts"))}
    assert all(t.judge_failed and t.reward is None for t in groups[bad].trajectories)
    (request,) = judge.script.for_task(tasks[good])
    assert [t.reward for t in members(groups[good])] == request.scores


def test_a_judge_down_everywhere_stops_the_run_and_a_rerun_judges_without_replaying(
    tiny_policy_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from trainer.cli import main

    dataset = write_rows(tmp_path / "rows.jsonl", "u", 6, labelled=False)
    out = tmp_path / "run"
    down = f"judge-model@http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    ruler = {"judge": down, "max_retries": 0, "max_failed_steps": 2}
    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump(settings(tiny_policy_dir, dataset, out, steps=3, reward={"ruler": ruler}))
    )

    assert main(["train", "--config", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    *notes, last = err.strip().splitlines()
    assert last.startswith("toolgym: error: steps 1-2 skipped: the judge failed on every group")
    assert "reward.ruler.max_failed_steps" in last and "rerun the same command" in last
    assert [n.split(":")[0] for n in notes if "skipped" in n] == [
        "step 1 skipped",
        "step 2 skipped",
    ]
    records = metrics(out)
    assert [r["step"] for r in records] == [1, 2] and all(r["skipped"] for r in records)
    assert all(r["judge_failed_groups"] == 2 and r["judge_calls"] == 2 for r in records)
    assert not (out / "checkpoint" / "state.json").exists()  # a skipped step is no checkpoint
    assert sorted(p.name for p in (out / "adapters").iterdir()) == ["v0000"]  # no update
    step1 = out / "rollouts" / "step-00001.jsonl"
    played = {t.key: t.metrics.episode_s for t in read_trajectories(step1).trajectories}
    assert len(played) == 8 and all(t.judge_failed for t in read_trajectories(step1).trajectories)

    with scripted_judge() as judge:
        rerun = ["--set", f"reward.ruler.judge={judge.spec}", "--set", "steps=1"]
        assert main(["train", "--config", str(path), "--quiet", *rerun]) == 0
    assert len(judge.script.requests) == 2  # step 1's two groups judged again
    again = read_trajectories(step1).trajectories
    assert {t.key: t.metrics.episode_s for t in again} == played  # the same episodes
    assert len(step1.read_text().splitlines()) == 16  # the new scores appended, none replayed
    assert all(t.reward is not None and not t.failed for t in again)
    assert (out / "checkpoint" / "state.json").exists()


def test_a_second_identical_scoring_asks_the_judge_nothing(tmp_path: Path) -> None:
    group = [
        Trajectory(
            row_id="r",
            group_id="r",
            sample_index=i,
            env_id="e",
            policy_version="base",
            messages=[
                {"role": "system", "content": "sys"},
                {"role": "user", "content": "Name a number."},
                {"role": "assistant", "content": f"Answer: {i}"},
            ],
        )
        for i in range(3)
    ]
    row = type("Row", (), {"prompt": "Name a number."})()
    with scripted_judge() as judge:
        config = TrainConfig.model_validate(
            {
                "base_model": "m",
                "output_dir": str(tmp_path),
                "reward": {"ruler": {"judge": judge.spec}},
            }
        )
        scorer = make_scorer(config)
        assert scorer is not None
        asyncio.run(scorer.score_group(row, [t.model_copy(deep=True) for t in group]))
        assert len(judge.script.requests) == 1
        again = [t.model_copy(deep=True) for t in group]
        asyncio.run(scorer.score_group(row, again))  # the same scorer
        settings_ = ruler_config(config)
        assert isinstance(settings_, RulerConfig)
        fresh = RulerScorer(settings_)  # a resumed run: a new scorer over the same cache file
        third = [t.model_copy(deep=True) for t in group]
        asyncio.run(fresh.score_group(row, third))
        assert len(judge.script.requests) == 1  # no new request either time
    assert scorer.stats.cache_hits == 1 and scorer.stats.calls == 1
    assert fresh.stats.cache_hits == 1 and fresh.stats.calls == 0
    assert [t.reward for t in again] == [t.reward for t in third] == judge.script.requests[0].scores


# ---- the config ----


def write_config(tmp_path: Path, reward: str, dataset: Path | None = None) -> Path:
    path = tmp_path / "run.yaml"
    text = f"base_model: m\nenvironment: {{id: {ENV_ID}}}\nreward:\n{reward}"
    if dataset is not None:
        text += f"train_dataset: {dataset}\noutput_dir: {tmp_path / 'out'}\n"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("reward", "expected"),
    [
        ("  ruler: {judge: j@http://h:1, wieght: 1}\n", "reward.ruler.wieght: unknown key"),
        ("  graders: 1\n", "reward.graders: unknown key"),
        ("  ruler: {judge: j}\n", "reward.ruler.judge: judge 'j': write NAME@URL"),
        ("  ruler: {weight: 1}\n", "reward.ruler.judge: required"),
        (
            "  ruler: {judge: j@http://h:1, weight: 0}\n",
            "reward.ruler.weight: Input should be greater",
        ),
        ("  grader: 0\n", "reward: grader: 0 leaves no reward"),
        ("  grader: -1\n", "reward.grader: Input should be greater than or equal to 0"),
    ],
)
def test_reward_mistakes_are_refused_in_one_line(
    tmp_path: Path, reward: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, reward))
    assert expected in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("reward", "grader", "judge"),
    [
        ("  {}\n", 1.0, 0.0),  # an empty section: the grader alone, as without one
        ("  ruler: {judge: j@http://h:1}\n", 0.0, 1.0),  # a judge and no grader weight: judge alone
        ("  grader: 1\n  ruler: {judge: j@http://h:1, weight: 3}\n", 0.25, 0.75),  # normalised
    ],
)
def test_weights_are_normalised_into_one_blend(
    tmp_path: Path, reward: str, grader: float, judge: float
) -> None:
    config = load_config(write_config(tmp_path, reward))
    assert (config.reward.grader_weight, config.reward.ruler_weight) == (grader, judge)
    settings_ = ruler_config(config)
    assert (settings_.weight if settings_ else 0.0) == judge


def test_without_a_reward_section_the_grader_alone_scores() -> None:
    config = TrainConfig.model_validate({"base_model": "m"})
    assert config.reward.grader_weight == 1.0 and config.reward.ruler is None
    assert make_scorer(config) is None


def test_a_relative_cache_path_is_relative_to_the_config(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, "  ruler: {judge: j@http://h:1, cache: c.jsonl}\n"))
    assert config.reward.ruler is not None and config.reward.ruler.cache == tmp_path / "c.jsonl"


def test_each_rank_keeps_its_own_judge_cache(tmp_path: Path) -> None:
    """Ranks judge disjoint groups: one shared file would interleave their appends."""
    config = load_config(write_config(tmp_path, "  ruler: {judge: j@http://h:1, cache: c.jsonl}\n"))
    alone, first, second = make_scorer(config), make_scorer(config, 0), make_scorer(config, 1)
    assert alone is not None and first is not None and second is not None
    assert alone.config.cache_path == tmp_path / "c.jsonl"
    assert first.config.cache_path == tmp_path / "c.rank0.jsonl"
    assert second.config.cache_path == tmp_path / "c.rank1.jsonl"


@pytest.mark.parametrize("reward", ["  {}\n", "  grader: 0.5\n  ruler: {judge: j@http://h:1}\n"])
def test_a_grader_share_with_rows_lacking_answers_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], reward: str
) -> None:
    from trainer.cli import main

    dataset = write_rows(tmp_path / "rows.jsonl", "u", 3, labelled=False)
    path = write_config(tmp_path, reward, dataset)
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "reward.grader: 3 of 3 rows" in err
    assert "have no reference_answer" in err and str(dataset) in err
    assert not (tmp_path / "out" / "adapters").exists()  # refused before a model was loaded
