"""The Helm chart (helm/meshgate): lint, schema-valid Kubernetes objects, production defaults.

Every value set of ``helm/meshgate/ci/`` is rendered with ``helm template``, linted with
``helm lint --strict`` and validated with kubernetes-validate (strict: unknown fields are
errors) against the oldest Kubernetes the chart supports (its kubeVersion floor, 1.29) and
the newest one kubernetes-validate ships. prometheus-operator objects (ServiceMonitor,
PrometheusRule) are custom resources with no schema there: they are skipped by the
validator and checked here by hand, their alert rules by ``promtool`` when it is installed.
"""

from __future__ import annotations

import base64
import copy
import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from meshgate.config import load_config_text
from meshgate.tls import make_ca, make_region_cert, write_pair
from tests.helm._helm import CHART, CI_VALUES, NAMESPACE, one, render, render_error, run_helm

VALUE_SETS = {
    "default": (CI_VALUES / "default-values.yaml",),
    "hpa": (CI_VALUES / "hpa-values.yaml",),
    "tls": (CI_VALUES / "tls-values.yaml",),
    "tls-inline": (CI_VALUES / "tls-inline-values.yaml",),
    "monitoring": (CI_VALUES / "monitoring-values.yaml",),
    "nats-sidecar": (CI_VALUES / "nats-sidecar-values.yaml",),
    "replicator": (CI_VALUES / "replicator-values.yaml",),
}
DEFAULT = VALUE_SETS["default"]
# The chart's kubeVersion floor, and the Kubernetes of the helm the tests use (v4.1, client 1.35).
K8S_VERSIONS = ("1.29.0", "1.35.0")
# Custom resources: kubernetes-validate has no schema for them.
CRD_GROUPS = ("monitoring.coreos.com/",)
FULLNAME = "meshgate-us-west"

_rendered: dict[str, list[dict[str, Any]]] = {}


def rendered(name: str) -> list[dict[str, Any]]:
    if name not in _rendered:
        _rendered[name] = render(VALUE_SETS[name])
    return _rendered[name]


def values_of(name: str) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for f in VALUE_SETS[name]:
        merged.update(yaml.safe_load(f.read_text()))
    return merged


