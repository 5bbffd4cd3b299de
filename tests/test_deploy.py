"""deploy/: the Slurm batch script and the Kubernetes manifests, checked as far as a machine
without a cluster can: the manifests against the Kubernetes schemas (kubernetes-validate,
strict), every shell script through shellcheck, the batch script's dry run for how it wires
the URLs, and the configs both recipes write or ship through toolgym's own loaders.

The validators are the ones the dev lock installs into the venv (`make install`).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from envs.registry import register_yaml
from rollout.vllm import VllmServeConfig, vllm_arguments
from trainer.config import load_config

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
SBATCH = DEPLOY / "slurm" / "toolgym.sbatch"
GPU_CONFIG = ROOT / "configs" / "gpu-qwen2.5-3b.yaml"
K8S_VERSION = "1.37.0"  # the Makefile's deploy-check validates against the same
SECRET = "s3cret-token-that-must-never-be-printed"


def tool(name: str) -> str:
    """A validator from the venv this test runs in (the dev lock installs both)."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    assert found, f"{name} is not installed: `make install` installs it from requirements-dev.lock"
    return found


def run(*argv: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, **kwargs)


def manifest_files() -> list[Path]:
    return sorted(K8S.glob("*.yaml")) + sorted(K8S.glob("*/*.yaml"))


def shell_files() -> list[Path]:
    return sorted(
        [*DEPLOY.glob("*/*.sh"), *DEPLOY.glob("*/*.sbatch"), *(ROOT / "docker").glob("*.sh")]
    )


