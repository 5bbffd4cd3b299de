"""Token-exact flattening, trajectory files that survive a kill, groups."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rollout.errors import RolloutConfigError
from rollout.store import (
    TrajectoryWriter,
    read_groups,
    read_trajectories,
    rewrite_trajectories,
)
from rollout.trajectory import Trajectory, TurnTokens, token_segments


def turn(prompt: list[int], completion: list[int]) -> TurnTokens:
    return TurnTokens(
        prompt_ids=prompt,
        completion_ids=completion,
        logprobs=[-0.5 - i for i in range(len(completion))],
        finish_reason="stop",
        model="m",
        latency_s=0.1,
    )


def trajectory(group: str, index: int, reward: float | None = 1.0) -> Trajectory:
    return Trajectory(
        row_id=group,
        group_id=group,
        sample_index=index,
        env_id="toolgym/FilingsQA-v0",
        policy_version="base",
        messages=[{"role": "user", "content": "q"}],
        turns=[turn([1, 2], [3, 4])],
        reward=reward,
    )


def test_turns_that_extend_each_other_make_one_sequence() -> None:
    turns = [turn([1, 2, 3], [10, 11]), turn([1, 2, 3, 10, 11, 20, 21], [12])]
    segments, mismatches = token_segments(turns)
    assert mismatches == 0
    assert len(segments) == 1
    (seq,) = segments
    assert seq.ids == [1, 2, 3, 10, 11, 20, 21, 12]
    assert seq.mask == [0, 0, 0, 1, 1, 0, 0, 1]
    assert seq.logprobs == [0.0, 0.0, 0.0, -0.5, -1.5, 0.0, 0.0, -0.5]
    assert seq.prompt_length == 3


def test_a_re_rendered_prompt_starts_a_new_segment_and_is_counted() -> None:
    # The second prompt renders the first completion as [10, 99]: not what was generated.
    turns = [turn([1, 2], [10, 11]), turn([1, 2, 10, 99, 20], [12, 13])]
    segments, mismatches = token_segments(turns)
    assert mismatches == 1
    assert [s.ids for s in segments] == [[1, 2, 10, 11], [1, 2, 10, 99, 20, 12, 13]]
    assert [s.mask for s in segments] == [[0, 0, 1, 1], [0, 0, 0, 0, 0, 1, 1]]
    # Every generated token is trained on exactly once.
    generated = [i for s in segments for i, m in zip(s.ids, s.mask, strict=True) if m]
    assert generated == [10, 11, 12, 13]


def test_segments_are_computed_once_and_follow_the_turns() -> None:
    record = trajectory("a", 0)
    record.turns = [turn([1, 2], [10, 11]), turn([1, 2, 10, 99], [12])]
    first = record.segments()
    assert record.segments() is first  # the trainer reuses what the episode's end computed
    assert record.prompt_mismatches() == 1 == len(first) - 1
    assert record == Trajectory.model_validate_json(record.model_dump_json())  # not on record
    assert "segments" not in record.model_dump_json()
    record.turns.append(turn([1, 2, 10, 99, 12, 5], [13]))  # changed turns: computed afresh
    assert record.segments() is not first
    assert [s.ids for s in record.segments()][-1] == [1, 2, 10, 99, 12, 5, 13]


def test_writer_cuts_a_torn_last_line_and_readers_skip_it(tmp_path: Path) -> None:
    out = tmp_path / "t.jsonl"
    with TrajectoryWriter(out) as writer:
        writer.write(trajectory("a", 0))
        writer.write(trajectory("a", 1))
    with out.open("a") as handle:
        handle.write('{"row_id": "a", "group_id": "a", "sample_ind')  # killed mid-write
    read = read_trajectories(out)
    assert read.partial_tail
    assert [t.key for t in read.trajectories] == [("a", 0), ("a", 1)]
    with TrajectoryWriter(out) as writer:
        writer.write(trajectory("a", 2))
    read = read_trajectories(out)
    assert not read.partial_tail
    assert [t.key for t in read.trajectories] == [("a", 0), ("a", 1), ("a", 2)]


def test_a_corrupt_line_in_the_middle_is_an_error_with_its_line(tmp_path: Path) -> None:
    out = tmp_path / "t.jsonl"
    out.write_text(trajectory("a", 0).model_dump_json() + "\nnot json\n")
    with pytest.raises(RolloutConfigError, match=r"t\.jsonl:2"):
        read_trajectories(out)


def test_groups_and_their_signal(tmp_path: Path) -> None:
    out = tmp_path / "t.jsonl"
    with TrajectoryWriter(out) as writer:
        for index, reward in enumerate([1.0, 0.0, None]):
            writer.write(trajectory("mixed", index, reward))
        for index in range(3):
            writer.write(trajectory("flat", index, 1.0))
    groups = {g.group_id: g for g in read_groups(out)}
    assert groups["mixed"].rewards == [1.0, 0.0]
    assert groups["mixed"].has_signal
    assert not groups["flat"].has_signal


def test_a_rewrite_replaces_the_whole_file_or_nothing(tmp_path: Path) -> None:
    out = tmp_path / "t.jsonl"
    with TrajectoryWriter(out) as writer:
        writer.write(trajectory("a", 0))
    with out.open("a") as handle:
        handle.write('{"row_id": "a", "gro')  # torn tail
    rewrite_trajectories(out, [trajectory("a", 0, 0.5), trajectory("a", 1, 0.0)])
    read = read_trajectories(out)
    assert not read.partial_tail
    assert [(t.key, t.reward) for t in read.trajectories] == [(("a", 0), 0.5), (("a", 1), 0.0)]

    def broken() -> Iterator[Trajectory]:
        yield trajectory("a", 0, 1.0)
        raise RuntimeError("killed mid-rewrite")

    before = out.read_bytes()
    with pytest.raises(RuntimeError):
        rewrite_trajectories(out, broken())
    assert out.read_bytes() == before  # the old file, whole
    assert list(tmp_path.iterdir()) == [out]  # and nothing half-written beside it


def test_turn_tokens_own_their_lists() -> None:
    """from_turn hands the served lists to validation, which copies them: changing the Turn's
    lists afterwards must not change the record."""
    from rollout.policy import Turn

    served = Turn({"role": "assistant"}, [1, 2], [3], [-0.5], "stop", "m", 0.1)
    tokens = TurnTokens.from_turn(served)
    served.prompt_ids.append(9)
    served.completion_ids.append(9)
    served.logprobs.append(-1.0)
    assert (tokens.prompt_ids, tokens.completion_ids, tokens.logprobs) == ([1, 2], [3], [-0.5])
