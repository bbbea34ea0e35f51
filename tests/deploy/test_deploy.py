"""The deployment files pass their linters and keep the properties an operator relies on.

The Dockerfile passes hadolint; every kustomize overlay renders (``kubectl kustomize``) and, like the plain
``deploy/kubernetes/sidecar.yaml``, passes ``kubernetes-validate --strict`` for Kubernetes 1.32; the rendered
objects are hardened for Pod Security "restricted", probe the right endpoints, mount the config as a directory,
take secrets by reference, and carry a PodDisruptionBudget and NetworkPolicy; every config they ship parses.
The container itself is built and run by ``make test-image`` (tests/deploy/image/).
"""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from proxy.config.load import parse_settings
from proxy.config.model import Settings
from support import REPO

KUBERNETES = REPO / "deploy" / "kubernetes"
OVERLAYS = sorted(p.name for p in (KUBERNETES / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
PLAIN = KUBERNETES / "sidecar.yaml"
SIDECAR_PORT, METRICS_PORT, SIDECAR_UID = 4180, 9180, 10001
VENV_BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    """A command from the venv (``make install``), else from PATH; a missing one fails the test."""
    path = VENV_BIN / name
    found = str(path) if path.exists() else shutil.which(name)
    assert found, f"{name} is not installed: run make install"
    return found


def run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


# --------------------------------------------------------------------------------------------------
# Rendering


def render(directory: Path) -> list[dict[str, Any]]:
    done = run(tool("kubectl"), "kustomize", str(directory))
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, list[dict[str, Any]]]]:
    """Every overlay and the plain example: name -> (a file holding the YAML, its objects)."""
    out_dir = tmp_path_factory.mktemp("rendered")
    result = {"sidecar.yaml": (PLAIN, [d for d in yaml.safe_load_all(PLAIN.read_text()) if d])}
    for name in OVERLAYS:
        docs = render(KUBERNETES / "overlays" / name)
        path = out_dir / f"{name}.yaml"
        path.write_text(yaml.safe_dump_all(docs))
        result[f"overlays/{name}"] = (path, docs)
    return result


SETUPS = ["sidecar.yaml", *(f"overlays/{name}" for name in OVERLAYS)]


