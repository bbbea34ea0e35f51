"""``podman kube play`` runs a CI variant of the Kubernetes sidecar overlay: the console and the sidecar in one
pod, the config from the ConfigMap, mounted as the overlay mounts it, and a user signs in through it.

The CI variant is ``kubectl kustomize deploy/kubernetes/overlays/sidecar`` with only what a machine without a
cluster or a registry needs changed: the images are the test image (the sample console runs in it too, from a
ConfigMap), the pod uses the host's network with one replica (the dev identity provider and Redis listen on
loopback), the config points at them, and the secrets, which the repository never holds, are random values
made here. Three things of podman 4.3 (Debian 12's) are worked around, each where it is done: it publishes
every containerPort, it does not decode a Secret's data when it mounts it, and it keeps a ConfigMap's volume,
named after the ConfigMap, from one run to the next.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from support import REPO
from support.containers import podman, wait_until
from support.idp import DevIdP, login
from support.procs import LOOPBACK, free_port, http_status
from support.redis_server import RedisServer

OVERLAY = REPO / "deploy" / "kubernetes" / "overlays" / "sidecar"
CONSOLE_SCRIPT = REPO / "deploy" / "demo" / "console.py"


def render_overlay() -> list[dict[str, Any]]:
    done = subprocess.run(["kubectl", "kustomize", str(OVERLAY)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def ci_variant(
    docs: list[dict[str, Any]],
    *,
    image: str,
    idp: DevIdP,
    redis_url: str,
    client: Any,
    ports: dict[str, int],
    secrets_dir: Path,
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for doc in docs:
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind == "ConfigMap" and name == "sso-sidecar":
            config = yaml.safe_load(doc["data"]["config.yaml"])
            config.update(
                listen=f"{LOOPBACK}:{ports['sidecar']}",
                public_url=f"http://{LOOPBACK}:{ports['sidecar']}",
                upstream=f"http://{LOOPBACK}:{ports['console']}",
                metrics_listen=f"{LOOPBACK}:{ports['metrics']}",
            )
            config["sso"].update(issuer_url=idp.issuer, client_id=client.client_id)
            config["session"]["redis_url"] = redis_url
            del config["session"]["redis_password_file"]  # the test Redis has no password
            doc["data"]["config.yaml"] = yaml.safe_dump(config, sort_keys=False)
        elif kind == "Deployment":
            doc["spec"]["replicas"] = 1
            pod = doc["spec"]["template"]["spec"]
            pod["hostNetwork"] = True
            for container in pod["containers"]:
                container["image"] = image
                # podman 4.3 publishes every containerPort on the host, which host networking refuses; the
                # probes then name the port by number (kube play turns them into healthchecks).
                named = {p["name"]: p["containerPort"] for p in container.pop("ports", [])}
                for probe in ("readinessProbe", "livenessProbe"):
                    if probe in container:
                        get = container[probe]["httpGet"]
                        get["port"] = named.get(get["port"], get["port"])
                if container["name"] == "console":
                    container["command"] = ["python3", "/opt/console/console.py"]
                    container["args"] = ["--host", LOOPBACK, "--port", str(ports["console"])]
                    container["volumeMounts"] = [{"name": "console-script", "mountPath": "/opt/console"}]
            pod["volumes"].append({"name": "console-script", "configMap": {"name": "console-script"}})
            for volume in pod["volumes"]:
                if "secret" in volume:
                    # podman 4.3 mounts a Secret's data still base64-encoded: the same files from a directory.
                    assert volume.pop("secret")["secretName"] == "sso-sidecar"
                    volume["hostPath"] = {"path": str(secrets_dir), "type": "Directory"}
        out.append(doc)
    out.append(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "console-script"},
            "data": {"console.py": CONSOLE_SCRIPT.read_text()},
        }
    )
    return out


@pytest.fixture
def played(image: str, idp: DevIdP, redis_clean: RedisServer, tmp_path: Path) -> Iterator[dict[str, int]]:
    """The CI variant, played; yields the loopback ports of the sidecar, the console and the metrics."""
    ports = {"sidecar": free_port(), "console": free_port(), "metrics": free_port()}
    client = idp.register_client(f"http://{LOOPBACK}:{ports['sidecar']}")
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir(mode=0o755)
    values = {
        "client-secret": client.client_secret,
        "cookie-secret": secrets.token_urlsafe(32),
        "break-glass-token": secrets.token_urlsafe(24),
        "redis-password": secrets.token_urlsafe(24),
    }
    for key, value in values.items():
        (secrets_dir / key).write_text(value + "\n")
        (secrets_dir / key).chmod(0o644)  # readable by the sidecar's uid 10001
    docs = ci_variant(
        render_overlay(),
        image=image,
        idp=idp,
        redis_url=redis_clean.url,
        client=client,
        ports=ports,
        secrets_dir=secrets_dir,
    )
    manifest = tmp_path / "ci-variant.yaml"
    manifest.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    configmap_volumes = [d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"]
    # A pod left by an interrupted run would block this one; and podman 4.3 keeps a ConfigMap's volume after
    # --down, and would mount an old run's files: remove both first.
    podman("kube", "play", "--down", str(manifest), check=False, timeout=120)
    podman("volume", "rm", "--force", *configmap_volumes, check=False)
    try:
        podman("kube", "play", str(manifest), timeout=180)
        yield ports
    finally:
        podman("kube", "play", "--down", str(manifest), check=False, timeout=120)
        podman("volume", "rm", "--force", *configmap_volumes, check=False)


def pod_containers() -> dict[str, dict[str, Any]]:
    """The pod's containers by name (kube play names a Deployment's pods console-pod-0, ...)."""
    listed = json.loads(podman("ps", "--all", "--format", "json", "--filter", "name=^console-pod-").stdout or "[]")
    return {c["Names"][0]: c for c in listed}


def pod_logs() -> str:
    return "\n".join(f"--- {name}\n{podman('logs', name, check=False).stderr[-3000:]}" for name in pod_containers())


async def test_kube_play_runs_console_and_sidecar_as_one_pod_and_serves_a_signed_in_request(played, http):
    ports = played
    sidecar_url = f"http://{LOOPBACK}:{ports['sidecar']}"
    wait_until(lambda: http_status(sidecar_url + "/readyz") == 200, "ready pod", 60.0, pod_logs)

    running = pod_containers()
    assert sorted(running) == ["console-pod-0-console", "console-pod-0-sso-sidecar"], running
    assert all(c["State"] == "running" for c in running.values()), running
    sidecar_name = "console-pod-0-sso-sidecar"
    info = json.loads(podman("inspect", sidecar_name).stdout)[0]
    assert info["HostConfig"]["ReadonlyRootfs"] is True
    assert info["Config"]["User"].split(":")[0] == "10001"
    assert podman("exec", sidecar_name, "id", "-u").stdout.strip() == "10001"

    client = http()
    resp = await login(client, sidecar_url + "/api/whoami?through=pod", "alice.smith")
    assert resp.status == 200, await resp.text()
    seen = json.loads(await resp.text())
    assert seen["raw_path"] == "/api/whoami?through=pod"
    assert seen["headers"]["X-Forwarded-User"] == "alice.smith"
    # The console of the pod answered, not the shared test console: it listens on the pod's port.
    assert http_status(f"http://{LOOPBACK}:{ports['console']}/api/whoami") == 200
    # Metrics on their own port, as the scrape annotations say.
    assert http_status(f"http://{LOOPBACK}:{ports['metrics']}/metrics") == 200
