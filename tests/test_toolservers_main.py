"""`python -m toolservers`: the tool servers' own command. The verbs and flags of `toolgym
corpus|index|serve`, and not one module of envs, rollout or trainer loaded."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from toolservers import cli as toolservers_cli
from trainer import cli as toolgym_cli

OTHER_PACKAGES = ("envs", "rollout", "trainer")


def other_packages(modules: list[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in OTHER_PACKAGES)


def python(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **(env or {})},
    )


def test_serve_help_imports_nothing_from_the_other_packages() -> None:
    result = python("-X", "importtime", "-m", "toolservers", "serve", "--help")
    assert result.returncode == 0, result.stderr
    assert "--insecure-no-auth" in result.stdout
    # `import time: self | cumulative | <indent>module`, one line per module imported
    imported = [
        line.rsplit("|", 1)[1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    ]
    assert "toolservers.cli" in imported  # the parse found the modules
    assert other_packages(imported) == []


@pytest.mark.slow
def test_no_toolservers_module_imports_the_other_packages() -> None:
    """Every module the verbs may import lazily (serve, index, synth, ...), loaded at once."""
    code = (
        "import pkgutil, sys, importlib, toolservers\n"
        "for info in pkgutil.walk_packages(toolservers.__path__, 'toolservers.'):\n"
        "    if info.name != 'toolservers.__main__':\n"
        "        importlib.import_module(info.name)\n"
        "print('\\n'.join(sys.modules))\n"
    )
    result = python("-c", code)
    assert result.returncode == 0, result.stderr
    modules = result.stdout.splitlines()
    assert "toolservers.serve" in modules and "toolservers.retrieval_training" in modules
    assert other_packages(modules) == []


def verb_options(parser: argparse.ArgumentParser, *path: str) -> dict[str, object]:
    """{option strings: (default, choices, required)} of the verb at `path` ("index", "build")."""
    for name in path:
        (choices,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        parser = choices.choices[name]
    return {
        ",".join(a.option_strings): (a.default, a.choices, a.required)
        for a in parser._actions
        if a.option_strings and not isinstance(a, argparse._HelpAction)
    }


@pytest.mark.parametrize(
    "verb",
    [
        ("serve",),
        ("corpus", "synth"),
        ("index", "build"),
        ("index", "local-model"),
        ("index", "train-model"),
        ("demo", "tools"),
    ],
)
def test_the_flags_are_those_of_toolgym(verb: tuple[str, ...]) -> None:
    alone = verb_options(toolservers_cli.build_parser(), *verb)
    composed = verb_options(toolgym_cli.build_parser(), *verb)
    assert alone and alone == composed


def test_a_usage_error_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        toolservers_cli.main(["serve", "--transport", "http"])
    assert exited.value.code == 2
    assert capsys.readouterr().err == (
        "python -m toolservers serve: error: the following arguments are required: --corpus "
        "(see `python -m toolservers serve --help`)\n"
    )


def test_serve_without_a_token_is_refused_in_one_line(tmp_path: Path) -> None:
    result = python("-m", "toolservers", "serve", "--corpus", str(tmp_path),
                    env={"TOOL_BEARER": ""})  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith("python -m toolservers: error: no token configured: set TOOL")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
