"""`make demo` (`toolgym demo run`): the whole loop on one CPU machine, offline.

1. corpus and questions   2. embedding model + search index (recall@5 reported)
3. HTTP + MCP tool servers with a fresh token   4. a small policy, warm-started by SFT on
demonstration episodes, then the prior check   5. GRPO with LoRA   6. base vs tuned on val
7. where everything is. Each step calls the library functions behind a `toolgym` verb and
uses what they return; it first prints that `toolgym` command, so any step can be repeated by
hand. The servers it started are stopped at the end, also on errors.

Settings reach each step as arguments, never through os.environ: the tool servers' token is
handed to the in-process environments at registration (`register_yaml(..., token=)`); only
the server processes read it from TOOL_BEARER, as `toolgym serve` does. The environment file
written for the user names TOOL_BEARER, so the printed commands work in a shell that exports it.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shlex
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from envs.data.demonstrations import Demonstration
from envs.registry import YAML_PATH_ENV, register_yaml
from rollout.engine import RolloutSettings
from rollout.environments import EnvPool
from rollout.evaluate import EvalOutcome, EvalRequest, run_eval
from rollout.policy import SamplingParams
from rollout.policy_spec import LocalSpec
from rollout.prior_check import PriorCheck, PriorCheckRun, run_prior_check
from trainer.config import load_config
from trainer.demo_data import DemoData, prepare_data, prepare_search, show_command
from trainer.demo_policy import PolicyShape, build_policy, record_demos
from trainer.demo_report import eval_figures, plot_demo, prior_figures
from trainer.demo_servers import ToolServers
from trainer.errors import TrainerError
from trainer.train import TrainResult, train
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
    # Rows answered in millions demonstrated twice, right and with the scale misread: a coin
    # flip after the copied figure that GRPO learns to call (envs.data.demonstrations)
    scale_slips: bool = True
    prior_rows: int = 128  # val rows of the headroom check
    prior_attempts: int = 8
    require_signal: bool = True  # stop when no val row is solved sometimes (nothing to learn)
    # Also stop when val pass@k - pass@1 is below this (None: the headroom is reported only)
    min_headroom: float | None = None
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


def write_env_file(path: Path, dataset: Path, tools_url: str, settings: DemoSettings) -> None:
    """A no-code environment (see README "Adding an environment"), registered by file."""
    spec = {
        "id": ENV_ID,
        "dataset": str(dataset.resolve()),
        "tools_url": tools_url,
        "transport": "http",
        "token_env": "TOOL_BEARER",
        # The prompt asks for the scale, so a figure without it is wrong (see compare.py).
        "grader": {"type": "auto", "require_unit": True},
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
    data = prepare_data(work, settings.seed, settings.lookup_rows)
    steps.begin("embedding model trained on the corpus, search index")
    result.figures["recall_at_5"] = round(prepare_search(work, data), 3)
    steps.begin("tool servers (HTTP + MCP) with a fresh bearer token")
    token = secrets.token_urlsafe(24)
    with ToolServers(
        data.corpus,
        token,
        work / "logs",
        http_port=settings.http_port,
        mcp_port=settings.mcp_port,
    ) as servers:
        print(f"HTTP {servers.http_url}   MCP {servers.mcp_url}")
        env_file = work / "env.yaml"
        write_env_file(env_file, data.train, servers.http_url, settings)
        print(f"registered {register_yaml(env_file, token=token)} from {env_file}")
        print(_shell_setup(token, env_file))
        _run_with_servers(settings, steps, result, work, data, servers)
    steps.finish()
    result.figures["minutes"] = round(steps.elapsed() / 60, 1)
    (work / "demo-summary.json").write_text(json.dumps(result.figures, indent=2) + "\n")
    _print_summary(result, work)
    return result


def _shell_setup(token: str, env_file: Path) -> str:
    """What a shell needs for the `toolgym` commands the demo prints (the demo itself passes
    the token and the environment in-process, and sets neither variable)."""
    exports = f"TOOL_BEARER={shlex.quote(token)} {YAML_PATH_ENV}={shlex.quote(str(env_file))}"
    return (
        "the `toolgym` commands below read the token and the environment file from the shell; "
        f"to run one by hand while the servers are up:\n  export {exports}"
    )


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
        # a new policy: an earlier run's prior check (its file resumes) no longer applies
        (work / "prior-check.jsonl").unlink(missing_ok=True)
        demos = _demonstrations(settings, data, servers.mcp_url, work)
        initial = build_policy(work / "policy-init", demos, settings.shape, settings.seed)
        warm_start(initial, demos, policy, settings.warm)
    prior = _prior_check_step(settings, policy, data, work / "prior-check.jsonl")
    result.figures["val_headroom_before_grpo"] = prior_figures(prior.result)
    # GRPO needs rows it sometimes solves; the verdict's stricter shares are advice, this is not
    _gate(settings, prior.result)
    steps.begin("GRPO with LoRA (rollout engine + trainer, adapter published each step)")
    run_dir = work / "grpo"
    for old in (run_dir, work / "eval"):  # a new policy: earlier results no longer apply
        shutil.rmtree(old, ignore_errors=True)
    trained = _train_step(settings, policy, data, run_dir)
    steps.begin("evaluation: warm-started (base) vs GRPO-tuned on the val rows")
    eval_dir = work / "eval"
    outcome = _eval_step(settings, policy, trained.adapter, data, eval_dir)
    steps.begin("results")
    summary = outcome.comparison.summary
    result.figures |= eval_figures(summary)
    result.figures["val_curve"] = [[step, round(reward, 3)] for step, reward in trained.val_curve]
    picture = plot_demo(
        work / "demo.png", trained.val_curve, trained.val_curve_rows, summary, steps.elapsed() / 60
    )
    result.paths = {
        "picture": str(picture),
        "report": str(outcome.report.html),
        "plots": str(eval_dir),
        "training curves": str(trained.curves),
        "trajectories": str(run_dir / "rollouts"),
        "per-sample results": str(outcome.samples),
        "adapter": str(trained.adapter),
    }


def _gate(settings: DemoSettings, check: PriorCheck) -> None:
    """Stop before GRPO when it has nothing to learn: no val row solved only sometimes, or
    (with `min_headroom`) too little headroom for a gain to show. Otherwise say how much
    GRPO can hope to win."""
    k = check.attempts_per_row
    headroom = f"val pass@{k} - pass@1 = {check.headroom:.3f}"
    if settings.require_signal and not check.in_band:
        raise TrainerError(
            "demo stopped: no val row is solved sometimes (only always or never), so GRPO has "
            "nothing to learn; warm-start longer (--sft-steps) or pass --no-signal-gate"
        )
    low = settings.min_headroom is not None and check.headroom < settings.min_headroom
    if settings.require_signal and low:
        raise TrainerError(
            f"demo stopped: {headroom} is below the {settings.min_headroom:g} asked for "
            "(--min-headroom): GRPO could not win that much; change the warm start, or pass "
            "--no-signal-gate to train anyway"
        )
    print(f"{headroom}: about the most GRPO can raise val pass@1 by")


def _demonstrations(
    settings: DemoSettings, data: DemoData, mcp_url: str, work: Path
) -> list[Demonstration]:
    """The oracle's episodes over the train rows, through the demo's environment, its tools
    reached over MCP."""
    recording = record_demos(
        ENV_ID,
        data.train,
        mcp_url,
        work / "demos.jsonl",
        scale_slips=settings.scale_slips,
    )
    demos = asyncio.run(recording)
    print(f"{len(demos)} demonstration episodes played over MCP ({mcp_url})")
    return demos


def train_overrides(
    settings: DemoSettings, policy: Path, data: DemoData, run_dir: Path
) -> list[str]:
    """The demo's `--set` items over configs/demo-cpu.yaml: what it trains, and where."""
    return [
        f"base_model={policy}", f"environment.id={ENV_ID}", f"train_dataset={data.train}",
        f"val_dataset={data.val}", f"output_dir={run_dir}", f"seed={settings.seed}",
        *settings.grpo_overrides,
    ]  # fmt: skip


