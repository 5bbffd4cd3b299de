"""Checks every proposed task must pass; each drop is counted under one reason.

    schema                      not a task object with the fields and types asked for
    unknown_observation         cites an observation id that was never made
    cites_errors                cites only calls that failed
    resource_only               cites only resource reads, which the policy cannot make
                                (an episode offers tools, not resources)
    names_tool                  the prompt names a tool: tasks say what to find, not how
    answer_not_in_observations  the reference answer is not in the observations it cites
    duplicate                   the same prompt (case and spacing aside) as a kept task
    near_duplicate              an embedding cosine over the threshold (envs.taskgen.dedup)

The answer check is a normalised text match (NFKC, case folded, punctuation and spacing
collapsed, whole tokens, figures kept whole): "1,815" matches "1815." but "815" does not match
"1,815.4". It is the one guard against answers the model made up, so it is deliberately
literal.

Tool names: a name with a separator, capital or digit (`read_text_file`, `searchNodes`) is
caught anywhere as a word; a plain word (`search`, `echo`) only where it reads as a tool
(`search(`, `` `search` ``, "the search tool"), so that "search the notes for..." stays legal.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError

from envs.taskgen.records import CandidateTask, KeptTask, Observation

REASONS = (
    "schema",
    "unknown_observation",
    "cites_errors",
    "resource_only",
    "names_tool",
    "answer_not_in_observations",
    "duplicate",
    "near_duplicate",
)


def normalise(text: str) -> str:
    """Text for matching: NFKC, case folded, tokens of letters and digits joined by one space;
    a figure stays one token ("1,815.4" -> "1815.4"), so a piece of it matches nothing."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    folded = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", folded)  # thousands separators
    return " ".join(re.findall(r"\d+(?:\.\d+)*|[^\W_]+", folded))


def answer_in(answer: str, texts: Iterable[str]) -> bool:
    """Whether `answer` occurs, as whole tokens after normalising, in any of `texts`."""
    needle = normalise(answer)
    if not needle:
        return False
    return any(f" {needle} " in f" {normalise(text)} " for text in texts)


def _tool_patterns(names: Iterable[str]) -> list[re.Pattern[str]]:
    patterns = []
    for name in names:
        spelled = re.escape(name)
        plain = bool(re.fullmatch(r"[a-z]+", name))
        if plain:  # an ordinary word: only where it is used as a tool's name
            body = (
                rf"`{spelled}`|\b{spelled}\s*\(|\b{spelled}\s+(?:tool|function)\b"
                rf"|\b(?:tool|function)\s+[`'\"]?{spelled}\b"
            )
        else:  # read_text_file also as read-text-file
            loose = re.escape(name).replace("_", "[_-]").replace(r"\-", "[_-]")
            body = rf"(?<![\w-]){loose}(?![\w-])"
        patterns.append(re.compile(body, re.IGNORECASE))
    return patterns


class TaskChecker:
    """Checks proposed tasks against the observations; counts what it drops, by reason."""

    def __init__(self, observations: list[Observation], tool_names: Iterable[str]) -> None:
        self.by_id = {o.id: o for o in observations}
        self.tool_names = sorted(set(tool_names))
        self._patterns = _tool_patterns(self.tool_names)
        self._prompts: set[str] = set()
        self.dropped: Counter[str] = Counter()
        self.kept = 0

    def check(self, raw: Any) -> KeptTask | None:
        """The task when it passes; None (and the reason counted) when it does not."""
        task, reason = self._verdict(raw)
        if task is None:
            self.dropped[reason] += 1
            return None
        self.kept += 1
        return task

    def _verdict(self, raw: Any) -> tuple[KeptTask | None, str]:
        try:
            task = CandidateTask.model_validate(raw)
        except ValidationError:
            return None, "schema"
        if any(i not in self.by_id for i in task.observation_ids):
            return None, "unknown_observation"
        cited = [self.by_id[i] for i in dict.fromkeys(task.observation_ids)]
        usable = [o for o in cited if not o.is_error]
        if not usable:
            return None, "cites_errors"
        tools = sorted({o.tool for o in usable if not o.is_resource})
        if not tools:
            return None, "resource_only"
        if any(p.search(task.prompt) for p in self._patterns):
            return None, "names_tool"
        answer = task.reference_answer
        if answer is not None and not answer_in(answer, (o.text for o in usable)):
            return None, "answer_not_in_observations"
        key = normalise(task.prompt)
        if key in self._prompts:
            return None, "duplicate"
        self._prompts.add(key)
        return KeptTask(task=task, source_tools=tools), ""
