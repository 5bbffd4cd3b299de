"""The `toolgym` command as a user runs it: real processes, real ports; and, in-process
through `main(argv)`, what it prints for the tutorial's grades and for every bad input."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from testkit import answers_health, free_port, process_alive, wait_until
from trainer.cli import main

TOOLGYM = str(Path(sys.executable).with_name("toolgym"))


def run(
    *args: str, env: dict[str, str] | None = None, timeout: int = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TOOLGYM, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@dataclass
class Served:
    """A `toolgym serve` process whose output goes to a file: a pipe nobody reads until the end
    would block a chatty server once it held 64 KB."""

    process: subprocess.Popen[bytes]
    log: Path

    def wait_healthy(self, url: str, seconds: float = 90) -> None:
        wait_until(
            lambda: answers_health(url),
            what=f"{url}/health to answer",
            alive=process_alive(self.process, name="toolgym serve", log=self.log),
            timeout_s=seconds,
            interval_s=0.2,
        )

    def stop(self) -> str:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=20)
        return self.log.read_text(errors="replace")


def start(*args: str, env: dict[str, str], log: Path) -> Served:
    with log.open("wb") as out:  # the child keeps its own descriptor
        process = subprocess.Popen(
            [TOOLGYM, *args], stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env}
        )
    return Served(process, log)


def test_serve_refuses_to_start_without_a_token(corpus_dir: Path, hybrid_index: Path) -> None:
    result = run("serve", "--corpus", str(corpus_dir), env={"TOOL_BEARER": ""})
    assert result.returncode == 2
    assert "TOOL_BEARER" in result.stderr
    assert "--insecure-no-auth" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_example_placeholder_token_is_refused(corpus_dir: Path, hybrid_index: Path) -> None:
    result = run(
        "serve", "--corpus", str(corpus_dir), env={"TOOL_BEARER": "replace-me-with-a-random-token"}
    )
    assert result.returncode == 2
    assert "placeholder" in result.stderr
    assert "replace-me-with" not in result.stderr


def test_insecure_mode_binds_loopback_and_says_so(
    corpus_dir: Path, hybrid_index: Path, tmp_path: Path
) -> None:
    port = free_port()
    served = start(
        "serve",
        "--corpus",
        str(corpus_dir),
        "--insecure-no-auth",
        "--host",
        "0.0.0.0",
        "--port",
        str(port),
        env={"TOOL_BEARER": ""},
        log=tmp_path / "serve.log",
    )
    try:
        served.wait_healthy(f"http://127.0.0.1:{port}")
        response = httpx.post(f"http://127.0.0.1:{port}/list", json={"arguments": {}})
        assert response.status_code == 200  # no token needed in this mode
    finally:
        output = served.stop()
    assert "INSECURE" in output
    assert "binding 127.0.0.1 only" in output
    assert "on http://127.0.0.1:" in output


def test_tokens_never_reach_the_logs(corpus_dir: Path, hybrid_index: Path, tmp_path: Path) -> None:
    port = free_port()
    secret = "s3cr3t-token-that-must-not-leak"
    served = start(
        "serve",
        "--corpus",
        str(corpus_dir),
        "--port",
        str(port),
        "--access-log",
        env={"TOOL_BEARER": f"{secret},{secret}-next"},
        log=tmp_path / "serve.log",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        served.wait_healthy(url)
        ok = httpx.post(
            f"{url}/list",
            json={"arguments": {}},
            headers={"Authorization": f"Bearer {secret}-next"},
        )
        assert ok.status_code == 200
        bad = httpx.post(
            f"{url}/list",
            json={"arguments": {}},
            headers={"Authorization": f"Bearer {secret}-wrong"},
        )
        assert bad.status_code == 401
        assert secret not in bad.text
    finally:
        output = served.stop()
    assert "POST /list" in output  # the access log was on
    assert secret not in output


def test_stale_index_is_refused_at_start_with_the_fix(small_corpus: Path) -> None:
    built = run("index", "build", "--corpus", str(small_corpus), "--search", "lexical")
    assert built.returncode == 0, built.stderr
    assert "indexed 12 documents" in built.stdout
    (small_corpus / "filings" / "new-10k-2026.html").write_text("<p>new filing</p>")
    result = run("serve", "--corpus", str(small_corpus), env={"TOOL_BEARER": "t"})
    assert result.returncode == 2
    assert "toolgym index build --corpus" in result.stderr
    assert "Traceback" not in result.stderr


def test_synth_then_index_with_a_local_model_directory(
    tmp_path: Path, embedding_model: Path
) -> None:
    corpus = tmp_path / "corpus"
    synth = run("corpus", "synth", "--out", str(corpus), "--seed", "3")
    assert synth.returncode == 0, synth.stderr
    assert (corpus / "filings" / "henderson-industries-10q-2025-q3.html").is_file()
    built = run(
        "index",
        "build",
        "--corpus",
        str(corpus),
        "--embedding-model",
        str(embedding_model),
        "--search",
        "hybrid",
    )
    assert built.returncode == 0, built.stderr
    assert "search=hybrid" in built.stdout
    assert (corpus / "index" / "dense.faiss").is_file()


def test_unknown_embedding_model_is_a_clear_error(small_corpus: Path, tmp_path: Path) -> None:
    result = run(
        "index",
        "build",
        "--corpus",
        str(small_corpus),
        "--embedding-model",
        str(tmp_path / "no-such-model"),
        env={"HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 2
    assert "cannot load embedding model" in result.stderr
    assert "Traceback" not in result.stderr


# ---- in-process: main(argv), its exit status and what it printed ----


def toolgym_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `toolgym ARGV`; argparse's exits count as statuses."""
    try:
        status = main(argv)
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize(
    ("answer", "score"),
    [
        ("13.4%", "1.0"),  # exact
        ("0.134", "1.0"),  # format variant
        ("13.41%", "0.5"),  # rounding: a digit the reference does not state
        ("12.0%", "0.0"),
    ],
)
def test_grade_prints_the_tutorial_scores(
    answer: str, score: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = toolgym_main(["grade", "--reference", "13.4%", "--answer", answer], capsys)
    assert (status, out.splitlines()[-1]) == (0, score)
    if score == "0.5":
        assert "verdict: rounding_slip" in out and "more_precise_than_reference" in out


@pytest.mark.parametrize(
    ("reference", "answer", "score"),
    [
        ("-12.6%", "-12.6%", "1.0"),
        ("-12.6%", "-12.64%", "0.5"),
        ("-12.6%", "decreased by 12.6%", "1.0"),
        ("-12.6%", "12.6%", "0.0"),
        ("-1,234", "-$1,234", "1.0"),
        ("-.5", "-0.5", "1.0"),
        ("-$5 million", "-5000000", "1.0"),
    ],
)
def test_grade_takes_negative_figures_as_written(
    reference: str, answer: str, score: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = toolgym_main(["grade", "--reference", reference, "--answer", answer], capsys)
    assert (status, out.splitlines()[-1]) == (0, score), err


def test_a_negative_tolerance_is_still_refused(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["grade", "--reference", "5", "--answer", "5", "--tolerance-rel", "-1e-3"]
    status, out, err = toolgym_main(argv, capsys)
    assert (status, out) == (2, "")
    assert err == "toolgym: error: tolerance must be in [0, 1), e.g. 0.02; got -0.001\n"


def test_the_installed_command_grades_a_negative_reference() -> None:
    result = run("grade", "--reference", "-12.6%", "--answer", "-12.6%")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "1.0"


# ---- bad input: one line on stderr, exit status 2, never a traceback ----

ROW = {
    "id": "r1",
    "prompt": "What was revenue?",
    "reference_answer": "1",
    "metadata": {"task_type": "lookup", "difficulty": "easy"},
}
ENV_YAML = "id: acme/Bad-v0\ndataset: rows.jsonl\ntools_url: http://127.0.0.1:1\n"
TRAIN_YAML = "base_model: m\ntrain_dataset: rows.jsonl\noutput_dir: run\n"
POLICY = "--model m --base-url http://127.0.0.1:1/v1 --dataset {d}/rows.jsonl --no-progress"
SERVED = "m@http://127.0.0.1:1/v1"
GENERATED = {  # a row `toolgym tasks generate` wrote for another environment
    **ROW,
    "metadata": {"task_type": "lookup", "difficulty": "easy", "env_id": "acme/Notes-v0"},
}
UNLABELLED = {k: v for k, v in ROW.items() if k != "reference_answer"}
FILES = {
    "rows.jsonl": json.dumps(ROW) + "\n",
    "generated.jsonl": json.dumps(GENERATED) + "\n",
    "unlabelled.jsonl": json.dumps(UNLABELLED) + "\n",
    "not-json.json": "not json\n",
    "env-grader.yaml": ENV_YAML + "grader: {type: nope}\n",
    "env-option.yaml": ENV_YAML + "grader: {type: numeric, tol: 0.1}\n",
    "env-number.yaml": ENV_YAML + "grader: {type: numeric, tolerance_rel: lots}\n",
    "env-bool.yaml": ENV_YAML + "grader: {type: numeric, tolerance_rel: yes}\n",
    "env-part.yaml": ENV_YAML + "grader: {type: composite, parts: [{grader: nope}]}\n",
    "env-policy.yaml": ENV_YAML + "grader: {type: numeric, tool_policy: {penalty: 2}}\n",
    "env-judge.yaml": ENV_YAML + "grader: {type: judge}\n",
    "env-scalar.yaml": ENV_YAML + "grader: 5\n",
    "env-limit.yaml": ENV_YAML + "limits: {max_tool_calls: -1}\n",
    "env-limit-key.yaml": ENV_YAML + "limits: {max_tool_call: 3}\n",
    "env-key.yaml": ENV_YAML + "surprise: 1\n",
    "env-missing.yaml": "id: acme/Bad-v0\ndataset: rows.jsonl\n",
    "env-broken.yaml": "id: [unclosed\n",
    "train-grader.yaml": TRAIN_YAML + "environment: {kwargs: {grader: {type: nope}}}\n",
    "train-option.yaml": TRAIN_YAML + "environment: {kwargs: {grader: {type: auto, x: 1}}}\n",
    "train-limits.yaml": TRAIN_YAML + "environment: {limits: {max_turns: 0}}\n",
    "train-env.yaml": TRAIN_YAML + "environment: {id: acme/Nope-v0}\n",
    "train-generated.yaml": "base_model: m\ntrain_dataset: generated.jsonl\noutput_dir: run\n",
    "train-model.yaml": "base_model: empty-dir\ntrain_dataset: rows.jsonl\n",
    "train-epochs.yaml": TRAIN_YAML + "epochs: zero\n",
    "train-broken.yaml": "base_model: [unclosed\n",
}
BAD_INPUTS = [
    # -- verbs and arguments (argparse): one line, pointing at --help
    ("nope", "argument <verb>: invalid choice: 'nope'"),
    ("grade --answer 5", "the following arguments are required: --reference"),
    ("grade --reference 5 --answer 5 --tolerance-rel abc", "invalid float value: 'abc'"),
    # -- grade
    ("grade --reference 5 --answer 5 --tolerance-rel 1.5", "tolerance must be in [0, 1)"),
    ("grade --reference Retail --answer 5", "reference 'Retail' states no figure"),
    # -- YAML environment files: the grader and limits are checked when the file is loaded
    (
        "envs list --yaml {d}/env-grader.yaml",
        "grader: unknown grader type 'nope'; known types: ",
    ),
    (
        "envs list --yaml {d}/env-option.yaml",
        "unknown option 'tol' (options: tolerance_rel, require_unit)",
    ),
    ("envs list --yaml {d}/env-number.yaml", "tolerance_rel: Input should be a valid number"),
    ("envs list --yaml {d}/env-bool.yaml", "tolerance_rel: Input should be a valid number"),
    ("envs list --yaml {d}/env-part.yaml", "composite part 0: unknown grader type 'nope'"),
    ("envs list --yaml {d}/env-policy.yaml", "tool_policy: penalty: Input should be less"),
    ("envs list --yaml {d}/env-judge.yaml", "judge grader: base_url: required"),
    ("envs list --yaml {d}/env-scalar.yaml", "grader: Input should be a valid dictionary"),
    ("envs list --yaml {d}/env-limit.yaml", "limits: max_tool_calls: Input should be greater"),
    ("envs list --yaml {d}/env-limit-key.yaml", "limits: unknown key 'max_tool_call'"),
    ("envs list --yaml {d}/env-key.yaml", "surprise: Extra inputs are not permitted"),
    ("envs list --yaml {d}/env-missing.yaml", "tools_url: Field required"),
    ("envs list --yaml {d}/env-broken.yaml", "not valid YAML: while parsing a flow sequence"),
    ("envs list --yaml {d}/binary.yaml", "cannot read environment file"),
    ("envs list --yaml {d}/empty-dir", "Is a directory"),
    ("envs list --yaml {d}/missing.yaml", "No such file or directory"),
    # -- train configs: checked before a model is loaded
    ("train --config {d}/train-grader.yaml", "environment.kwargs: grader: unknown grader type"),
    ("train --config {d}/train-option.yaml", "auto grader: unknown option 'x'"),
    (
        "train --config {d}/train-limits.yaml",
        "environment.limits: max_turns: Input should be greater",
    ),
    ("train --config {d}/train-env.yaml", "no environment 'acme/Nope-v0' is registered"),
    ("train --config {d}/train-model.yaml", "empty-dir has no config.json"),
    (
        "train --config {d}/train-generated.yaml",
        "1 of 1 rows were generated for acme/Notes-v0 (metadata.env_id), not for toolgym/Filings",
    ),
    ("train --config {d}/train-epochs.yaml", "epochs: Input should be a valid integer"),
    ("train --config {d}/train-broken.yaml", "is not valid YAML: while parsing a flow"),
    ("train --config {d}/binary.yaml", "not a UTF-8 text file"),
    ("train --config {d}/empty-dir", "Is a directory"),
    ("train --config {d}/missing.yaml", "No such file or directory"),
    ("train --config {d}/train-epochs.yaml --set epochs", "write key=value"),
    ("train --config {d}/train-epochs.yaml --set epochs=[1", "the value is not valid YAML"),
    ("train --config {d}/train-epochs.yaml --set =3", "the key is missing"),
    # -- datasets
    ("data validate {d}/missing.jsonl", "missing.jsonl: no such file"),
    ("data validate {d}/empty-dir", "a directory, not a dataset file"),
    ("data validate {d}/rows.jsonl --corpus {d}/missing", "no such directory"),
    ("data build --corpus {d}/empty-dir --out {d}/out", "no facts.jsonl"),
    ("data build --corpus {d} --out {d}/out --count lookup=-5", "expected TASK=N"),
    ("data import-tatqa {d}/not-json.json --out {d}/out", "not valid JSON: Expecting value"),
    ("data import-tatqa {d}/binary.yaml --out {d}/out", "not a UTF-8 text file"),
    ("data import-tatqa {d}/missing.json --out {d}/out", "No such file or directory"),
    # -- rollout, prior-check, eval: settings checked while parsing, before anything runs
    (f"rollout {POLICY} --out {{d}}/o.jsonl --group-size 0", "--group-size: expected a whole"),
    (f"rollout {POLICY} --out {{d}}/o.jsonl --concurrency -1", "--concurrency: expected"),
    (f"rollout {POLICY} --out {{d}}/o.jsonl --temperature -1", "--temperature: expected"),
    (f"rollout {POLICY} --out {{d}}/o.jsonl --top-p 0", "--top-p: expected a number above 0"),
    (f"rollout {POLICY} --out {{d}}/o.jsonl --episode-timeout 0", "--episode-timeout"),
    (f"rollout {POLICY} --out {{d}}/o.jsonl --limit 0", "--limit: expected a whole number"),
    (f"rollout {POLICY} --out {{d}}/o.jsonl --ruler-weight 2", "from 0 to 1, got '2'"),
    (f"rollout {POLICY} --out {{d}}/o.jsonl --policy nope", "invalid choice: 'nope'"),
    (
        "rollout --model m --out {d}/o.jsonl --dataset {d}/rows.jsonl",
        "--base-url is required with --policy vllm",
    ),
    (
        "rollout --model m --base-url http://127.0.0.1:1/v1 --out {d}/o.jsonl",
        "toolgym/FilingsQA-v0 has no dataset of its own: pass --dataset",
    ),
    (f"rollout {POLICY} --out {{d}}/o.jsonl --env acme/Nope-v0", "is registered"),
    (f"rollout {POLICY} --out {{d}}/o.jsonl --dataset {{d}}/missing.jsonl", "cannot read"),
    (f"rollout {POLICY} --out {{d}}/o.jsonl", "no tool server"),  # every worker fails alike
    (
        "rollout --policy local --model {d}/empty-dir --out {d}/o.jsonl "
        "--dataset {d}/rows.jsonl --tools-url http://127.0.0.1:1",
        "empty-dir has no config.json",
    ),
    (f"prior-check {POLICY} --rows -2", "--rows: expected a whole number >= 1, got '-2'"),
    (f"prior-check {POLICY} --threshold 2", "--threshold: expected a number from 0 to 1"),
    (
        "prior-check --model m --base-url http://127.0.0.1:1/v1 --dataset {d}/unlabelled.jsonl",
        "none of the 1 rows has a reference_answer: prior-check measures success with the",
    ),
    (
        "rollout --model m --base-url http://127.0.0.1:1/v1 --dataset {d}/generated.jsonl "
        "--out {d}/o.jsonl",
        "were generated for acme/Notes-v0 (metadata.env_id), not for toolgym/FilingsQA-v0: play",
    ),
    (
        f"eval --base {SERVED} --tuned {SERVED} --dataset {{d}}/rows.jsonl --out {{d}} --n -1",
        "--n: expected a whole number >= 1, got '-1'",
    ),
    (
        f"eval --base {SERVED} --tuned {SERVED} --dataset {{d}}/rows.jsonl --out {{d}} "
        "--attempts 0",
        "--attempts: expected a whole number >= 1",
    ),
    (
        f"eval --base {SERVED} --tuned {SERVED} --dataset {{d}}/rows.jsonl --out {{d}}/rows.jsonl",
        "is a file; eval writes a directory",
    ),
    (
        f"eval --base {SERVED} --tuned nosuch --dataset {{d}}/rows.jsonl --out {{d}}/ev",
        "nosuch is not a model directory",
    ),
    # -- tasks generate: the environment and the output directory, before any model loads
    (
        "tasks generate --env acme/Nope-v0 --model w@http://127.0.0.1:1/v1 --out {d}/t",
        "no environment 'acme/Nope-v0' is registered",
    ),
    (
        "tasks generate --env toolgym/FilingsQA-v0 --model w --out {d}/t",
        "--model: expected NAME@http://host:port/v1, got 'w'",
    ),
    (
        "tasks generate --env toolgym/FilingsQA-v0 --model w@http://127.0.0.1:1/v1 "
        "--out {d}/rows.jsonl",
        "is a file; tasks generate writes a directory",
    ),
    # -- vllm serve (--dry-run: nothing starts), demo run (run_demo is replaced, below)
    ("vllm serve --model m --dry-run --port 99999", "expected a port from 1 to 65535"),
    ("vllm serve --model m --dry-run --max-loras 0", "--max-loras: expected a whole number"),
    ("vllm serve --model m --dry-run --gpu-memory-utilization 2", "above 0 and up to 1"),
    ("vllm serve --model m --dry-run --lora broken", "--lora takes NAME=PATH"),
    ("demo run --http-port -1", "or 0 for a free one, got '-1'"),
    ("demo run --sft-steps 0", "--sft-steps: expected a whole number >= 1"),
    ("demo run --grpo-set steps", "--set 'steps': write key=value"),
    ("demo run --grpo-set stpes=10", "stpes: unknown key"),
]


@pytest.fixture
def bad_inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory of broken files; the demo is replaced, so a case that got through by
    mistake fails at once instead of running the whole demo."""
    for name, text in FILES.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00not text")
    (tmp_path / "empty-dir").mkdir()

    def no_demo(*args: object, **kwargs: object) -> None:
        raise AssertionError("a bad `demo run` argument got through to the demo")

    monkeypatch.setattr("trainer.demo.run_demo", no_demo)
    monkeypatch.chdir(tmp_path)  # relative paths in the train configs
    return tmp_path


@pytest.mark.parametrize(("command", "fragment"), BAD_INPUTS)
def test_bad_input_is_one_line_and_exit_2(
    bad_inputs: Path, command: str, fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = shlex.split(command.replace("{d}", str(bad_inputs)))
    status, _, err = toolgym_main(argv, capsys)
    assert status == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("toolgym") and ": error: " in lines[0], err
    assert fragment in lines[0]
