"""The rules of one episode, written once and used by both the sync and the async step.

An episode is a question. Each turn takes one assistant action: tool calls run through the
ToolClient and their results are the next observation; an answer without tool calls ends the
episode and is graded. A row without a reference answer is not graded: the grader is not asked,
the record has no grade, and the step's 0.0 is a placeholder (a judge scores such episodes).
Budgets (tool calls, turns, tokens) truncate it. A malformed action is an error observation
that costs one tool call; a failing tool server ends the episode with an infrastructure error
instead of a reward.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, Field, ValidationError

from envs.actions import ParsedAction, ToolCall, final_answer, parse_action
from envs.client import ToolClient, ToolOutput
from envs.errors import EnvConfigError, ToolInfraError
from envs.graders import GradeResult
from envs.record import CallRecord, EpisodeRecord

if TYPE_CHECKING:
    from envs.data.rows import Row

DEFAULT_SYSTEM_PROMPT = (
    "You answer questions about company filings. Use the tools to find the document that states "
    "the figures you need: search(query) to find documents, list(prefix) to browse paths, "
    "read(path, offset) to read a document. Check the company name exactly (some names look "
    "alike) and the period. When you know the answer, reply without calling a tool, stating the "
    "final figure with its unit, e.g. 'Answer: $1,234.5 million'."
)

UNGRADED_NOTE = "not graded: the row has no reference_answer (a judge may score it)"


class Limits(BaseModel, frozen=True):
    max_tool_calls: int = Field(default=12, ge=1)
    max_turns: int = Field(default=16, ge=1)
    max_tokens: int = Field(default=32_000, ge=1)  # conversation tokens, by the env's counter


def parse_limits(value: Limits | Mapping[str, Any] | None) -> Limits | None:
    """Limits from config (a YAML file's `limits:`, gymnasium kwargs). A misspelt key is an
    error, not a silently ignored budget; EnvConfigError names the key and what is accepted."""
    if value is None or isinstance(value, Limits):
        return value
    known = ", ".join(Limits.model_fields)
    if not isinstance(value, Mapping):
        raise EnvConfigError(f"limits: expected a mapping of {known}, not {value!r}")
    unknown = [repr(key) for key in value if key not in Limits.model_fields]
    if unknown:
        raise EnvConfigError(f"limits: unknown key {', '.join(unknown)} (known: {known})")
    try:
        return Limits.model_validate(value, strict=True)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}, not {e['input']!r}"
            for e in exc.errors(include_url=False)
        )
        raise EnvConfigError(f"limits: {problems}") from None


class EpisodeGrader(Protocol):
    async def grade(self, row: Row, answer: str, tools_used: set[str]) -> GradeResult: ...


def approximate_tokens(text: str) -> int:
    """About four characters a token: a budget guard, not an exact count."""
    return max(1, len(text) // 4)


def env_error(text: str) -> ToolOutput:
    """A failure the environment itself produces (broken action, budget): flagged as one
    explicitly, so that no count has to recognise it by its wording."""
    return ToolOutput(text, is_error=True)


@dataclass
class EpisodeState:
    row: Row
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] = field(default_factory=list)  # the specs offered
    turns: int = 0
    tokens: int = 0
    calls: list[CallRecord] = field(default_factory=list)
    documents_read: list[str] = field(default_factory=list)
    done: bool = False
    answer: str | None = None
    grade: GradeResult | None = None
    infra_error: str | None = None

    @property
    def tools_used(self) -> set[str]:
        return {c.name for c in self.calls if c.ok}


@dataclass(frozen=True)
class StepOutcome:
    observation: list[dict[str, Any]]
    reward: float
    terminated: bool
    truncated: bool
    info: dict[str, Any]


class Episode:
    """One question, played turn by turn. All I/O is async; the rules are here only."""

    def __init__(
        self,
        row: Row,
        prompt: str,
        client: ToolClient,
        grader: EpisodeGrader,
        limits: Limits,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        count_tokens: Callable[[str], int] = approximate_tokens,
        tools: list[dict[str, Any]] | None = None,
    ) -> None:
        self.client, self.grader, self.limits = client, grader, limits
        self.count_tokens = count_tokens
        opening = [
            {"role": "system", "content": system_prompt},
            {"role": "user", "content": prompt},
        ]
        self.state = EpisodeState(row=row, messages=list(opening), tools=list(tools or []))
        self.state.tokens = sum(count_tokens(m["content"]) for m in opening)

    def opening(self) -> list[dict[str, Any]]:
        return [dict(m) for m in self.state.messages]

    async def step(self, action: Any) -> StepOutcome:
        state = self.state
        if state.done:
            return self._outcome([], 0.0, False, False, note="episode already ended; call reset()")
        state.turns += 1
        parsed = parse_action(action, state.turns)
        state.messages.append(parsed.as_message())
        state.tokens += self.count_tokens(
            parsed.content + "".join(c.raw_arguments for c in parsed.tool_calls)
        )
        if parsed.error or (not parsed.tool_calls and not final_answer(parsed.content)):
            return self._malformed(parsed)
        if not parsed.tool_calls:
            return await self._finish(final_answer(parsed.content))
        try:
            observation, over_budget = await self._run_calls(parsed.tool_calls)
        except ToolInfraError as exc:
            state.infra_error, state.done = str(exc), True
            return self._outcome([], 0.0, False, True)
        return self._after_turn(observation, over_budget)

    def _malformed(self, parsed: ParsedAction) -> StepOutcome:
        problem = parsed.error or "the message is empty"
        error = env_error(f"Error: {problem}. Call a tool, or reply with your final answer.")
        self.state.calls.append(
            CallRecord(f"invalid_{self.state.turns}", "", None, error.text, not error.is_error, 0.0)
        )
        message = {"role": "user", "content": error.text}
        self.state.messages.append(message)
        return self._after_turn([dict(message)], over_budget=False)

    async def _run_calls(self, calls: list[ToolCall]) -> tuple[list[dict[str, Any]], bool]:
        observation: list[dict[str, Any]] = []
        over_budget = False
        for call in calls:
            if len(self.state.calls) >= self.limits.max_tool_calls:
                over_budget = True
                output = env_error("Error: tool-call budget exhausted.")
            else:
                output, latency = await self._run_one(call)
                ok = not output.is_error
                self.state.calls.append(
                    CallRecord(call.id, call.name, call.arguments, output.text, ok, latency)
                )
            message = {
                "role": "tool",
                "tool_call_id": call.id,
                "name": call.name,
                "content": output.text,  # the tool's own text, whatever its flag
            }
            self.state.messages.append(message)
            self.state.tokens += self.count_tokens(output.text)
            observation.append(dict(message))
        return observation, over_budget

    async def _run_one(self, call: ToolCall) -> tuple[ToolOutput, float]:
        if call.error or call.arguments is None:
            return env_error(f"Error: {call.error or 'unreadable arguments'}."), 0.0
        started = time.perf_counter()
        output = await self.client.call(call.name, call.arguments, call.id)
        ok = not output.is_error
        if ok and call.name == "read" and isinstance(call.arguments.get("path"), str):
            path = call.arguments["path"]
            if path not in self.state.documents_read:
                self.state.documents_read.append(path)
        # rounded to 0.1 ms: finer is noise, and sums of recorded latencies stay exact
        return output, round(time.perf_counter() - started, 4)

    def _after_turn(self, observation: list[dict[str, Any]], over_budget: bool) -> StepOutcome:
        limits, state = self.limits, self.state
        truncated = (
            over_budget
            or len(state.calls) > limits.max_tool_calls
            or state.turns >= limits.max_turns
            or state.tokens >= limits.max_tokens
        )
        state.done = truncated
        return self._outcome(observation, 0.0, False, truncated)

    async def _finish(self, answer: str) -> StepOutcome:
        state = self.state
        state.done, state.answer = True, answer
        if state.row.reference_answer is None:
            # An unlabelled row: the grader is not asked (it has nothing to grade against).
            # The record carries no grade; a judge scoring the group gives the reward.
            return self._outcome([], 0.0, True, False, note=UNGRADED_NOTE)
        state.grade = await self.grader.grade(state.row, answer, state.tools_used)
        return self._outcome([], state.grade.score, True, False)

    def _outcome(
        self,
        observation: list[dict[str, Any]],
        reward: float,
        terminated: bool,
        truncated: bool,
        note: str | None = None,
    ) -> StepOutcome:
        info = self.record.as_info()
        if note:  # about this step, not the episode: not part of the record
            info["note"] = note
        return StepOutcome(observation, reward, terminated, truncated, info)

    @property
    def record(self) -> EpisodeRecord:
        """A frozen copy of the episode so far: later steps do not change it."""
        state = self.state
        return EpisodeRecord(
            row_id=state.row.id,
            tools=tuple(state.tools),
            calls=tuple(state.calls),
            turns=state.turns,
            tokens=state.tokens,
            documents_read=tuple(state.documents_read),
            answer=state.answer,
            grade=state.grade,
            infra_error=state.infra_error,
        )
