"""deploy/helm/bastion: ``helm lint --strict`` and ``helm template`` (helm from deploy/get-helm.sh,
which .ci/run runs), the rendered objects validated against the Kubernetes 1.30 schemas
(kubernetes-validate, strict), and the properties the chart promises."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from audit.checkpoint import generate_signing_key, load_signing_key
from audit.kek import generate_kek_file, kek_from_file
from node.config import ServerConfig, decode_config

from .conftest import DEPLOY, ROOT, require_tool

CHART = DEPLOY / "helm" / "bastion"
K8S_VERSION = "1.30.0"


def _helm() -> str:
    return require_tool("helm", ROOT / ".tools" / "helm")


def _render(*sets: str) -> dict[str, dict[str, Any]]:
    """``helm template`` of the chart: {kind: object} (one object of each kind but PVCs, keyed by name)."""
    args = [_helm(), "template", "t", str(CHART)]
    for s in sets:
        args += ["--set", s]
    run = subprocess.run(args, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    out: dict[str, dict[str, Any]] = {}
    for doc in yaml.safe_load_all(run.stdout):
        if doc:
            key = doc["metadata"]["name"] if doc["kind"] == "PersistentVolumeClaim" else doc["kind"]
            assert key not in out
            out[key] = doc
    return out


def test_chart_metadata_and_values_parse() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "bastion" and chart["type"] == "application"
    for key in ("version", "appVersion", "description", "kubeVersion"):
        assert chart[key]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert set(schema["required"]) <= set(values)


def test_the_default_node_toml_is_one_the_node_accepts() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    config = decode_config(values["config"], source="values.yaml config")
    assert (config.server.host, config.server.port) == ("0.0.0.0", values["containerPort"])
    assert config.audit is not None and config.audit.kek_file == "/etc/bastion/secrets/audit-kek"
    assert config.audit.checkpoint_path == "/var/lib/bastion-checkpoints/node"
    assert config.data_dir == "/var/lib/bastion/node"


def _as_node_user(setpriv: str, code: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [setpriv, "--reuid=10001", "--regid=10001", "--groups=10001", sys.executable, "-c", code, *args],
        env=env,
        capture_output=True,
        text=True,
    )


def test_the_nodes_private_folders_sit_inside_fsgroup_volumes(open_tmp: Path) -> None:
    """Under fsGroup a volume's root is root:10001 with mode 2770, which the node refuses as its
    data_dir or checkpoint_path (group access). The chart's config names folders one level in, which
    the node creates 0700 itself: checked with the audit log's own private_dir, run as uid 10001."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv to act as uid 10001")
    objects = _render()
    config = decode_config(objects["ConfigMap"]["data"]["node.toml"])
    assert config.audit is not None
    container = objects["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    code = "import sys; from audit import private_dir; private_dir(sys.argv[1])"
    for volume, folder in (("data", config.data_dir), ("checkpoints", config.audit.checkpoint_path)):
        root = open_tmp / volume
        root.mkdir()
        os.chown(root, 0, 10001)
        root.chmod(0o2770)  # what the kubelet leaves under fsGroup
        assert Path(folder).parent == Path(mounts[volume])  # one level into the volume
        refused = _as_node_user(setpriv, code, str(root))
        assert refused.returncode != 0 and "lets group or others in" in refused.stderr
        inside = root / Path(folder).name
        made = _as_node_user(setpriv, code, str(inside))
        assert made.returncode == 0, made.stderr
        # 02700: the folder inherits the root's setgid bit, which gives nobody access
        assert stat.S_IMODE(inside.stat().st_mode) & 0o777 == 0o700 and inside.stat().st_uid == 10001


def test_helm_lint_strict_passes() -> None:
    run = subprocess.run([_helm(), "lint", "--strict", str(CHART)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_values_schema_rejects_a_bad_value() -> None:
    run = subprocess.run(
        [_helm(), "template", "t", str(CHART), "--set", "image.digest=latest"], capture_output=True, text=True
    )
    assert run.returncode != 0 and "digest" in run.stderr


def test_rendered_objects_match_the_kubernetes_schemas() -> None:
    objects = _render("serviceMonitor.enabled=true", "secrets.files.audit-kek=c2VjcmV0")
    pvcs = {"t-bastion-data", "t-bastion-models", "t-bastion-checkpoints"}
    assert {"Deployment", "Service", "ConfigMap", "Secret"} | pvcs <= set(objects)
    for _key, obj in objects.items():
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: checked in the ServiceMonitor test
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_the_validator_does_reject_a_wrong_field() -> None:
    deployment = _render()["Deployment"]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/x"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_the_deployment_requests_a_gpu_probes_readyz_and_drains_on_stop() -> None:
    objects = _render()
    spec = objects["Deployment"]["spec"]
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"  # one audit log writer
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "10"]
    # preStop, the node's drain timeout (its default), then its own stop
    assert pod["terminationGracePeriodSeconds"] >= 10 + ServerConfig().drain_timeout_s + 30
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["args"] == ["serve", "--config", "/etc/bastion/node.toml"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == "t-bastion-data"
    assert volumes["models"]["persistentVolumeClaim"] == {"claimName": "t-bastion-models", "readOnly": True}
    assert {m["name"]: m["mountPath"] for m in container["volumeMounts"]}["models"] == "/models"
    assert volumes["checkpoints"]["persistentVolumeClaim"]["claimName"] == "t-bastion-checkpoints"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/etc/bastion/secrets"]["readOnly"] is True
    assert mounts["/etc/bastion/node.toml"]["readOnly"] is True
    assert mounts["/var/lib/bastion-checkpoints"]["name"] == "checkpoints"
    node_toml = objects["ConfigMap"]["data"]["node.toml"]
    assert 'checkpoint_path = "/var/lib/bastion-checkpoints/node"' in node_toml
    assert 'kek_file = "/etc/bastion/secrets/audit-kek"' in node_toml


def test_secrets_come_from_an_existing_secret_when_named() -> None:
    objects = _render("secrets.existingSecret=bastion-keys")
    assert "Secret" not in objects
    volumes = {v["name"]: v for v in objects["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    assert volumes["secret-files"]["secret"]["secretName"] == "bastion-keys"
    assert volumes["secret-files"]["secret"]["optional"] is False


def test_the_service_monitor_scrapes_metrics_from_the_service() -> None:
    objects = _render(
        "serviceMonitor.enabled=true",
        "serviceMonitor.bearerTokenSecret.name=bastion-metrics",
        "serviceMonitor.bearerTokenSecret.key=token",
    )
    monitor, service = objects["ServiceMonitor"], objects["Service"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"] and endpoint["path"] == "/metrics"
    assert endpoint["authorization"]["credentials"] == {"name": "bastion-metrics", "key": "token"}
    assert "ServiceMonitor" not in _render()  # off by default: it needs the operator's CRDs


def test_pvcs_outlive_an_uninstall_and_can_be_existing_claims() -> None:
    objects = _render("persistence.models.existingClaim=weights")
    assert "t-bastion-models" not in objects
    assert objects["t-bastion-data"]["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    volumes = {v["name"]: v for v in objects["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == "weights"


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A temporary folder that uid 10001 can reach (pytest's own tmp_path root is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="bastion-helm-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def test_the_init_container_hands_secret_files_to_the_node_user_as_0600(open_tmp: Path) -> None:
    """Runs the chart's own init command, as uid 10001 with group 10001 (fsGroup), on a folder laid out
    like a Secret volume (root-owned files, mode 0440, behind ..data links); the audit log must then
    accept the copies as key files."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv to act as uid 10001")
    (init,) = _render()["Deployment"]["spec"]["template"]["spec"]["initContainers"]
    source, target = open_tmp / "secret-volume", open_tmp / "secrets"
    data = source / "..2026_01_01"
    data.mkdir(parents=True)
    generate_kek_file(data / "audit-kek")
    generate_signing_key(data / "audit-signing-key")
    (source / "..data").symlink_to(data.name)
    for name in ("audit-kek", "audit-signing-key"):
        (data / name).chmod(0o440)
        os.chown(data / name, 0, 10001)
        (source / name).symlink_to(f"..data/{name}")
    target.mkdir()
    target.chmod(0o1777)  # an emptyDir
    for d in (source, data):
        d.chmod(0o755)
    command = [
        part.replace("/run/bastion-secrets", str(source)).replace("/etc/bastion/secrets", str(target))
        for part in init["command"]
    ]
    run = subprocess.run(
        [setpriv, "--reuid=10001", "--regid=10001", "--groups=10001", *command],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in target.iterdir()) == ["audit-kek", "audit-signing-key"]
    for copy in target.iterdir():
        info = copy.stat()
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (10001, 0o600)
    kek_from_file(target / "audit-kek")  # both refuse a key file that others can read
    load_signing_key(target / "audit-signing-key")
    # a file it cannot read fails the init container, so the pod does not start without its keys
    (data / "audit-kek").chmod(0o400)
    (target / "audit-kek").unlink()
    run = subprocess.run(
        [setpriv, "--reuid=10001", "--regid=10001", "--groups=10001", *command],
        capture_output=True,
        text=True,
    )
    assert run.returncode != 0 and "audit-kek" in run.stderr