def resources() -> dict[tuple[str, str], dict[str, Any]]:
    """Every manifest in deploy/k8s (the Secret template included), by (kind, name)."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path in manifest_files():
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc:
                found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


def container(pod_spec: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in pod_spec["containers"] if c["name"] == name)


def env_value(cont: dict[str, Any], name: str) -> Any:
    return next(e for e in cont["env"] if e["name"] == name)


def embedded_scripts() -> list[tuple[str, str, str]]:
    """(where, shell, script) for every `command: [sh|bash, -ec, SCRIPT]` in the manifests."""
    scripts = []
    for (kind, name), doc in resources().items():
        spec = doc.get("spec", {}).get("template", {}).get("spec", {})
        for cont in spec.get("initContainers", []) + spec.get("containers", []):
            command = cont.get("command", [])
            if command[:1] in (["sh"], ["bash"]):
                assert len(command) == 3 and command[1] == "-ec", command
                scripts.append((f"{kind}/{name}/{cont['name']}", command[0], command[2]))
    return scripts


# --- the validators, and that they can fail ----------------------------------------------------


def test_manifests_pass_strict_schema_validation() -> None:
    files = manifest_files()
    assert len(files) >= 7, files
    result = run(tool("kubernetes-validate"), "--strict", "-k", K8S_VERSION, *map(str, files))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ERROR" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("readinessProbe:", "readinesProbe:"), "readinesProbe"),  # a misspelt field
        (("replicas: 3", "replicas: three"), "three"),  # a wrong type
    ],
)
def test_the_validator_rejects_a_broken_manifest(
    tmp_path: Path, edit: tuple[str, str], expected: str
) -> None:
    text = (K8S / "tools.yaml").read_text(encoding="utf-8")
    assert edit[0] in text
    broken = tmp_path / "tools.yaml"
    broken.write_text(text.replace(edit[0], edit[1], 1), encoding="utf-8")
    result = run(tool("kubernetes-validate"), "--strict", "-k", K8S_VERSION, str(broken))
    assert result.returncode != 0
    assert expected in result.stdout + result.stderr


def test_shell_scripts_pass_shellcheck(tmp_path: Path) -> None:
    files = shell_files()
    assert SBATCH in files
    result = run(tool("shellcheck"), *map(str, files))
    assert result.returncode == 0, result.stdout + result.stderr
    # The scripts inside the manifests too (the trainer's torchrun line, the data Job).
    scripts = embedded_scripts()
    assert len(scripts) >= 2, scripts
    for where, shell, script in scripts:
        result = run(tool("shellcheck"), f"--shell={shell}", "-", input=script)
        assert result.returncode == 0, f"{where}:\n{result.stdout}{result.stderr}"


def test_shellcheck_flags_a_broken_script(tmp_path: Path) -> None:
    script = tmp_path / "broken.sh"
    script.write_text('#!/bin/bash\nfiles=$(ls)\nrm $files\ncd "$HOME/x"\n', encoding="utf-8")
    result = run(tool("shellcheck"), str(script))
    assert result.returncode != 0
    assert "SC2086" in result.stdout  # the unquoted expansion


# --- the Slurm batch script's dry run ------------------------------------------------------------


def dry_run(nodes: list[str], **settings: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/tmp"),
        "TOOLGYM_NODES": ",".join(nodes),
        "TOOLGYM_CONFIG": str(GPU_CONFIG),
        "SHARED_DIR": "/shared/toolgym",
        "TOOL_CORPUS": "/shared/toolgym/corpus",
        "TOOL_BEARER": SECRET,
        "TOOLGYM": str(Path(sys.executable).parent / "toolgym"),
        **settings,
    }
    return run("bash", str(SBATCH), "--dry-run", env=env)


def commands(stdout: str) -> list[list[str]]:
    """The commands the dry run printed ("+ argv", a trailing " &" for background steps)."""
    return [
        shlex.split(line[2:].removesuffix(" &")) for line in stdout.splitlines() if line[:2] == "+ "
    ]


def option(argv: list[str], name: str) -> str:
    """The value of `name V` or `name=V` in argv."""
    for i, word in enumerate(argv):
        if word == name:
            return argv[i + 1]
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
    raise AssertionError(f"{name} not in {argv}")


def written_file(stdout: str, suffix: str) -> tuple[str, str]:
    match = re.search(
        rf"^----- (.*{re.escape(suffix)}) -----\n(.*?)^----- end -----$", stdout, re.M | re.S
    )
    assert match, f"no {suffix} written in:\n{stdout}"
    return match.group(1), match.group(2)


def test_dry_run_wires_every_url(tmp_path: Path, forget_new_envs: None) -> None:
    nodes = ["gpu01", "gpu02", "gpu03", "gpu04", "gpu05"]
    result = dry_run(nodes, TRAIN_NODES="2", GPUS_PER_NODE="4", VLLM_TP="2")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert SECRET not in out
    argvs = commands(result.stdout)

    # vLLM: 3 inference nodes x (4 GPUs / TP 2) servers, disjoint GPU groups, ports from 8000
    servers = [a for a in argvs if "vllm" in a and "serve" in a]
    assert len(servers) == 6
    vllm_urls = [f"http://{option(a, '--nodelist')}:{option(a, '--port')}/v1" for a in servers]
    assert len(set(vllm_urls)) == 6
    assert {option(a, "--nodelist") for a in servers} == set(nodes[2:])
    assert sorted(a[a.index("env") + 1] for a in servers) == sorted(
        ["CUDA_VISIBLE_DEVICES=0,1", "CUDA_VISIBLE_DEVICES=2,3"] * 3
    )
    for argv in servers:
        assert "--enable-lora" in argv and option(argv, "--host") == "0.0.0.0"
        assert "--extra-arg=--tensor-parallel-size=2" in argv

    # the tool server, on an inference node
    (tools,) = [a for a in argvs if "toolservers" in a]
    tool_url = f"http://{option(tools, '--nodelist')}:{option(tools, '--port')}"
    assert option(tools, "--nodelist") in nodes[2:]
    assert option(tools, "--host") == "0.0.0.0"

    # each server is waited for before the trainer starts
    waits = re.findall(r"^\+ wait for (\S+)", result.stdout, re.M)
    assert sorted(waits) == sorted(
        [tool_url + "/health"] + [u.removesuffix("/v1") + "/health" for u in vllm_urls]
    )

    # the environment file, through the real registry loader
    env_path, env_text = written_file(result.stdout, "env.yaml")
    env_file = tmp_path / "env.yaml"
    env_file.write_text(env_text, encoding="utf-8")
    env_id = register_yaml(env_file)
    import gymnasium as gym

    assert gym.spec(env_id).kwargs["tools_url"] == tool_url
    assert gym.spec(env_id).kwargs["token_env"] == "TOOL_BEARER"

    # torchrun across the training nodes, rendezvous on the first
    (launch,) = [a for a in argvs if any(Path(w).name == "torchrun" for w in a)]
    assert Path(launch[launch.index("--nnodes") - 1]).parent == Path(sys.executable).parent
    assert option(launch, "--nodelist") == "gpu01,gpu02"
    assert option(launch, "--nodes") == option(launch, "--ntasks") == "2"
    assert option(launch, "--nnodes") == "2"
    assert option(launch, "--nproc-per-node") == "4"
    assert option(launch, "--rdzv-backend") == "c10d"
    assert option(launch, "--rdzv-endpoint") == "gpu01:29500"
    assert f"TOOLGYM_ENVS={env_path}" in launch
    train = launch[launch.index("train") :]
    overrides = [train[i + 1] for i, word in enumerate(train) if word == "--set"]
    config = load_config(Path(option(train, "--config")), overrides)
    assert config.policy.backend == "vllm"
    assert config.policy.base_urls == vllm_urls
    assert config.environment.id == env_id
    assert config.environment.tools_url is None  # the env file's URL, not the config's
    assert config.policy.adapter_dir_on_server == config.output_dir / "adapters"
    assert str(config.output_dir).startswith("/shared/toolgym/")


def test_dry_run_tool_replicas_over_mcp(tmp_path: Path, forget_new_envs: None) -> None:
    """One GPU per server; three MCP tool-server replicas, all in the environment's URL list."""
    result = dry_run(
        ["a", "b", "c"],
        GPUS_PER_NODE="2",
        TOOL_TRANSPORT="mcp",
        TOOL_PORT="9000",
        TOOL_REPLICAS="3",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    argvs = commands(result.stdout)
    servers = [a for a in argvs if "vllm" in a and "serve" in a]
    assert [a[a.index("env") + 1] for a in servers] == [
        "CUDA_VISIBLE_DEVICES=0",
        "CUDA_VISIBLE_DEVICES=1",
    ] * 2
    assert not any("tensor-parallel" in w for a in servers for w in a)
    tools = [a for a in argvs if "toolservers" in a]
    assert all(option(a, "--transport") == "mcp" for a in tools)
    urls = [f"http://{option(a, '--nodelist')}:{option(a, '--port')}/mcp" for a in tools]
    assert urls == ["http://b:9000/mcp", "http://c:9000/mcp", "http://b:9001/mcp"]
    _, env_text = written_file(result.stdout, "env.yaml")
    env_file = tmp_path / "env.yaml"
    env_file.write_text(env_text, encoding="utf-8")
    import gymnasium as gym

    assert gym.spec(register_yaml(env_file)).kwargs["tools_url"] == urls


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"TOOLGYM_CONFIG": ""}, "set TOOLGYM_CONFIG"),
        ({"TRAIN_NODES": "2"}, "at least one more is needed for vLLM"),
        ({"VLLM_TP": "3"}, "does not divide"),
        ({"TOOL_TRANSPORT": "stdio"}, "http or mcp"),
        ({"GPUS_PER_NODE": "0"}, "positive whole number"),
    ],
)
def test_dry_run_refuses_bad_settings(settings: dict[str, str], message: str) -> None:
    result = dry_run(["n1", "n2"], **settings)
    assert result.returncode == 2
    assert message in result.stderr
    assert "+ srun" not in result.stdout  # nothing would have started


