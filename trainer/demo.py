"""`make demo` (`toolgym demo run`): the whole loop on one CPU machine, offline.

1. corpus and questions   2. embedding model + search index (recall@5 reported)
3. HTTP + MCP tool servers with a fresh token   4. a small policy, warm-started by SFT on
demonstration episodes, then the prior check   5. GRPO with LoRA   6. base vs tuned on val
7. where everything is. Each step prints the `toolgym` command it runs, so any step can be
repeated by hand; the servers it started are stopped at the end, also on errors.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trainer.demo_data import DemoData, prepare_data, prepare_search
from trainer.demo_policy import PolicyShape, build_policy, record_demos
from trainer.demo_servers import ToolServers
from trainer.errors import TrainerError
from trainer.warmstart import WarmStartSettings, warm_start

ENV_ID = "demo/FilingsLookup-v0"
SYSTEM_PROMPT = (
    "You answer questions about company filings. Search for the figure, then reply with it, "
    "e.g. 'Answer: $1,234.5 million'."
)
CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo-cpu.yaml"


@dataclass
class DemoSettings:
    workdir: Path = Path(".demo")
    http_port: int = 0  # 0: a free port
    mcp_port: int = 0
    max_tool_calls: int = 2
    shape: PolicyShape = field(default_factory=PolicyShape)
    warm: WarmStartSettings = field(default_factory=WarmStartSettings)
    lookup_rows: int = 4000  # lookups built; the demo keeps the quarterly ones (~40%)
    prior_rows: int = 16
    prior_attempts: int = 8
    require_signal: bool = True  # stop when the prior check finds nothing to learn
    reuse_policy: bool = False  # keep a warm-started policy from an earlier run (GRPO only)
    grpo_overrides: list[str] = field(default_factory=list)
    eval_rows: int | None = None  # None: every val row
    eval_attempts: int = 4
    seed: int = 0


@dataclass
class DemoResult:
    figures: dict[str, Any] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)


class Steps:
    """Numbered progress lines with the time each step took."""

    def __init__(self, total: int) -> None:
        self.total, self.number = total, 0
        self.started = self.step_started = time.monotonic()

    def begin(self, title: str) -> None:
        self.finish()
        self.number += 1
        self.step_started = time.monotonic()
        print(f"\n=== [{self.number}/{self.total}] {title}", flush=True)

    def finish(self) -> None:
        if self.number:
            took = time.monotonic() - self.step_started
            print(f"--- step {self.number} took {took:.0f}s", flush=True)

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def toolgym(*argv: str | Path | float, check: bool = True) -> int:
    """Run one `toolgym` verb in this process, showing the command first; a failure (non-zero
    exit) stops the demo unless `check` is off."""
    from trainer.cli import main

    args = [str(a) for a in argv]
    print("$ toolgym " + " ".join(args), flush=True)
    code = main(args)
    if check and code != 0:
        raise TrainerError(f"demo stopped: `toolgym {args[0]}` failed (exit {code}); see above")
    return code


def write_env_file(path: Path, dataset: Path, tools_url: str, settings: DemoSettings) -> None:
    """A no-code environment (see README "Adding an environment"), registered by file."""
    spec = {
        "id": ENV_ID,
        "dataset": str(dataset.resolve()),
        "tools_url": tools_url,
        "transport": "http",
        "token_env": "TOOL_BEARER",
        "grader": {"type": "auto"},
        "limits": {"max_tool_calls": settings.max_tool_calls, "max_turns": 3},
        "system_prompt": SYSTEM_PROMPT,
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))


def run_demo(settings: DemoSettings) -> DemoResult:
    work = settings.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    steps = Steps(7)
    result = DemoResult()
    steps.begin("corpus and questions")
    data = prepare_data(work, settings.seed, settings.lookup_rows, toolgym)
    steps.begin("embedding model trained on the corpus, search index")
    result.figures["recall_at_5"] = round(prepare_search(work, data, toolgym), 3)
    steps.begin("tool servers (HTTP + MCP) with a fresh bearer token")
    token = secrets.token_urlsafe(24)
    os.environ["TOOL_BEARER"] = token  # the verbs below read it, as a user's shell would
    with ToolServers(
        data.corpus,
        token,
        work / "logs",
        http_port=settings.http_port,
        mcp_port=settings.mcp_port,
    ) as servers:
        print(f"HTTP {servers.http_url}   MCP {servers.mcp_url}   (token in TOOL_BEARER)")
        env_file = work / "env.yaml"
        write_env_file(env_file, data.train, servers.http_url, settings)
        _register(env_file)
        _run_with_servers(settings, steps, result, work, data, servers)
    steps.finish()
    result.figures["minutes"] = round(steps.elapsed() / 60, 1)
    (work / "demo-summary.json").write_text(json.dumps(result.figures, indent=2) + "\n")
    _print_summary(result, work)
    return result


def _register(env_file: Path) -> None:
    from envs.registry import YAML_PATH_ENV, register_yaml

    os.environ[YAML_PATH_ENV] = str(env_file)
    print(f"registered {register_yaml(env_file)} from {env_file}")


def _run_with_servers(
    settings: DemoSettings,
    steps: Steps,
    result: DemoResult,
    work: Path,
    data: DemoData,
    servers: ToolServers,
) -> None:
    steps.begin("small policy: build, warm-start on demonstrations (TRL SFT), prior check")
    policy = work / "policy"
    if settings.reuse_policy and (policy / "config.json").is_file():
        print(f"reusing the warm-started policy in {policy}")
    else:
        demos = asyncio.run(record_demos(ENV_ID, data.train, servers.mcp_url, work / "demos.jsonl"))
        print(f"{len(demos)} demonstration episodes played over MCP ({servers.mcp_url})")
        initial = build_policy(work / "policy-init", demos, settings.shape, settings.seed)
        warm_start(initial, demos, policy, settings.warm)
    prior = work / "prior-check.jsonl"
    toolgym(  # its exit code is its verdict; the gate below is the demo's own
        "prior-check", "--env", ENV_ID, "--policy", "local", "--model", policy,
        "--rows", settings.prior_rows, "--attempts", settings.prior_attempts,
        "--max-tokens", 80, "--concurrency", 64, "--out", prior, check=False,
    )  # fmt: skip
    result.figures["prior_check"] = _prior_figures(prior)
    # GRPO needs rows it sometimes solves; the verdict's stricter shares are advice, this is not
    if settings.require_signal and not result.figures["prior_check"].get("in_band"):
        raise TrainerError(
            "demo stopped: the prior check found no row in the signal band (solved sometimes, "
            "not always), so GRPO would have nothing to learn; warm-start longer (--sft-steps)"
        )
    steps.begin("GRPO with LoRA (rollout engine + trainer, adapter published each step)")
    run_dir = work / "grpo"
    for old in (run_dir, work / "eval"):  # a new policy: earlier results no longer apply
        shutil.rmtree(old, ignore_errors=True)
    toolgym(
        "train", "--config", CONFIG,
        "--set", f"base_model={policy}", "--set", f"environment.id={ENV_ID}",
        "--set", f"train_dataset={data.train}", "--set", f"val_dataset={data.val}",
        "--set", f"output_dir={run_dir}", "--set", f"seed={settings.seed}",
        *[x for item in settings.grpo_overrides for x in ("--set", item)],
    )  # fmt: skip
    adapter = sorted((run_dir / "adapters").glob("v*"))[-1]
    steps.begin("evaluation: warm-started (base) vs GRPO-tuned on the val rows")
    eval_dir = work / "eval"
    some_rows: list[str | float] = ["--n", settings.eval_rows] if settings.eval_rows else []
    toolgym(
        "eval", "--env", ENV_ID, "--dataset", data.val, "--base", policy,
        "--tuned", f"{policy}+{adapter}", "--attempts", settings.eval_attempts,
        "--temperature", 1.0, "--max-tokens", 80, "--out", eval_dir, *some_rows,
    )  # fmt: skip
    steps.begin("results")
    result.figures |= _eval_figures(eval_dir)
    result.paths = {
        "report": str(eval_dir / "report.html"),
        "plots": str(eval_dir),
        "training curves": str(run_dir / "curves.png"),
        "trajectories": str(run_dir / "rollouts"),
        "per-sample results": str(eval_dir / "samples.jsonl"),
        "adapter": str(adapter),
    }


def _prior_figures(path: Path) -> dict[str, Any]:
    from rollout.prior_check import prior_check
    from rollout.store import read_groups

    if not path.is_file():
        return {}
    check = prior_check(read_groups(path))
    return {"rows": check.rows, "in_band": check.in_band, "signal_share": check.signal_share}


def _eval_figures(eval_dir: Path) -> dict[str, Any]:
    from rollout.evaluate import load_and_compare

    comparison, _, _ = load_and_compare(eval_dir)
    summary = comparison.summary
    return {
        "val_rows": summary.rows,
        "val_reward_base": round(summary.base_reward, 3),
        "val_reward_tuned": round(summary.tuned_reward, 3),
        "val_reward_gain": round(summary.reward_delta, 3),
        "improved_rows": summary.improved,
        "regressed_rows": summary.regressed,
    }


def _print_summary(result: DemoResult, work: Path) -> None:
    figures = result.figures
    print("\n" + "=" * 72)
    for name, value in figures.items():
        print(f"{name:>22}: {value}")
    for name, path in result.paths.items():
        print(f"{name:>22}: {path}")
    print(f"{'all figures':>22}: {work / 'demo-summary.json'}")
    print("tool servers stopped.")
