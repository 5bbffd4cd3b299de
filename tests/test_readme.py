"""What README.md shows a user to type is real: its story "Train an agent on your MCP server"
parses with the `toolgym` parser, command by command, and its two files are accepted by the
code that reads them (the environment file by `register_yaml`, the train config by
`load_config`), naming each other consistently. The story itself runs in test_mcp_story.py.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import gymnasium as gym
import pytest

import envs
from rollout.cli import policy_spec
from rollout.openai_policy import normalise_base_url
from rollout.policy_spec import ServerSpec, parse_policy
from trainer.cli import build_parser
from trainer.config import load_config

README = Path(__file__).parents[1] / "README.md"
STORY = "Train an agent on your MCP server"
MAX_COMMANDS = 5


def section(title: str) -> str:
    """The text of the `## title` section, up to the next section of its level."""
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", text, re.DOTALL | re.MULTILINE)
    assert match, f"README.md has no section '## {title}'"
    return match.group(1)


def fenced(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.DOTALL | re.MULTILINE)


def commands(block: str) -> list[list[str]]:
    """Each command of a shell block as its words: continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", block)
    return [words for line in joined.splitlines() if (words := shlex.split(line, comments=True))]


def parse(argv: list[str]) -> argparse.Namespace:
    """`toolgym ARGV` through the real parser; a usage error fails with argparse's line."""
    assert argv[0] == "toolgym", argv
    try:
        return build_parser().parse_args(argv[1:])
    except SystemExit as exc:
        pytest.fail(f"README command does not parse (exit {exc.code}): {shlex.join(argv)}")


def served(text: str) -> ServerSpec:
    spec = parse_policy(text)
    assert isinstance(spec, ServerSpec), text
    return spec


def story_files(tmp_path: Path) -> dict[str, Path]:
    """The story's YAML blocks, written under the names their first comment gives them."""
    files = {}
    for block in fenced(section(STORY), "yaml"):
        name = re.match(r"# ([\w.-]+\.yaml):", block)
        assert name, f"a YAML block without its file name on the first line: {block[:60]!r}"
        files[name.group(1)] = tmp_path / name.group(1)
        files[name.group(1)].write_text(block, encoding="utf-8")
    return files


@pytest.mark.usefixtures("forget_new_envs")
def test_the_mcp_story_is_five_real_commands(tmp_path: Path) -> None:
    files = story_files(tmp_path)
    (block,) = fenced(section(STORY), "bash")
    typed = commands(block)
    assert len(typed) <= MAX_COMMANDS

    export, *toolgym = typed
    (assignment,) = export[1:]
    variable, _, env_file = assignment.partition("=")
    assert (export[0], variable) == ("export", "TOOLGYM_ENVS")
    env_id = envs.register_yaml(files[env_file])
    parsed = {argv[1]: parse(argv) for argv in toolgym}
    assert list(parsed) == ["tasks", "prior-check", "train", "eval"]

    generate, check, train, evaluate = parsed.values()
    assert generate.action == "generate"
    assert generate.env == check.env == evaluate.env == env_id
    config = load_config(files[train.config.name])
    assert config.environment.id == env_id
    assert config.reward.grader_weight == 0 and config.reward.ruler is not None
    # The generated files are where the other commands and files look for them.
    out = tmp_path / generate.out
    assert config.train_dataset == out / "train.jsonl"
    assert config.val_dataset == out / "val.jsonl" == tmp_path / check.dataset
    assert evaluate.data_dir == generate.out and evaluate.split == "val"
    registered = gym.registry[env_id].kwargs["dataset"]
    assert Path(registered) == out / "train.jsonl"
    # Every command reaches the one policy server the config trains through, and eval's tuned
    # side is the adapter the run ends with.
    base, tuned, checked = served(evaluate.base), served(evaluate.tuned), policy_spec(check)
    assert isinstance(checked, ServerSpec)
    urls = {normalise_base_url(url) for spec in (base, tuned, checked) for url in spec.urls}
    assert urls == {normalise_base_url(url) for url in config.policy.base_urls}
    assert base.name == checked.name == config.base_model
    assert tuned.name == f"v{config.steps:04d}"