def test_a_real_run_needs_the_token() -> None:
    env = {
        "PATH": os.environ["PATH"],
        "TOOLGYM_NODES": "n1,n2",
        "TOOLGYM_CONFIG": str(GPU_CONFIG),
        "SHARED_DIR": "/nonexistent",
        "TOOL_CORPUS": "/nonexistent",
    }
    result = run("bash", str(SBATCH), env=env)
    assert result.returncode == 2
    assert "set TOOL_BEARER" in result.stderr
    assert result.stdout == ""


# --- the Kubernetes manifests: how they wire the URLs ---------------------------------------------


def config_map_files(tmp_path: Path) -> tuple[Path, Path]:
    data = resources()[("ConfigMap", "toolgym-config")]["data"]
    env_file, train_file = tmp_path / "env.yaml", tmp_path / "train.yaml"
    env_file.write_text(data["env.yaml"], encoding="utf-8")
    train_file.write_text(data["train.yaml"], encoding="utf-8")
    return env_file, train_file


def mount_path(pod_spec: dict[str, Any], cont: dict[str, Any], claim: str) -> Path:
    (volume,) = [
        v["name"]
        for v in pod_spec["volumes"]
        if v.get("persistentVolumeClaim", {}).get("claimName") == claim
    ]
    (mount,) = [m["mountPath"] for m in cont["volumeMounts"] if m["name"] == volume]
    return Path(mount)