def train_command(overrides: list[str]) -> list[str]:
    """`toolgym train` over the demo's config with `overrides`: what `_train_step` runs."""
    return ["train", "--config", str(CONFIG), *[w for item in overrides for w in ("--set", item)]]


def _train_step(settings: DemoSettings, policy: Path, data: DemoData, run_dir: Path) -> TrainResult:
    overrides = train_overrides(settings, policy, data, run_dir)
    show_command(*train_command(overrides))
    trained = asyncio.run(train(load_config(CONFIG, overrides)))
    print(f"adapter {trained.version}: {trained.adapter}")
    return trained


def prior_check_command(
    settings: DemoSettings, policy: Path, data: DemoData, out: Path
) -> list[str]:
    """`toolgym prior-check` on val with what `prior_check_inputs` holds: what the step runs."""
    return [
        "prior-check", "--env", ENV_ID, "--dataset", str(data.val), "--policy", "local",
        "--model", str(policy), "--rows", str(settings.prior_rows),
        "--attempts", str(settings.prior_attempts),
        "--max-tokens", "80", "--concurrency", "64", "--seed", str(settings.seed),
        "--out", str(out),
    ]  # fmt: skip


def prior_check_inputs(settings: DemoSettings, policy: Path) -> tuple[LocalSpec, RolloutSettings]:
    """The policy and the rollout settings of the prior check (the CLI's defaults otherwise)."""
    rollout = RolloutSettings(
        env_id=ENV_ID,
        group_size=settings.prior_attempts,
        concurrency=64,
        sampling=SamplingParams(max_tokens=80),
        seed=settings.seed,
    )
    return LocalSpec(policy), rollout


