"""The train config's `reward` section made real: the group scorer, and the label check.

    reward:                      (absent: the environment's grader alone, as always)
      grader: 0.5                the grader's weight (reference answers)
      ruler: {judge: NAME@URL, weight: 0.5, rubric: "...", cache: judge.jsonl}

The weights are normalised into one blend, used for train rollouts and val alike. With a
judge, every group is scored by `rollout.ruler.RulerScorer` as it finishes; a group the judge
fails on is left out of the update and counted, never given a zero. Without a grader share
(a judge alone), rows need no reference answer and the grader is never asked about them; with
one, every row must carry its answer, which `check_labels` says before a model is loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from envs.data.rows import Row
from envs.graders.judge import JudgeConfig
from rollout.ruler import JudgeStats, RulerConfig, RulerScorer, parse_judge
from rollout.trajectory import TrajectoryGroup
from trainer.config import TrainConfig
from trainer.errors import ConfigError

CACHE_NAME = "judge-cache.jsonl"


def ruler_config(config: TrainConfig) -> RulerConfig | None:
    """The judge's settings for the rollout engine; None without `reward.ruler`."""
    ruler = config.reward.ruler
    if ruler is None:
        return None
    model, base_url = parse_judge(ruler.judge)
    judge = JudgeConfig(
        base_url=base_url,
        model=model,
        api_key_env=ruler.api_key_env,
        timeout_s=ruler.timeout_s,
        max_retries=ruler.max_retries,
        max_tokens=ruler.max_tokens,
    )
    return RulerConfig(
        judge=judge,
        weight=config.reward.ruler_weight,
        on_error="fail",
        cache_path=ruler.cache or config.output_dir / CACHE_NAME,
        rubric=ruler.rubric,
    )


def make_scorer(config: TrainConfig, rank: int | None = None) -> RulerScorer | None:
    """The group scorer; under data parallelism (`rank` given) each rank keeps its own cache
    file, since ranks judge disjoint groups and appending to one file would interleave lines."""
    settings = ruler_config(config)
    if settings is None:
        return None
    if rank is not None and settings.cache_path is not None:
        cache = Path(settings.cache_path)
        settings = settings.model_copy(
            update={"cache_path": cache.with_suffix(f".rank{rank}{cache.suffix}")}
        )
    return RulerScorer(settings)


def check_labels(config: TrainConfig, rows: Sequence[Row], source: Path | str | None) -> None:
    """Refuse, in one line, rows without a reference answer when the grader has a share."""
    missing = sum(1 for row in rows if row.reference_answer is None)
    if not missing or not config.reward.needs_references:
        return
    where = f" of {source}" if source is not None else ""
    raise ConfigError(
        f"reward.grader: {missing} of {len(rows)} rows{where} have no reference_answer, which "
        "the grader needs; add the answers, or score with a judge alone "
        "(reward: {grader: 0, ruler: {judge: NAME@URL}})"
    )


def judge_metrics(stats: JudgeStats) -> dict[str, Any]:
    """The step's judge figures, as metrics.jsonl and the live table name them."""
    return {
        "judge_calls": stats.calls,
        "judge_prompt_tokens": stats.prompt_tokens,
        "judge_completion_tokens": stats.completion_tokens,
        "judge_cache_hits": stats.cache_hits,
    }


def judge_outcome(groups: Sequence[TrajectoryGroup]) -> tuple[int, int]:
    """(groups the judge scored, groups it failed on) among `groups`."""
    failed = sum(1 for g in groups if g.judge_failed)
    judged = sum(1 for g in groups if any("ruler" in t.scores for t in g.trajectories))
    return judged, failed
