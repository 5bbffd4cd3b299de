"""The hermes tool-call markup: one module renders and parses it, and everything else uses it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import envs.actions
import rollout.fake_vllm_wire
from envs import markup
from envs.actions import parse_action
from envs.markup import (
    MARKUP_TOKENS,
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    parse_tool_calls,
    render_tool_call,
    render_tool_calls,
    render_tool_response,
    render_tool_responses,
)
from rollout.fake_chat import assistant_text, render_prompt
from rollout.fake_vllm import parse_hermes

NESTED = {"query": "Umsatz € 2023 — 営業利益", "filters": {"years": [2022, 2023], "exact": True}}
CALLS: list[tuple[str, Any]] = [
    ("search", NESTED),
    ("read", {"path": "filings/apex.html", "offset": None}),
    ("calculator", {}),
]


def _calls(text: str) -> list[tuple[str, dict[str, Any] | None, str | None]]:
    return [(c.name, c.arguments, c.error) for c in parse_tool_calls(text).calls]


# ---- rendering ----


def test_a_call_renders_as_qwen_writes_it() -> None:
    payload = json.dumps({"name": "search", "arguments": NESTED}, ensure_ascii=False)
    assert render_tool_call("search", NESTED) == f"{TOOL_CALL_OPEN}\n{payload}\n{TOOL_CALL_CLOSE}"
    assert render_tool_call("search", {"query": "debt"}) == (
        '<tool_call>\n{"name": "search", "arguments": {"query": "debt"}}\n</tool_call>'
    )
    # a string is the arguments' JSON text, written verbatim (what the model produced)
    assert render_tool_call("read", '{"path":"a"}') == (
        '<tool_call>\n{"name": "read", "arguments": {"path":"a"}}\n</tool_call>'
    )
    assert render_tool_response("12") == "<tool_response>\n12\n</tool_response>"
    assert render_tool_responses(["a", "b"]) == (
        "<tool_response>\na\n</tool_response>\n<tool_response>\nb\n</tool_response>"
    )
    assert MARKUP_TOKENS == ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")


def test_several_calls_follow_the_content_one_per_line() -> None:
    one, two = (render_tool_call(n, a) for n, a in CALLS[:2])
    assert render_tool_calls(CALLS[:2], "Let me look.") == f"Let me look.\n{one}\n{two}"
    assert render_tool_calls(CALLS[:2]) == f"{one}\n{two}"
    assert render_tool_calls([], "Answer: 12") == "Answer: 12"


# ---- parsing ----


def test_render_then_parse_round_trips() -> None:
    text = render_tool_calls(CALLS, "Je regarde… 中文")
    parsed = parse_tool_calls(text)
    assert parsed.content == parsed.content_before == "Je regarde… 中文"
    assert [(c.name, c.arguments, c.error) for c in parsed.calls] == [
        (name, arguments, None) for name, arguments in CALLS
    ]
    assert [c.raw_arguments for c in parsed.calls] == [
        json.dumps(arguments, ensure_ascii=False) for _, arguments in CALLS
    ]
    odd = 'we"ird\\name'  # a name that needs escaping still round trips
    assert _calls(render_tool_call(odd, {"x": "\n"})) == [(odd, {"x": "\n"}, None)]


@settings(max_examples=60, deadline=None)
@given(
    name=st.text(min_size=1, max_size=12),
    arguments=st.dictionaries(
        st.text(max_size=8),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=12),
            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner),
            max_leaves=6,
        ),
        max_size=4,
    ),
)
def test_any_call_round_trips(name: str, arguments: dict[str, Any]) -> None:
    # (a closing tag inside a string ends the call early: hermes markup cannot escape it)
    assume(TOOL_CALL_CLOSE not in json.dumps([name, arguments], ensure_ascii=False))
    assert _calls(render_tool_call(name, arguments)) == [(name, arguments, None)]


def test_compact_markup_and_text_around_calls() -> None:
    text = 'pre <tool_call>{"name": "a", "arguments": {"q": 1}}</tool_call> mid ' + (
        render_tool_call("b", {})
    )
    parsed = parse_tool_calls(text)
    assert parsed.content == "pre  mid" and parsed.content_before == "pre"
    assert _calls(text) == [("a", {"q": 1}, None), ("b", {}, None)]
    plain = parse_tool_calls("Answer: $12.5 million")
    assert plain.calls == [] and plain.content == plain.content_before == "Answer: $12.5 million"


def test_malformed_calls_get_their_own_errors() -> None:
    good = render_tool_call("search", {"q": "x"})
    cases = {
        "<tool_call>\n{broken\n</tool_call>": "tool call markup is not valid JSON",
        '<tool_call>{"arguments": {}}</tool_call>': "the tool call has no function name",
        '<tool_call>{"name": 5}</tool_call>': "the tool call has no function name",
        '<tool_call>{"name": "a", "arguments": [1]}</tool_call>': "arguments must be",
        '<tool_call>{"name": "a", "arguments": "{bad"}</tool_call>': "arguments are not valid JSON",
        "<tool_call>[1, 2]</tool_call>": "malformed tool call",
        "<tool_call></tool_call>": "tool call markup is not valid JSON",
        '<tool_call>\n{"name": "a", "arguments": {"q": ': "tool call markup is not valid JSON",
    }
    for bad, error in cases.items():
        [call] = parse_tool_calls(bad).calls
        assert call.error is not None and call.error.startswith(error), bad
        assert call.arguments is None
        # next to a good call, only the bad one carries the error
        first, second = parse_tool_calls(f"{good}\n{bad}").calls
        assert first.error is None and first.arguments == {"q": "x"}
        assert second.error is not None and second.error.startswith(error)


def test_an_unclosed_last_call_is_still_read() -> None:
    text = 'Looking.\n<tool_call>\n{"name": "a", "arguments": {"q": 1}}\n'
    parsed = parse_tool_calls(text)
    assert parsed.content == "Looking." and _calls(text) == [("a", {"q": 1}, None)]


PIECES = [TOOL_CALL_OPEN, TOOL_CALL_CLOSE, "{", "}", '"', '"name"', "a", ":", ",", "\n", "[1"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=30).map("".join))
def test_parsing_never_raises(text: str) -> None:
    parsed = parse_tool_calls(text)
    assert all(c.error is None or c.arguments is None for c in parsed.calls)


def test_every_prefix_of_a_generation_parses() -> None:
    text = render_tool_calls(CALLS, "ok")
    for end in range(len(text) + 1):
        parse_tool_calls(text[:end])


# ---- one parser for the environments and the fake vLLM server ----


def test_the_fake_server_and_the_environments_share_one_parser() -> None:
    assert envs.actions.parse_tool_calls is markup.parse_tool_calls
    assert rollout.fake_vllm_wire.parse_tool_calls is markup.parse_tool_calls


@pytest.mark.parametrize(
    "text",
    [
        render_tool_calls(CALLS, "Let me look."),
        '<tool_call>{"name": "a", "arguments": "{\\"q\\": 1}"}</tool_call>',
        '<tool_call>{"name": "a", "arguments": null}</tool_call>',
        render_tool_call("a", {}) + '\n<tool_call>{"name": 5}</tool_call>',
        '<tool_call>{"name": "a", "arguments": [1]}</tool_call>',
        "<tool_call>\n{broken\n</tool_call>",
        "no markup at all",
    ],
)
def test_the_fake_server_and_the_environments_agree(text: str) -> None:
    action = parse_action(text)
    content, calls = parse_hermes(text)
    if action.tool_calls and all(c.error is None for c in action.tool_calls):
        assert [c["function"] for c in calls] == [
            {"name": c.name, "arguments": c.raw_arguments} for c in action.tool_calls
        ]
        assert content == (text[: text.index(TOOL_CALL_OPEN)].strip() or None)
    else:  # vLLM leaves unparsable markup in the content; the episode reports each bad call
        assert (content, calls) == (text, [])


# ---- the chat templates render calls exactly as render_tool_call does ----


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from rollout.tiny_policy import train_tokenizer

    return train_tokenizer(["a tool call", render_tool_calls(CALLS, "text")] * 4, 300)


def _assistant_turns(text: str) -> list[str]:
    return [part.split("<|im_end|>")[0] for part in text.split("<|im_start|>assistant\n")[1:]]


@pytest.mark.parametrize(
    ("content", "calls"),
    [
        (None, [("search", NESTED)]),
        ("Let me look.", CALLS),
        ("", [("read", '{"path": "filings/apex.html"}'), ('we"ird', {"x": [1, {"y": None}]})]),
    ],
)
def test_the_tiny_policy_template_renders_calls_as_render_tool_call(
    tokenizer: Any, content: str | None, calls: list[tuple[str, Any]]
) -> None:
    message = {
        "role": "assistant",
        "content": content,
        "tool_calls": [
            {"id": f"c{i}", "type": "function", "function": {"name": n, "arguments": a}}
            for i, (n, a) in enumerate(calls)
        ],
    }
    results = [{"role": "tool", "tool_call_id": f"c{i}", "content": f"r{i}"} for i in range(2)]
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "q"}, message, *results], tokenize=False
    )
    assert _assistant_turns(text) == [render_tool_calls(calls, content or "")]
    assert f"<|im_start|>user\n{render_tool_responses(['r0', 'r1'])}<|im_end|>\n" in text
    if len(calls) == 1:
        assert _assistant_turns(text) == [render_tool_call(*calls[0])]


def test_the_fake_servers_template_renders_calls_as_render_tool_call() -> None:
    tool_calls = [{"function": {"name": n, "arguments": json.dumps(a)}} for n, a in CALLS]
    assert assistant_text("Let me look.", tool_calls) == render_tool_calls(CALLS, "Let me look.")
    assistant = {"role": "assistant", "content": None, "tool_calls": tool_calls[:1]}
    prompt = render_prompt([{"role": "user", "content": "q"}, assistant], None)
    assert _assistant_turns(prompt)[0] == render_tool_call(*CALLS[0])


def test_only_the_markup_module_spells_the_markup() -> None:
    root = Path(__file__).resolve().parents[2]
    spelled = [
        str(path.relative_to(root))
        for package in ("envs", "rollout", "trainer", "toolservers", "benchmarks")
        for path in sorted((root / package).rglob("*.py"))
        if any(tag[1:] in path.read_text(encoding="utf-8") for tag in MARKUP_TOKENS[::2])
    ]
    assert spelled == ["envs/markup.py"]