def test_config_map_loads_and_lists_every_server(tmp_path: Path, forget_new_envs: None) -> None:
    found = resources()
    env_file, train_file = config_map_files(tmp_path)
    config = load_config(train_file)
    env_id = register_yaml(env_file)
    import gymnasium as gym

    assert config.environment.id == env_id
    assert config.environment.tools_url is None

    # every vLLM pod by its stable name, through the headless Service
    sts = found[("StatefulSet", "toolgym-vllm")]
    headless = found[("Service", sts["spec"]["serviceName"])]
    assert headless["spec"]["clusterIP"] == "None"
    assert (
        headless["spec"]["selector"].items()
        <= sts["spec"]["template"]["metadata"]["labels"].items()
    )
    port = headless["spec"]["ports"][0]["port"]
    name, svc, replicas = (
        sts["metadata"]["name"],
        headless["metadata"]["name"],
        sts["spec"]["replicas"],
    )
    assert config.policy.backend == "vllm"
    assert config.policy.base_urls == [
        f"http://{name}-{i}.{svc}:{port}/v1" for i in range(replicas)
    ]

    # the tool-server Service is the environment's one URL
    tools = found[("Deployment", "toolgym-tools")]
    service = found[("Service", "toolgym-tools")]
    assert (
        service["spec"]["selector"].items()
        <= tools["spec"]["template"]["metadata"]["labels"].items()
    )
    assert (
        gym.spec(env_id).kwargs["tools_url"]
        == f"http://toolgym-tools:{service['spec']['ports'][0]['port']}"
    )
    assert gym.spec(env_id).kwargs["token_env"] == "TOOL_BEARER"
    assert tools["spec"]["replicas"] == 3
    mcp = found[("Service", "toolgym-tools-mcp")]
    pod = tools["spec"]["template"]["spec"]
    named_ports = {p["name"] for c in pod["containers"] for p in c["ports"]}
    for svc_doc in (service, mcp):
        assert {p["targetPort"] for p in svc_doc["spec"]["ports"]} <= named_ports
    for cont in pod["containers"]:
        assert cont["readinessProbe"]["httpGet"]["path"] == "/health"
        assert "--host" in cont["command"] and "0.0.0.0" in cont["command"]
        assert (
            env_value(cont, "TOOL_BEARER")["valueFrom"]["secretKeyRef"]["name"]
            == "toolgym-tool-bearer"
        )

    # adapters: written under output_dir by the trainer, read at the same path by vLLM, on
    # one ReadWriteMany volume
    pvc = found[("PersistentVolumeClaim", "toolgym-shared")]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    job = found[("Job", "toolgym-train")]
    job_pod = job["spec"]["template"]["spec"]
    vllm_pod = sts["spec"]["template"]["spec"]
    trainer_mount = mount_path(job_pod, container(job_pod, "trainer"), "toolgym-shared")
    vllm_mount = mount_path(vllm_pod, container(vllm_pod, "vllm"), "toolgym-shared")
    assert trainer_mount == vllm_mount
    assert config.policy.adapter_dir_on_server == config.output_dir / "adapters"
    assert config.output_dir.is_relative_to(trainer_mount)
    assert config.train_dataset is not None and config.train_dataset.is_relative_to(trainer_mount)