def objects(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def workloads(docs: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    yield from (d for d in docs if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"))


def sidecar_workload(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The one Deployment running sso-sidecar, and that container."""
    found = [
        (d, c)
        for d in objects(docs, "Deployment")
        for c in d["spec"]["template"]["spec"]["containers"]
        if c["name"] == "sso-sidecar"
    ]
    assert len(found) == 1, f"expected one Deployment with an sso-sidecar container, found {len(found)}"
    return found[0]


def config_of(docs: list[dict[str, Any]], deployment: dict[str, Any], container: dict[str, Any]) -> tuple[str, str]:
    """The config file the sidecar is started with (``--config``), read through its volume mount:
    (the ConfigMap's name, the file's text)."""
    path = PurePosixPath(container["args"][container["args"].index("--config") + 1])
    mount = next(m for m in container["volumeMounts"] if PurePosixPath(m["mountPath"]) == path.parent)
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    name = volume["configMap"]["name"]
    configmap = next(d for d in objects(docs, "ConfigMap") if d["metadata"]["name"] == name)
    return name, configmap["data"][path.name]


def secret_files(config_text: str) -> list[PurePosixPath]:
    return [PurePosixPath(p) for p in re.findall(r'_file:\s*"([^"]+)"', config_text)]


def parse_with_temp_secrets(config_text: str, tmp_path: Path) -> Settings:
    """The config parsed by the sidecar's own loader, every ``*_file`` pointing at a fresh random secret."""
    for path in secret_files(config_text):
        local = tmp_path / path.name
        local.write_text(secrets.token_urlsafe(32) + "\n")
        config_text = config_text.replace(f'"{path}"', f'"{local}"')
    return parse_settings(config_text, {})


def kubectl_secret_keys(text: str) -> set[str]:
    """The keys a ``kubectl create secret generic ... --from-literal=KEY=...`` command in ``text`` creates."""
    return set(re.findall(r"--from-literal=([a-z0-9-]+)=", text))


# --------------------------------------------------------------------------------------------------
# Dockerfile


def test_hadolint_passes_the_dockerfile():
    done = run(tool("hadolint"), "Dockerfile")
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_would_flag_a_shell_form_healthcheck(tmp_path):
    """The check above can fail: the old shell-form HEALTHCHECK is DL3025."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:12.5\nUSER 10001\nHEALTHCHECK CMD curl -f http://127.0.0.1/ || exit 1\n")
    done = run(tool("hadolint"), str(bad))
    assert done.returncode != 0 and "DL3025" in done.stdout


def test_the_dockerfile_takes_its_base_as_a_build_arg_and_runs_as_uid_10001():
    text = (REPO / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert lines[0] == "ARG BASE=python:3.11-slim-bookworm"
    froms = [line for line in lines if line.startswith("FROM ")]
    assert len(froms) == 2 and all(line.split()[1] == "${BASE}" for line in froms)
    final_stage = lines[lines.index(froms[1]) :]
    assert "USER 10001:10001" in final_stage
    assert not any("pip install" in line or "apt-get" in line for line in final_stage), "build tools in the image"
    assert "python3 -m venv /opt/venv" in text
    ignore = [line for line in (REPO / ".dockerignore").read_text().splitlines() if not line.startswith("#")]
    assert ignore[0] == "*", "the build context is an allow-list"


# --------------------------------------------------------------------------------------------------
# Manifests: schema


def test_every_overlay_and_the_plain_example_pass_strict_schema_validation(rendered):
    paths = [str(path) for path, _ in rendered.values()]
    done = run(tool("kubernetes-validate"), "--strict", "-k", "1.32.0", "--quiet", *paths)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(rendered) == 1 + len(OVERLAYS) and {"sidecar", "standalone", "redis"} <= set(OVERLAYS)


def test_strict_validation_rejects_an_unknown_field(tmp_path):
    """The check above can fail: a misspelt field is an error, not a warning."""
    docs = [d for d in yaml.safe_load_all(PLAIN.read_text()) if d]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/", "port": 1}}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump_all(docs))
    done = run(tool("kubernetes-validate"), "--strict", "-k", "1.32.0", "--quiet", str(bad))
    assert done.returncode != 0 and "readinesProbe" in done.stdout + done.stderr


def test_the_base_renders_on_its_own():
    docs = render(KUBERNETES / "base")
    assert {d["kind"] for d in docs} == {"ConfigMap", "PodDisruptionBudget", "NetworkPolicy"}


# --------------------------------------------------------------------------------------------------
# Manifests: Pod Security "restricted" and the rest of the hardening


@pytest.mark.parametrize("setup", SETUPS)
def test_every_pod_is_restricted(rendered, setup):
    """Pod Security "restricted": non-root, seccomp RuntimeDefault, no privilege escalation, every capability
    dropped; also a read-only root filesystem, no service account token, and resources on every container."""
    _, docs = rendered[setup]
    pods = [w["spec"]["template"]["spec"] for w in workloads(docs)]
    assert pods
    for pod in pods:
        context = pod.get("securityContext", {})
        assert context.get("runAsNonRoot") is True
        assert context.get("seccompProfile") == {"type": "RuntimeDefault"}
        assert pod.get("automountServiceAccountToken") is False
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
        assert not any("hostPath" in v for v in pod.get("volumes", []))
        for container in pod["containers"] + pod.get("initContainers", []):
            sc = container.get("securityContext", {})
            assert sc.get("allowPrivilegeEscalation") is False, container["name"]
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], container["name"]
            assert not sc.get("capabilities", {}).get("add"), container["name"]
            assert sc.get("readOnlyRootFilesystem") is True, container["name"]
            assert sc.get("privileged") in (None, False) and sc.get("runAsUser", 1) != 0, container["name"]
            assert container["resources"]["requests"] and container["resources"]["limits"]["memory"], container["name"]


@pytest.mark.parametrize("setup", SETUPS)
def test_the_sidecar_runs_as_10001_with_probes_on_its_port(rendered, setup):
    _, docs = rendered[setup]
    deployment, container = sidecar_workload(docs)
    assert container["securityContext"]["runAsUser"] == SIDECAR_UID
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    http_port = ports[container["readinessProbe"]["httpGet"]["port"]]
    assert http_port == SIDECAR_PORT
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert ports[container["livenessProbe"]["httpGet"]["port"]] == SIDECAR_PORT
    # SIGTERM drains for up to 30 s (proxy/cli.py): the grace period must outlast it.
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > 30


@pytest.mark.parametrize("setup", SETUPS)
def test_config_and_secrets_are_mounted_as_directories_and_secrets_by_reference(rendered, setup):
    """No subPath (kubelet never updates one, and live reload needs the ..data swap); the config from a
    ConfigMap; every ``*_file`` in the config lies in a mounted Secret, referenced by name only."""
    _, docs = rendered[setup]
    deployment, container = sidecar_workload(docs)
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    for workload in workloads(docs):
        for c in workload["spec"]["template"]["spec"]["containers"]:
            assert not any("subPath" in m or "subPathExpr" in m for m in c.get("volumeMounts", [])), c["name"]
    _, config_text = config_of(docs, deployment, container)
    mounts = {PurePosixPath(m["mountPath"]): m for m in container["volumeMounts"]}
    files = secret_files(config_text)
    assert files, "the config names no secret files"
    for path in files:
        mount = mounts.get(path.parent)
        assert mount is not None, f"{path} is not in a mounted directory"
        assert mount.get("readOnly") is True
        secret = volumes[mount["name"]].get("secret")
        assert secret and secret["secretName"], f"{path} does not come from a Secret"
    assert not objects(docs, "Secret"), "a Secret is part of the manifests"
    for workload in workloads(docs):
        for c in workload["spec"]["template"]["spec"]["containers"]:
            for env in c.get("env", []):
                assert "value" not in env or not re.search(r"(?i)password|secret|token", env["name"]), env


@pytest.mark.parametrize("setup", SETUPS)
def test_the_config_parses_and_matches_the_manifests(rendered, setup, tmp_path):
    """The config each setup ships is valid for the sidecar as it is now, listens where the Service and
    probes look, serves metrics where the scrape annotations point, and trusts no wide network."""
    _, docs = rendered[setup]
    deployment, container = sidecar_workload(docs)
    _, config_text = config_of(docs, deployment, container)
    settings = parse_with_temp_secrets(config_text, tmp_path)
    assert settings.listen_port == SIDECAR_PORT
    assert settings.metrics_listen is not None and settings.metrics_listen[1] == METRICS_PORT
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == str(METRICS_PORT)
    for network in settings.trusted_proxies:
        assert network.prefixlen >= (24 if network.version == 4 else 64), f"trusted_proxies trusts {network}"
    replicas = deployment["spec"]["replicas"]
    if replicas > 1 or settings.workers > 1:
        assert settings.session.store == "redis", "several processes need the shared session store"


def test_the_kubernetes_examples_trust_no_pod_network_wholesale():
    """The issue's finding: 10.0.0.0/8 let any pod forge X-Forwarded-For."""
    for path in KUBERNETES.rglob("*.yaml"):
        assert "10.0.0.0/8" not in re.sub(r"#.*", "", path.read_text()), path


@pytest.mark.parametrize("setup", SETUPS)
def test_two_replicas_and_a_disruption_budget_that_keeps_one(rendered, setup):
    _, docs = rendered[setup]
    deployment, _ = sidecar_workload(docs)
    assert deployment["spec"]["replicas"] == 2
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    budgets = [
        b
        for b in objects(docs, "PodDisruptionBudget")
        if b["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    ]
    assert len(budgets) == 1
    assert budgets[0]["spec"]["minAvailable"] == 1


@pytest.mark.parametrize("setup", SETUPS)
def test_the_network_policy_opens_only_the_sidecar_port_and_metrics_to_monitoring(rendered, setup):
    _, docs = rendered[setup]
    deployment, _ = sidecar_workload(docs)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    policies = [
        p
        for p in objects(docs, "NetworkPolicy")
        if p["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    ]
    assert len(policies) == 1
    policy = policies[0]["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    opened: dict[int, list[Any]] = {}
    for rule in policy["ingress"]:
        assert rule.get("ports"), "a rule without ports opens every port"
        for port in rule["ports"]:
            opened[port["port"]] = rule.get("from", [])
    assert set(opened) == {SIDECAR_PORT, METRICS_PORT}
    monitoring = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    assert opened[METRICS_PORT] == [monitoring]


def test_standalone_lets_only_the_sidecar_reach_the_console(rendered):
    _, docs = rendered["overlays/standalone"]
    deployment, _ = sidecar_workload(docs)
    lockdown = next(p for p in objects(docs, "NetworkPolicy") if p["metadata"]["name"].startswith("console"))
    (rule,) = lockdown["spec"]["ingress"]
    (source,) = rule["from"]
    assert source["podSelector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_the_redis_overlay_runs_redis_with_an_append_only_file_on_a_volume(rendered, tmp_path):
    _, docs = rendered["overlays/redis"]
    (redis,) = objects(docs, "StatefulSet")
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    assert {"name": claim["metadata"]["name"], "mountPath": "/data"} in container["volumeMounts"]
    password = next(e for e in container["env"] if e["name"] == "REDIS_PASSWORD")
    assert password["valueFrom"]["secretKeyRef"] == {"name": "sso-sidecar", "key": "redis-password"}
    deployment, sidecar = sidecar_workload(docs)
    config_text = config_of(docs, deployment, sidecar)[1]
    assert parse_with_temp_secrets(config_text, tmp_path).session.store == "redis"
    (service,) = [s for s in objects(docs, "Service") if s["metadata"]["name"] == redis["spec"]["serviceName"]]
    assert yaml.safe_load(config_text)["session"]["redis_url"] == f"redis://{service['metadata']['name']}:6379/0"
    policy = next(p for p in objects(docs, "NetworkPolicy") if p["metadata"]["name"] == redis["metadata"]["name"])
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"][0]["podSelector"]["matchLabels"].items() <= (
        deployment["spec"]["template"]["metadata"]["labels"].items()
    )


# --------------------------------------------------------------------------------------------------
# Secrets: never committed, always explained


def test_no_secret_with_values_is_committed_under_deploy():
    checked = 0
    for path in sorted((REPO / "deploy").rglob("*")):
        if "node_modules" in path.parts or path.suffix not in (".yaml", ".yml", ".json"):
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            checked += 1
            if isinstance(doc, dict) and doc.get("kind") == "Secret":
                assert not doc.get("data") and not doc.get("stringData"), f"{path} holds a Secret with values"
    assert checked > 10


@pytest.mark.parametrize("setup", SETUPS)
def test_the_documented_kubectl_command_creates_every_secret_the_config_reads(rendered, setup):
    _, docs = rendered[setup]
    deployment, container = sidecar_workload(docs)
    needed = {p.name for p in secret_files(config_of(docs, deployment, container)[1])}
    for source in (PLAIN.read_text(), (REPO / "README.md").read_text()):
        assert needed <= kubectl_secret_keys(source)
    secret_names = {
        v["secret"]["secretName"] for v in deployment["spec"]["template"]["spec"]["volumes"] if "secret" in v
    }
    assert secret_names == {"sso-sidecar"}
    assert "kubectl create secret generic sso-sidecar" in (REPO / "README.md").read_text()


def test_the_documented_secrets_are_generated_not_written_in():
    """Random values come from openssl; nothing a reader could paste as it is."""
    for text in (PLAIN.read_text(), (REPO / "README.md").read_text()):
        for key in ("cookie-secret", "break-glass-token"):
            assert re.search(rf'--from-literal={key}="\$\(openssl rand -base64 (24|32)\)"', text), key