def eval_command(
    settings: DemoSettings, policy: Path, adapter: Path, data: DemoData, eval_dir: Path
) -> list[str]:
    """`toolgym eval` with what `eval_request` holds: what the step runs."""
    some_rows = ["--n", str(settings.eval_rows)] if settings.eval_rows else []
    return [
        "eval", "--env", ENV_ID, "--dataset", str(data.val), "--base", str(policy),
        "--tuned", f"{policy}+{adapter}", "--attempts", str(settings.eval_attempts),
        "--temperature", "1.0", "--max-tokens", "80", "--seed", str(settings.seed),
        "--out", str(eval_dir), *some_rows,
    ]  # fmt: skip


def eval_request(
    settings: DemoSettings, policy: Path, adapter: Path, data: DemoData, eval_dir: Path
) -> EvalRequest:
    return EvalRequest(
        env_id=ENV_ID,
        dataset=data.val,
        out=eval_dir,
        base=LocalSpec(policy),
        tuned=LocalSpec(policy, adapter),
        n=settings.eval_rows,
        attempts=settings.eval_attempts,
        temperature=1.0,
        max_tokens=80,
        seed=settings.seed,
    )


def _prior_check_step(
    settings: DemoSettings, policy: Path, data: DemoData, out: Path
) -> PriorCheckRun:
    """K val rows x N attempts of the warm-started policy: pass@1, pass@N and the headroom
    between them, the most GRPO can win. The caller stops the demo on its verdict."""
    show_command(*prior_check_command(settings, policy, data, out))
    spec, rollout = prior_check_inputs(settings, policy)

    async def check() -> PriorCheckRun:
        pool = EnvPool(ENV_ID, dataset=data.val)
        try:
            return await run_prior_check(pool, spec, rollout, rows=settings.prior_rows, out=out)
        finally:
            await pool.aclose()

    run = asyncio.run(check())
    print(run.report())
    return run


def _eval_step(
    settings: DemoSettings, policy: Path, adapter: Path, data: DemoData, eval_dir: Path
) -> EvalOutcome:
    """Base (warm-started) vs tuned (its GRPO adapter) on the val rows."""
    show_command(*eval_command(settings, policy, adapter, data, eval_dir))
    outcome = asyncio.run(run_eval(eval_request(settings, policy, adapter, data, eval_dir)))
    print(outcome.terminal())
    return outcome


def _print_summary(result: DemoResult, work: Path) -> None:
    """The story in figures: what GRPO could win, what it won, at what cost."""
    print("\n" + "=" * 72)
    for line in story(result.figures):
        print(line)
    for name, path in result.paths.items():
        print(f"{name:>18}: {path}")
    print(f"{'all figures':>18}: {work / 'demo-summary.json'}")
    print("tool servers stopped.")


def story(figures: dict[str, Any]) -> list[str]:
    """The summary's lines, from the figures the demo measured (absent ones are left out)."""
    lines = [f"search recall@5 on val questions: {figures.get('recall_at_5')}"]
    head = figures.get("val_headroom_before_grpo")
    if head:
        k = head["attempts"]
        lines.append(
            f"before GRPO, {head['rows']} val rows x {k}: pass@1 {head['pass_at_1']}, "
            f"pass@{k} {head[f'pass_at_{k}']}: headroom {head['headroom']} (the most GRPO can win)"
        )
    curve = figures.get("val_curve")
    if curve:
        points = ", ".join(f"{reward} (step {step})" for step, reward in curve)
        lines.append(f"val reward while training: {points}")
    if "val_rows" in figures:
        k = figures["val_attempts"]
        lines += [
            f"all {figures['val_rows']} val rows, same seeds: reward "
            f"{figures['val_reward_base']} -> {figures['val_reward_tuned']} "
            f"({figures['val_reward_gain']:+}); pass@1 {figures['val_pass_at_1_base']} -> "
            f"{figures['val_pass_at_1_tuned']}; pass@{k} {figures.get(f'val_pass_at_{k}_base')} "
            f"-> {figures.get(f'val_pass_at_{k}_tuned')}",
            f"rows improved {figures['improved_rows']}, regressed {figures['regressed_rows']}",
        ]
    if "minutes" in figures:
        lines.append(f"minutes: {figures['minutes']}")
    return lines