def pod_spec(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The gateway Deployment's pod (the replicator Deployment, when on, is another one)."""
    spec: dict[str, Any] = one(objects, "Deployment", FULLNAME)["spec"]["template"]["spec"]
    return spec


def gateway_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    gateways: list[dict[str, Any]] = [c for c in pod_spec(objects)["containers"] if c["name"] == "gateway"]
    assert len(gateways) == 1
    return gateways[0]


# --- every value set ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def kv() -> ModuleType:
    """kubernetes-validate (a dev dependency)."""
    module: ModuleType = pytest.importorskip(
        "kubernetes_validate", reason="pip install kubernetes-validate (dev extras)"
    )
    return module


def test_every_ci_values_file_is_covered() -> None:
    assert {p for ps in VALUE_SETS.values() for p in ps} == set(CI_VALUES.glob("*.yaml"))


@pytest.mark.parametrize("name", VALUE_SETS)
def test_helm_lint_strict(name: str) -> None:
    args: list[str | Path] = ["lint", "--strict", CHART, "--namespace", NAMESPACE]
    for f in VALUE_SETS[name]:
        args += ["-f", f]
    result = run_helm(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", VALUE_SETS)
def test_objects_validate_against_kubernetes_schemas(kv: ModuleType, name: str, version: str) -> None:
    validated, skipped = [], []
    for obj in rendered(name):
        label = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["apiVersion"].startswith(CRD_GROUPS):
            skipped.append(obj["kind"])  # no schema in kubernetes-validate: checked below by hand
            continue
        try:
            kv.validate(obj, version, strict=True)
        except kv.ValidationError as exc:
            pytest.fail(f"{name}: {label} is invalid for Kubernetes {version}: {exc.message} at {list(exc.path)}")
        validated.append(obj["kind"])
    assert "Deployment" in validated
    assert set(skipped) <= {"ServiceMonitor", "PrometheusRule"}


def test_validator_rejects_unknown_fields(kv: ModuleType) -> None:
    """The strict validation above bites: a misspelt field is an error."""
    deployment = one(rendered("default"), "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, K8S_VERSIONS[0], strict=True)


def pod_environment(objects: list[dict[str, Any]], values: dict[str, Any], files: Path) -> dict[str, str]:
    """The gateway container's environment as the pod would have it: the rendered env, the token
    Secret's keys (envFrom), and the TLS Secret's files, made here with Meshgate's own PKI code."""
    gateway = gateway_container(objects)
    env = {e["name"]: e["value"] for e in gateway["env"] if "value" in e}
    tokens = values.get("auth", {}).get("tokens") or {}
    for source in gateway.get("envFrom", []):
        if values.get("auth", {}).get("existingSecret") == source["secretRef"]["name"]:
            # A Secret the chart does not make: its keys are the variables the mesh file reads.
            tokens = {var: f"{var.lower()}-0123456789abcdef" for var in token_variables(values)}
    env.update(tokens)
    replication = values.get("replication") or {}
    for entry in gateway["env"]:
        ref = entry.get("valueFrom", {}).get("secretKeyRef")
        if ref is not None:
            # The chart's own Secret holds the inline secret; a Secret it does not make, any valid one.
            env[entry["name"]] = replication.get("secret") or "replication-0123456789abcdef"
    if "MESHGATE_TLS_CA_FILE" in env:
        ca = make_ca()
        mount = files / "tls"
        write_pair(ca, mount / "ca.crt", files / "ca.key")
        write_pair(make_region_cert(ca, values["region"]), mount / "tls.crt", mount / "tls.key")
        # The chart's paths are files of its Secret volume; here the same files live under `files`.
        for name, file in (("MESHGATE_TLS_CA_FILE", "ca.crt"), ("MESHGATE_TLS_CERT_FILE", "tls.crt")):
            assert env[name] == f"{values['tls'].get('mountPath', '/var/run/secrets/meshgate/tls')}/{file}"
        env["MESHGATE_TLS_CA_FILE"] = str(mount / "ca.crt")
        env["MESHGATE_TLS_CERT_FILE"] = str(mount / "tls.crt")
        env["MESHGATE_TLS_KEY_FILE"] = str(mount / "tls.key")
    return env


def token_variables(values: dict[str, Any]) -> list[str]:
    mesh = yaml.safe_load(values["config"]["mesh"])["event_mesh"]
    return [t["token"].strip("${}") for t in mesh.get("security", {}).get("tokens", [])]


@pytest.mark.parametrize("name", VALUE_SETS)
def test_example_mesh_files_load_in_the_pod(name: str, tmp_path: Path) -> None:
    """The mesh files of the value sets load as `meshgate serve --region` loads them in the pod:
    with the pod's environment (TLS paths, tokens) and only its own region's certificate."""
    values = values_of(name)
    env = pod_environment(rendered(name), values, tmp_path)
    config = load_config_text(values["config"]["mesh"], source=f"{name}:config.mesh", env=env, region=values["region"])
    assert values["region"] in [r.name for r in config.regions]
    if values.get("tls", {}).get("enabled"):
        assert config.security.ca is not None
        tls = config.region(values["region"]).tls
        assert tls is not None and tls.cert == tmp_path / "tls" / "tls.crt"
    if values.get("auth", {}).get("enabled"):
        assert {t.variable for t in config.security.tokens} == set(token_variables(values))


@pytest.mark.parametrize("name", VALUE_SETS)
def test_production_defaults_hold_in_every_value_set(name: str) -> None:
    objects = rendered(name)
    spec = pod_spec(objects)
    gateway = gateway_container(objects)
    # HTTP probes on the metrics address (no client certificate needed with TLS on): ready once
    # serving with the broker connected, alive while the event loop runs.
    ports = {p["name"]: p["containerPort"] for p in gateway["ports"]}
    assert ports["metrics"] == metrics_port_of(values_of(name))
    assert gateway["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    # Resources.
    assert gateway["resources"]["requests"]["cpu"]
    assert gateway["resources"]["requests"]["memory"]
    assert gateway["resources"]["limits"]["memory"]
    # Non-root, read-only, no privileges, in every container of the pod.
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    for container in spec["containers"] + spec.get("initContainers", []):
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True, container["name"]
        assert sc["runAsNonRoot"] is True, container["name"]
        assert sc["allowPrivilegeEscalation"] is False, container["name"]
        assert sc["capabilities"]["drop"] == ["ALL"], container["name"]
        assert container["resources"]["limits"]["memory"], container["name"]
    # Writable emptyDirs for /tmp and the data dir, the mesh file mounted as a directory.
    mounts = {m["mountPath"]: m for m in gateway["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    assert "emptyDir" in volumes[mounts["/var/lib/meshgate"]["name"]]
    assert "subPath" not in mounts["/etc/meshgate"]  # subPath mounts never see ConfigMap updates
    assert spec["automountServiceAccountToken"] is False


def metrics_port_of(values: dict[str, Any]) -> int:
    mesh = yaml.safe_load(values["config"]["mesh"])["event_mesh"]
    (region,) = [r for r in mesh["regions"] if r["name"] == values["region"]]
    return int(region["metrics"].rsplit(":", 1)[1])


# --- the defaults ------------------------------------------------------------------------


def test_gateway_command() -> None:
    gateway = gateway_container(rendered("default"))
    assert gateway["command"] == ["meshgate", "serve"]
    assert gateway["args"][:6] == ["-c", "/etc/meshgate/mesh.yaml", "--region", "us-west", "--listen", "0.0.0.0:7400"]
    assert gateway["args"][6:8] == ["--data-dir", "/var/lib/meshgate"]
    assert "--no-watch" in gateway["args"]  # without hot reload, SIGHUP only: changes roll the pods
    assert gateway["image"] == "ghcr.io/meshgate/meshgate:0.1.0"


def test_one_replica_rolled_without_downtime_by_default() -> None:
    deployment = one(rendered("default"), "Deployment")
    assert deployment["spec"]["replicas"] == 1
    # The new pod starts first; its links stay standby until the old pod hands their leases back.
    strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    assert deployment["spec"]["strategy"] == strategy
    assert not [o for o in rendered("default") if o["kind"] == "HorizontalPodAutoscaler"]


def test_mesh_file_is_in_the_configmap() -> None:
    configmap = one(rendered("default"), "ConfigMap", FULLNAME)
    assert configmap["data"]["mesh.yaml"].strip() == values_of("default")["config"]["mesh"].strip()
    volume = next(v for v in pod_spec(rendered("default"))["volumes"] if v["name"] == "config")
    assert volume["configMap"] == {"name": FULLNAME, "items": [{"key": "mesh.yaml", "path": "mesh.yaml"}]}


def test_termination_grace_covers_the_drain() -> None:
    spec = pod_spec(rendered("default"))
    gateway = gateway_container(rendered("default"))
    drain = 20  # settings.shutdown_grace: 20s in the mesh file
    pre_stop = int(gateway["lifecycle"]["preStop"]["exec"]["command"][1])
    assert spec["terminationGracePeriodSeconds"] >= drain + pre_stop
    annotations = one(rendered("default"), "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["meshgate.io/drain-seconds"] == str(drain)


def test_termination_grace_default_drain_without_settings() -> None:
    objects = rendered("nats-sidecar")  # its mesh file has no settings: the default 10 s drain
    assert pod_spec(objects)["terminationGracePeriodSeconds"] >= 10 + 5


def test_checksum_annotation_rolls_pods_unless_hot_reload(tmp_path: Path) -> None:
    annotations = one(rendered("default"), "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert len(annotations["checksum/config"]) == 64
    values = values_of("default")
    values["config"]["mesh"] = values["config"]["mesh"].replace("20s", "30s")
    (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
    changed = render((tmp_path / "values.yaml",))
    changed_annotations = one(changed, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert changed_annotations["checksum/config"] != annotations["checksum/config"]

    hot = one(rendered("monitoring"), "Deployment")["spec"]["template"]  # config.hotReload: true
    assert "checksum/config" not in hot["metadata"].get("annotations", {})
    assert "--no-watch" not in gateway_container(rendered("monitoring"))["args"]


def test_services_client_replication_metrics() -> None:
    objects = rendered("default")
    client = one(objects, "Service", FULLNAME)
    replication = one(objects, "Service", f"{FULLNAME}-replication")
    metrics = one(objects, "Service", f"{FULLNAME}-metrics")
    assert client["spec"]["ports"] == [
        {"name": "grpc", "port": 7400, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "grpc"}
    ]
    assert replication["spec"]["ports"][0]["targetPort"] == "grpc"  # one port serves all services
    # The metrics port is this region's `metrics: 0.0.0.0:9464` of the mesh file.
    assert metrics["spec"]["ports"][0]["port"] == 9464
    ports = {p["name"]: p["containerPort"] for p in gateway_container(objects)["ports"]}
    assert ports == {"grpc": 7400, "metrics": 9464}
    for svc in (client, replication, metrics):
        assert svc["spec"]["selector"]["app.kubernetes.io/component"] == "gateway"


def test_pod_disruption_budget_lets_a_single_replica_be_evicted() -> None:
    pdb = one(rendered("default"), "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert "minAvailable" not in pdb["spec"]


def test_metrics_port_follows_the_region_of_the_mesh_file() -> None:
    objects = rendered("hpa")  # region eu-central: metrics: 0.0.0.0:9465
    assert one(objects, "Service", f"{FULLNAME}-metrics")["spec"]["ports"][0]["port"] == 9465


# --- optional parts ----------------------------------------------------------------------


def test_hpa_replaces_replica_count() -> None:
    objects = rendered("hpa")
    hpa = one(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": FULLNAME}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 4)
    assert {m["resource"]["name"] for m in hpa["spec"]["metrics"]} == {"cpu", "memory"}
    assert "replicas" not in one(objects, "Deployment")["spec"]


def test_tls_and_tokens_from_existing_secrets() -> None:
    objects = rendered("tls")
    assert not [o for o in objects if o["kind"] == "Secret"]  # existing secrets: the chart makes none
    spec = pod_spec(objects)
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "meshgate-us-west-tls"
    assert "auth" not in volumes  # tokens are environment variables, not files
    gateway = gateway_container(objects)
    env = {e["name"]: e.get("value") for e in gateway["env"]}
    # The variables the mesh file reads: security.ca and every region's tls.
    assert env["MESHGATE_TLS_CERT_FILE"] == "/var/run/secrets/meshgate/tls/tls.crt"
    assert env["MESHGATE_TLS_KEY_FILE"] == "/var/run/secrets/meshgate/tls/tls.key"
    assert env["MESHGATE_TLS_CA_FILE"] == "/var/run/secrets/meshgate/tls/ca.crt"
    assert "MESHGATE_AUTH_DIR" not in env
    assert gateway["envFrom"] == [{"secretRef": {"name": "meshgate-tokens"}}]
    mounts = {m["name"]: m for m in gateway["volumeMounts"]}
    assert mounts["tls"] == {"name": "tls", "mountPath": "/var/run/secrets/meshgate/tls", "readOnly": True}
    assert "subPath" not in mounts["tls"]  # a rotated Secret is seen in place
    assert set(mounts) == {"config", "tmp", "data", "tls"}
    # The probes cannot show a client certificate: HTTP on the metrics port, not gRPC.
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert "grpc" not in gateway[probe]
        assert gateway[probe]["httpGet"]["port"] == "metrics"
    replication = one(objects, "Service", f"{FULLNAME}-replication")
    assert replication["spec"]["type"] == "LoadBalancer"
    assert replication["spec"]["loadBalancerSourceRanges"] == ["10.20.0.0/16", "10.30.0.0/16"]
    policy = one(objects, "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert policy["spec"]["ingress"][0]["ports"] == [{"port": "grpc", "protocol": "TCP"}]


def test_inline_tls_and_tokens_create_secrets_and_roll_pods(tmp_path: Path) -> None:
    objects = rendered("tls-inline")
    tls = one(objects, "Secret", f"{FULLNAME}-tls")
    assert tls["type"] == "kubernetes.io/tls"
    assert set(tls["data"]) == {"tls.crt", "tls.key", "ca.crt"}
    tokens = one(objects, "Secret", f"{FULLNAME}-tokens")
    assert tokens["type"] == "Opaque"
    assert tokens["data"] == {"ORDERS_TOKEN": base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()}
    gateway = gateway_container(objects)
    assert gateway["envFrom"] == [{"secretRef": {"name": f"{FULLNAME}-tokens"}}]
    annotations = one(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    # A token is read at start: a changed inline token rolls the pods.
    values = values_of("tls-inline")
    values["auth"]["tokens"]["ORDERS_TOKEN"] = "fedcba9876543210fedcba9876543210"
    (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
    changed = one(render((tmp_path / "values.yaml",)), "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert changed["checksum/auth"] != annotations["checksum/auth"]
    assert changed["checksum/tls"] == annotations["checksum/tls"]
    # extraEnvFrom is kept beside the token Secret.
    objects = render(VALUE_SETS["tls-inline"], ("extraEnvFrom[0].secretRef.name=broker-credentials",))
    assert gateway_container(objects)["envFrom"] == [
        {"secretRef": {"name": f"{FULLNAME}-tokens"}},
        {"secretRef": {"name": "broker-credentials"}},
    ]


def test_the_replication_secret_comes_from_a_secret_into_the_variable_the_mesh_file_reads(tmp_path: Path) -> None:
    objects = rendered("default")
    secret = one(objects, "Secret", f"{FULLNAME}-replication")
    assert secret["data"] == {"MESH_REPLICATION_SECRET": base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()}
    (entry,) = [e for e in gateway_container(objects)["env"] if e["name"] == "MESH_REPLICATION_SECRET"]
    assert entry["valueFrom"] == {"secretKeyRef": {"name": f"{FULLNAME}-replication", "key": "MESH_REPLICATION_SECRET"}}
    annotations = one(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    values = values_of("default")
    values["replication"]["secret"] = "fedcba9876543210fedcba9876543210"
    (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
    changed = one(render((tmp_path / "values.yaml",)), "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert changed["checksum/replication"] != annotations["checksum/replication"]
    # A Secret you manage: the chart makes none and reads its key into the mesh file's variable.
    objects = rendered("hpa")
    assert not [o for o in objects if o["kind"] == "Secret"]
    (entry,) = [e for e in gateway_container(objects)["env"] if e["name"] == "MESH_REPLICATION_SECRET"]
    assert entry["valueFrom"]["secretKeyRef"] == {"name": "meshgate-replication", "key": "MESH_REPLICATION_SECRET"}


@pytest.mark.parametrize(
    ("mesh_edit", "sets", "message"),
    [
        (
            ('  security:\n    replication_secret: "${MESH_REPLICATION_SECRET}"\n', ""),
            ("replication.secret=",),
            "the mesh file has several regions and nothing authenticates replication between them",
        ),
        (
            ('replication_secret: "${MESH_REPLICATION_SECRET}"', "replication: anonymous"),
            (),
            "replication.existingSecret/secret is set, but the mesh file has no security.replication_secret",
        ),
        ((), ("replication.existingSecret=s",), "set replication.existingSecret or replication.secret, not both"),
    ],
)
def test_chart_refuses_replication_that_the_gateway_would_refuse(
    mesh_edit: tuple[str, str], sets: tuple[str, ...], message: str, tmp_path: Path
) -> None:
    values = values_of("default")
    if mesh_edit:
        assert mesh_edit[0] in values["config"]["mesh"]
        values["config"]["mesh"] = values["config"]["mesh"].replace(*mesh_edit)
    (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
    assert message in render_error((tmp_path / "values.yaml",), sets)


def test_grpc_probes_without_tls_when_the_region_serves_no_http(tmp_path: Path) -> None:
    values = values_of("default")
    values["config"]["mesh"] = values["config"]["mesh"].replace("metrics: 0.0.0.0:9464", "")
    (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
    gateway = gateway_container(render((tmp_path / "values.yaml",), ("metrics.enabled=false",)))
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert gateway[probe]["grpc"] == {"port": 7400, "service": ""}, probe
    assert [p["name"] for p in gateway["ports"]] == ["grpc"]


def test_probes_use_the_metrics_address_even_without_the_metrics_service() -> None:
    objects = render(DEFAULT, ("metrics.enabled=false",))
    gateway = gateway_container(objects)
    assert {p["name"]: p["containerPort"] for p in gateway["ports"]} == {"grpc": 7400, "metrics": 9464}
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert not [o for o in objects if o["metadata"]["name"].endswith("-metrics")]


def test_notes_tell_the_truth_about_tls_and_tokens() -> None:
    def notes(*args: str | Path) -> str:
        result = run_helm("install", "meshgate-us-west", CHART, "--dry-run=client", *args)
        assert result.returncode == 0, result.stderr
        text: str = result.stdout.split("NOTES:")[1]
        return text

    tls = notes("-f", VALUE_SETS["tls"][0])
    assert "does not use them yet" not in tls
    assert "TLS:          on, Secret meshgate-us-west-tls" in tls
    assert "needs a client certificate of the mesh CA" in tls
    assert "MESHGATE_CA=ca.crt MESHGATE_CERT=client.crt MESHGATE_KEY=client.key MESHGATE_SERVER_NAME=us-west" in tls
    assert "Tokens:       the keys of Secret meshgate-tokens" in tls
    assert "Probes:       HTTP /readyz (startup, readiness) and /healthz (liveness) on port 9464" in tls
    assert "WARNING" not in tls
    plain = notes("-f", DEFAULT[0])
    assert "TLS:          off" in plain
    assert "MESHGATE_CA" not in plain
    # Tokens in the mesh file, but nothing passes their variables: said before the pod fails.
    forgot = notes("-f", VALUE_SETS["tls"][0], "--set", "auth.enabled=false")
    assert "WARNING: the mesh file's security.tokens read ORDERS_TOKEN, OPS_TOKEN" in forgot


def test_service_monitor_scrapes_the_metrics_service() -> None:
    objects = rendered("monitoring")
    monitor = one(objects, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    metrics_service = one(objects, "Service", f"{FULLNAME}-metrics")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= metrics_service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}


def prometheus_rules() -> dict[str, Any]:
    rule = one(rendered("monitoring"), "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    spec: dict[str, Any] = copy.deepcopy(rule["spec"])  # callers may edit it; the rendering is shared
    return spec


def test_prometheus_rule_is_the_one_rule_set() -> None:
    """The chart renders files/alerts.yaml as it is (main had its own set, with other expressions),
    with alertLabels added to each alert and its own labels winning."""
    spec = prometheus_rules()
    plain = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    expected = copy.deepcopy(plain["groups"])
    for group in expected:
        for rule in group["rules"]:
            rule["labels"] = {"team": "platform", **rule["labels"]}
    assert spec["groups"] == expected
    alerts = {r["alert"] for g in spec["groups"] for r in g["rules"]}
    assert {"MeshgateGatewayDown", "MeshgateLinkStuck", "MeshgateLinkLagHigh", "MeshgateStorageFull"} <= alerts


def test_prometheus_rule_leaves_out_disabled_alerts_and_adds_rules() -> None:
    extra = {"alert": "MyMeshgateAlert", "expr": "vector(1)", "labels": {"severity": "info"}}
    values = {"metrics": {"prometheusRule": {"disabledAlerts": ["MeshgateLinkPaused"], "additionalRules": [extra]}}}
    objects = render((*VALUE_SETS["monitoring"], _values_file(values)))
    groups = one(objects, "PrometheusRule")["spec"]["groups"]
    alerts = [r["alert"] for g in groups for r in g["rules"]]
    assert "MeshgateLinkPaused" not in alerts
    assert groups[-1] == {"name": "meshgate-additional", "rules": [extra]}


def _values_file(values: dict[str, Any]) -> Path:
    path = Path(tempfile.mkstemp(prefix="meshgate-values-", suffix=".yaml")[1])
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.fixture
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not installed (Debian: apt-get install -y prometheus)")
    return path


def test_prometheus_rules_pass_promtool(promtool: str, tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(prometheus_rules()))
    proc = subprocess.run(
        [promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 11 rules found" in proc.stdout


def test_prometheus_rule_passes_the_unit_tests_of_the_rule_set(promtool: str, tmp_path: Path) -> None:
    """observability/prometheus/alerts_test.yaml run on the rules as the chart renders them
    (alertLabels off: the tests expect the set's own labels)."""
    objects = render(DEFAULT, ("metrics.prometheusRule.enabled=true",))
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(one(objects, "PrometheusRule")["spec"]))
    tests = yaml.safe_load((CHART.parents[1] / "observability" / "prometheus" / "alerts_test.yaml").read_text())
    tests["rule_files"] = ["rules.yaml"]
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests))
    proc = subprocess.run(
        [promtool, "test", "rules", "tests.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_grafana_dashboard_configmap_for_the_sidecar() -> None:
    objects = render(VALUE_SETS["monitoring"], ("metrics.grafanaDashboard.annotations.grafana_folder=Meshgate",))
    cm = one(objects, "ConfigMap", f"{FULLNAME}-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Meshgate"}
    assert json.loads(cm["data"]["meshgate.json"]) == json.loads(
        (CHART / "files" / "grafana" / "meshgate.json").read_text()
    )
    other = render(VALUE_SETS["monitoring"], ("metrics.grafanaDashboard.namespace=grafana",))
    assert one(other, "ConfigMap", f"{FULLNAME}-dashboard")["metadata"]["namespace"] == "grafana"
    assert not [o for o in rendered("default") if o["metadata"]["name"].endswith("-dashboard")]


def test_helm_test_hook_waits_for_readyz_through_the_service() -> None:
    pod = one(rendered("default"), "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["READYZ_URL"] == f"http://{FULLNAME}-metrics.{NAMESPACE}.svc:9464/readyz"
    assert container["command"][:2] == ["python", "-c"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # Without the metrics Service: the gRPC health service of the client Service.
    grpc_pod = one(render(DEFAULT, ("metrics.enabled=false",)), "Pod")
    env = {e["name"]: e["value"] for e in grpc_pod["spec"]["containers"][0]["env"]}
    assert env["GATEWAY_ADDRESS"] == f"{FULLNAME}.{NAMESPACE}.svc:7400"
    assert "health_pb2_grpc.HealthStub" in grpc_pod["spec"]["containers"][0]["command"][2]
    assert not [o for o in render(DEFAULT, ("helmTest.enabled=false",)) if o["kind"] == "Pod"]


def test_tracing_values_set_the_otel_variables_and_open_the_collector_port() -> None:
    objects = rendered("monitoring")
    env = {e["name"]: e for e in gateway_container(objects)["env"]}
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == "http://otel-collector.observability:4318"
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"]["value"] == "http/protobuf"
    assert env["OTEL_TRACES_SAMPLER"]["value"] == "parentbased_traceidratio"
    assert env["OTEL_TRACES_SAMPLER_ARG"]["value"] == "0.05"
    assert env["OTEL_EXPORTER_OTLP_HEADERS"]["valueFrom"] == {
        "secretKeyRef": {"name": "otel-collector-auth", "key": "headers"}
    }
    assert env["OTEL_SERVICE_NAME"]["value"] == "meshgate"
    # The NetworkPolicy's egress lets the pod reach the collector (main blocked it).
    egress = one(objects, "NetworkPolicy")["spec"]["egress"]
    collector = [e for e in egress if e.get("ports") == [{"port": 4318, "protocol": "TCP"}]]
    assert collector == [
        {
            "ports": [{"port": 4318, "protocol": "TCP"}],
            "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "observability"}}}],
        }
    ]
    # Off by default: no exporter variables at all, so the gateway does no span work.
    default_env = {e["name"] for e in gateway_container(rendered("default"))["env"]}
    assert not {n for n in default_env if n.startswith("OTEL_EXPORTER")}
    # The collector's port from the endpoint, else the protocol's default.
    for sets, port in (
        (("tracing.endpoint=http://c:4317", "tracing.protocol=grpc"), 4317),
        (("tracing.endpoint=http://c", "tracing.protocol=grpc"), 4317),
        (("tracing.endpoint=http://c", "tracing.protocol=http/protobuf"), 4318),
        (("tracing.endpoint=https://c", "tracing.protocol=http/protobuf"), 443),
    ):
        policy = one(render(VALUE_SETS["monitoring"], sets), "NetworkPolicy")
        assert {"port": port, "protocol": "TCP"} in [p for e in policy["spec"]["egress"] for p in e.get("ports", [])], (
            sets
        )
    error = render_error(DEFAULT, ("tracing.enabled=true",))
    assert "tracing.enabled needs tracing.endpoint" in error


def test_nats_sidecar() -> None:
    objects = rendered("nats-sidecar")
    spec = pod_spec(objects)
    # The region's broker lives in the pod: never two pods at once.
    assert one(objects, "Deployment")["spec"]["strategy"] == {"type": "Recreate"}
    (nats,) = spec["initContainers"]  # a native sidecar: ready before the gateway, stopped after it
    assert nats["name"] == "nats"
    assert nats["restartPolicy"] == "Always"
    assert nats["command"] == ["nats-server"]
    assert nats["args"][:6] == ["--jetstream", "--store_dir", "/data", "--addr", "127.0.0.1", "--port"]
    assert not nats["image"].endswith(":latest")
    assert "startupProbe" in nats
    volumes = {v["name"]: v for v in spec["volumes"]}
    claim = one(objects, "PersistentVolumeClaim")
    assert volumes["nats-data"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"

    plain = render(VALUE_SETS["nats-sidecar"], ("nats.nativeSidecar=false", "nats.persistence.enabled=false"))
    plain_spec = pod_spec(plain)
    assert "initContainers" not in plain_spec
    nats = next(c for c in plain_spec["containers"] if c["name"] == "nats")
    sleep = int(nats["lifecycle"]["preStop"]["exec"]["command"][1])
    assert sleep >= 10 + 5  # outlives the gateway's preStop pause and drain
    assert plain_spec["terminationGracePeriodSeconds"] > sleep
    assert "emptyDir" in next(v for v in plain_spec["volumes"] if v["name"] == "nats-data")


def test_image_digest_wins_over_tag() -> None:
    digest = "sha256:" + "a" * 64
    objects = render(DEFAULT, (f"image.digest={digest}",))
    assert gateway_container(objects)["image"] == f"ghcr.io/meshgate/meshgate@{digest}"


# --- refusals ----------------------------------------------------------------------------

SCHEMA_ERROR = "values don't meet the specifications of the schema(s)"


def test_schema_refuses_negative_replica_count() -> None:
    error = render_error(DEFAULT, ("replicaCount=-1",))
    assert SCHEMA_ERROR in error
    assert "at '/replicaCount': minimum: got -1, want 0" in error


def test_schema_refuses_missing_region(tmp_path: Path) -> None:
    values = values_of("default")
    del values["region"]
    (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
    error = render_error((tmp_path / "values.yaml",))  # region: "" from the chart's values.yaml
    assert SCHEMA_ERROR in error
    assert "at '/region'" in error


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("image.tag=latest",), "at '/image/tag'"),
        (("region=Bad Region",), "at '/region'"),
        (("gateway.port=70000",), "at '/gateway/port'"),
        (("replicas=2",), "additional properties 'replicas' not allowed"),
    ],
)
def test_schema_refuses_bad_values(sets: tuple[str, ...], message: str) -> None:
    error = render_error(DEFAULT, sets)
    assert SCHEMA_ERROR in error
    assert message in error


def test_several_replicas_share_a_region() -> None:
    """Link leases: any number of replicas, one of them runs each link; NOTES has no warning."""
    objects = render(DEFAULT, ("replicaCount=3",))
    assert one(objects, "Deployment")["spec"]["replicas"] == 3
    result = run_helm(
        "install", "meshgate-us-west", CHART, "--dry-run=client", "-f", DEFAULT[0], "--set", "replicaCount=3"
    )
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stdout.split("NOTES:")[1]


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            ("region=eu-west",),
            'region "eu-west" is not a region of the mesh file (config.mesh has: us-west, eu-central',
        ),
        (("config.mesh=",), "config.mesh is required"),
        (("config.mesh=regions: []",), "config.mesh has no root key event_mesh"),
        (("gateway.terminationGracePeriodSeconds=10",), "needs at least 25 s to stop"),
        (("tls.enabled=true",), "tls.enabled needs tls.existingSecret"),
        (("tls.enabled=true", "tls.cert=C", "tls.key=K"), "or all of tls.cert, tls.key and tls.ca"),
        (
            ("tls.enabled=true", "tls.existingSecret=s"),
            "tls.enabled mounts the region's certificate, but the mesh file has no security.ca",
        ),
        (("auth.enabled=true",), "auth.enabled needs auth.existingSecret"),
    ],
)
def test_chart_refuses_inconsistent_values(sets: tuple[str, ...], message: str) -> None:
    assert message in render_error(DEFAULT, sets)


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("tls.enabled=false",), "the mesh file reads ${MESHGATE_TLS_...} variables"),
        (
            ("auth.tokens.ORDERS_TOKEN=0123456789abcdef", "auth.existingSecret="),
            "the mesh file's security.tokens read OPS_TOKEN, which auth.tokens does not set (it sets ORDERS_TOKEN)",
        ),
        (("auth.tokens.OPS_TOKEN=0123456789abcdef",), "auth: set auth.existingSecret or auth.tokens, not both"),
    ],
)
def test_chart_refuses_tls_and_tokens_that_do_not_fit_the_mesh_file(sets: tuple[str, ...], message: str) -> None:
    assert message in render_error(VALUE_SETS["tls"], sets)


def test_chart_refuses_tls_without_an_http_address_for_the_probes(tmp_path: Path) -> None:
    values = values_of("tls")
    values["config"]["mesh"] = values["config"]["mesh"].replace("metrics: 0.0.0.0:9464", "metrics: 127.0.0.1:9464")
    (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
    error = render_error((tmp_path / "values.yaml",), ("metrics.enabled=false",))
    assert "Kubernetes probes cannot show" in error
    assert 'region "us-west" has none the kubelet can reach: add `metrics: 0.0.0.0:9464`' in error


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("auth.tokens.ORDERS_TOKEN=short",), "at '/auth/tokens/ORDERS_TOKEN'"),
        (("auth.tokens.orders-token=0123456789abcdef",), "invalid propertyName 'orders-token'"),
        (("auth.mountPath=/x",), "additional properties 'mountPath' not allowed"),
    ],
)
def test_schema_refuses_bad_tokens(sets: tuple[str, ...], message: str) -> None:
    error = render_error(VALUE_SETS["tls-inline"], sets)
    assert SCHEMA_ERROR in error
    assert message in error


def test_chart_refuses_metrics_without_a_metrics_address(tmp_path: Path) -> None:
    values = values_of("default")
    values["config"]["mesh"] = values["config"]["mesh"].replace("metrics: 0.0.0.0:9464", "")
    (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
    error = render_error((tmp_path / "values.yaml",))
    assert 'region "us-west" of the mesh file has no `metrics:` address' in error
    objects = render((tmp_path / "values.yaml",), ("metrics.enabled=false",))
    assert not [o for o in objects if o["metadata"]["name"].endswith("-metrics")]


def test_chart_refuses_nats_sidecar_with_several_replicas() -> None:
    error = render_error(VALUE_SETS["nats-sidecar"], ("replicaCount=2",))
    assert "nats.enabled runs one unclustered NATS server per pod" in error


def test_chart_refuses_an_embedded_region_with_several_replicas(tmp_path: Path) -> None:
    values = values_of("default")
    brokers = '["nats-0.nats.nats.svc.cluster.local:4222", "nats-1.nats.nats.svc.cluster.local:4222"]'
    mesh = values["config"]["mesh"].replace(
        f"- name: us-west\n      brokers: {brokers}", "- name: us-west\n      kind: embedded"
    )
    assert "kind: embedded" in mesh
    load_config_text(mesh, env={"MESH_REPLICATION_SECRET": "0123456789abcdef"})
    values["config"]["mesh"] = mesh
    (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
    assert 'region "us-west" is kind: embedded' in render_error((tmp_path / "values.yaml",), ("replicaCount=2",))
    objects = render((tmp_path / "values.yaml",))
    assert one(objects, "Deployment")["spec"]["strategy"] == {"type": "Recreate"}


# --- replication apart from ingest (replicator.enabled) -----------------------------------------


def test_replicator_deployment_runs_the_links_and_the_gateways_ingest_only() -> None:
    objects = rendered("replicator")
    gateway_args = gateway_container(objects)["args"]
    assert gateway_args[gateway_args.index("--role") + 1] == "gateway"
    deployment = one(objects, "Deployment", f"{FULLNAME}-replicator")
    assert deployment["spec"]["replicas"] == 2
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector["app.kubernetes.io/component"] == "replicator"
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    args = container["args"]
    assert args[args.index("--role") + 1] == "replicator"
    assert args[args.index("--metrics") + 1] == "0.0.0.0:9464"
    assert args[args.index("--replication-workers") + 1] == "2"
    assert "--listen" not in args
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"metrics": 9464}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["resources"]["requests"]["cpu"] == "1"
    # The same mesh file, secret and environment as the gateway's.
    env = {e["name"] for e in container["env"]}
    assert {"MESHGATE_REGION", "MESH_REPLICATION_SECRET", "OTEL_RESOURCE_ATTRIBUTES"} <= env
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    pdb = one(objects, "PodDisruptionBudget", f"{FULLNAME}-replicator")
    assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "replicator"
    # No Service sends client or peer traffic to the replicator pods; their metrics have one.
    for service in (o for o in objects if o["kind"] == "Service"):
        expected = "replicator" if service["metadata"]["name"] == f"{FULLNAME}-replicator-metrics" else "gateway"
        assert service["spec"]["selector"]["app.kubernetes.io/component"] == expected
    metrics = one(objects, "Service", f"{FULLNAME}-replicator-metrics")
    assert metrics["metadata"]["labels"]["app.kubernetes.io/component"] == "metrics"  # the ServiceMonitor's
    assert metrics["spec"]["ports"][0]["targetPort"] == "metrics"
    # Off (the default): the gateway pods run the links themselves.
    default = render(DEFAULT, ("replicator.enabled=false",))
    assert [o["metadata"]["name"] for o in default if o["kind"] == "Deployment"] == [FULLNAME]
    assert "--role" not in gateway_container(default)["args"]


def test_replicator_workers_zero_runs_the_links_in_the_pod_process() -> None:
    objects = render(VALUE_SETS["replicator"], ("replicator.workers=0", "replicator.metricsPort=9500"))
    (container,) = one(objects, "Deployment", f"{FULLNAME}-replicator")["spec"]["template"]["spec"]["containers"]
    assert "--replication-workers" not in container["args"]
    assert container["args"][container["args"].index("--metrics") + 1] == "0.0.0.0:9500"


def test_chart_refuses_a_replicator_without_a_broker_it_can_reach() -> None:
    message = "replicator.enabled runs the replication links in pods of their own, which cannot reach a broker"
    assert message in render_error(VALUE_SETS["nats-sidecar"], ("replicator.enabled=true",))
    assert "/replicator/workers" in render_error(VALUE_SETS["replicator"], ("replicator.workers=-1",))