def test_vllm_pods_run_what_toolgym_vllm_serve_runs(tmp_path: Path) -> None:
    found = resources()
    vllm = container(found[("StatefulSet", "toolgym-vllm")]["spec"]["template"]["spec"], "vllm")
    _, train_file = config_map_files(tmp_path)
    config = load_config(train_file)
    serve = VllmServeConfig(
        model=config.base_model,
        host="0.0.0.0",
        port=vllm["ports"][0]["containerPort"],
        enable_lora=True,
        lora_rank=config.lora.rank,
    )
    assert vllm["command"] == ["vllm", "serve"]
    assert vllm["args"] == vllm_arguments(serve)
    assert env_value(vllm, "VLLM_ALLOW_RUNTIME_LORA_UPDATING")["value"] == "1"
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] >= 1
    assert vllm["readinessProbe"]["httpGet"]["path"] == "/health"
    assert re.fullmatch(r"vllm/vllm-openai:v0\.33\.\d+", vllm["image"])


def test_trainer_job_rendezvous_is_consistent() -> None:
    found = resources()
    job = found[("Job", "toolgym-train")]
    spec = job["spec"]
    pod = spec["template"]["spec"]
    trainer = container(pod, "trainer")
    env = {e["name"]: e.get("value") for e in trainer["env"]}
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == int(env["NNODES"])
    assert int(env["GPUS_PER_NODE"]) == trainer["resources"]["limits"]["nvidia.com/gpu"]
    # pod 0 of an Indexed Job is <job>-0; with the subdomain, <job>-0.<headless service>
    service = found[("Service", pod["subdomain"])]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    rdzv_port = service["spec"]["ports"][0]["port"]
    assert env["RDZV_ENDPOINT"] == f"{job['metadata']['name']}-0.{pod['subdomain']}:{rdzv_port}"
    script = trainer["command"][2]
    assert "torchrun" in script and "--rdzv-backend c10d" in script
    assert '"$RDZV_ENDPOINT"' in script and '"$NNODES"' in script
    assert "is_host" in script and "JOB_COMPLETION_INDEX" in script
    # the ConfigMap's files are where the pod is told to look
    (mount,) = [m["mountPath"] for m in trainer["volumeMounts"] if m["name"] == "config"]
    assert env["TOOLGYM_ENVS"] == f"{mount}/env.yaml"
    assert f"--config {mount}/train.yaml" in script
    assert (
        env_value(trainer, "TOOL_BEARER")["valueFrom"]["secretKeyRef"]["name"]
        == "toolgym-tool-bearer"
    )
    # the init container's wait script is valid Python
    (init,) = pod["initContainers"]
    compile(init["command"][2], "wait-for-servers", "exec")


def test_the_secret_is_a_template_kept_out_of_the_applied_directory() -> None:
    secret = yaml.safe_load((K8S / "secret-template" / "tool-bearer.yaml").read_text())
    assert secret["kind"] == "Secret"
    assert set(secret["stringData"]) == {"TOOL_BEARER"}
    assert "REPLACE" in secret["stringData"]["TOOL_BEARER"]
    # `kubectl apply -f deploy/k8s/` is not recursive: no Secret there to overwrite the real one
    for path in K8S.glob("*.yaml"):
        kinds = {d["kind"] for d in yaml.safe_load_all(path.read_text()) if d}
        assert "Secret" not in kinds, path
