"""Checks of the Kubernetes manifests in k8s/ (kustomize base + overlays).

- every overlay renders, with kustomize / ``kubectl kustomize`` when one is on PATH, else with
  k8s/kustomize_lite.py (and where a real renderer exists, the fallback must render the same);
- core kinds validate against the Kubernetes JSON schemas (kubernetes-validate, strict: unknown
  fields fail), the pod templates inside the RayService included;
- Strimzi's and the Prometheus Operator's custom resources validate against their CRD schemas
  (k8s/crds: the @kubernetes-models npm packages pinned there, run with node); KubeRay's and the
  Milvus Operator's schemas are in no package of the registries we can reach (k8s/crds/SOURCES.md),
  so their resources get structural checks here instead;
- the wiring: serveConfigV2 equals serving.app.serve_config for the ConfigMap's settings, topics
  and partitions follow the Faust apps (their ids and tables read from streams/app.py and
  indexer/app.py), ACLs, probes, hardening, network policies, PodMonitors, the Grafana dashboard.

k8s/check.sh runs checkov on the same rendering (not here: checkov is a heavy install).
"""

from __future__ import annotations

import ast
import copy
import functools
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from serving.app import serve_config
from stylestream.config import Settings, documented_settings
from stylestream.records import CATALOG, CLICKS, DLQ, PURCHASES, RECS

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
NAMESPACE = "stylestream"
K8S_VERSION = "1.33.0"
BUNDLE = "/models/bundle"
CORE_GROUPS = {"v1", "apps/v1", "policy/v1", "networking.k8s.io/v1", "batch/v1", "rbac.authorization.k8s.io/v1"}
# settings the coordinator is adding to stylestream/config.py alongside this deployment
DAY_MS = 86_400_000


def _load_lite():
    spec = importlib.util.spec_from_file_location("kustomize_lite", K8S / "kustomize_lite.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


kustomize_lite = _load_lite()


def real_renderer() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


@functools.cache
def _render(folder: str, real: bool) -> tuple[dict[str, Any], ...]:
    if real:
        out = subprocess.run([*real_renderer(), folder], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return tuple(d for d in yaml.safe_load_all(out.stdout) if d)
    return tuple(kustomize_lite.build(folder))


def render(name: str) -> list[dict[str, Any]]:
    """The overlay's resources (deep copies: tests may change them)."""
    return copy.deepcopy(list(_render(str(K8S / "overlays" / name), real_renderer() is not None)))


@pytest.fixture(params=OVERLAYS)
def overlay(request) -> str:
    return request.param


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    hits = find(docs, kind, name)
    assert len(hits) == 1, f"{kind}/{name}: {len(hits)} found"
    return hits[0]


def config(docs: list[dict[str, Any]]) -> dict[str, str]:
    return one(docs, "ConfigMap", "stylestream-config")["data"]


def pod_specs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every pod template stylestream owns: the StatefulSets' and the RayService's groups."""
    specs = {f"StatefulSet/{d['metadata']['name']}": d["spec"]["template"] for d in find(docs, "StatefulSet")}
    for ray in find(docs, "RayService"):
        cluster = ray["spec"]["rayClusterConfig"]
        specs["RayService/head"] = cluster["headGroupSpec"]["template"]
        for group in cluster["workerGroupSpecs"]:
            specs[f"RayService/{group['groupName']}"] = group["template"]
    return specs


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


@functools.cache
def faust_apps() -> dict[str, dict[str, Any]]:
    """{module: {"id": app id, "tables": [table names]}} read from streams/app.py and indexer/app.py."""
    apps = {}
    for module in ("streams", "indexer"):
        tree = ast.parse((ROOT / module / "app.py").read_text())
        app_id, tables = None, []
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                if isinstance(func, ast.Name) and func.id == "faust_app":
                    app_id = node.args[0].value
                elif isinstance(func, ast.Attribute) and func.attr in ("Table", "GlobalTable"):
                    tables.append(node.args[0].value)
        assert app_id and tables, module
        apps[module] = {"id": app_id, "tables": tables}
    return apps


def topic_name(doc: dict[str, Any]) -> str:
    return doc["spec"].get("topicName", doc["metadata"]["name"])


# --- rendering --------------------------------------------------------------------------------


def test_every_overlay_renders(overlay):
    docs = render(overlay)
    keys = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(keys) == len(set(keys)), "duplicate resources"
    for d in docs:
        if d["kind"] != "Namespace":
            assert d["metadata"].get("namespace") == NAMESPACE, d["metadata"]["name"]
        assert d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "stylestream"
    kinds = {d["kind"] for d in docs}
    assert {"Namespace", "ConfigMap", "StatefulSet", "PodDisruptionBudget", "NetworkPolicy", "Kafka", "KafkaNodePool",
            "KafkaTopic", "KafkaUser", "Milvus", "RayService", "PodMonitor", "PersistentVolumeClaim"} <= kinds


def test_fallback_renderer_renders_what_kustomize_renders(overlay):
    if real_renderer() is None:
        pytest.skip("neither kustomize nor kubectl on PATH: nothing to compare the fallback renderer with")
    folder = str(K8S / "overlays" / overlay)
    real = {(d["kind"], d["metadata"]["name"]): d for d in _render(folder, True)}
    lite = {(d["kind"], d["metadata"]["name"]): d for d in _render(folder, False)}
    assert real.keys() == lite.keys()
    for key in real:
        assert real[key] == lite[key], key


def test_no_secret_values_in_the_manifests(overlay):
    docs = render(overlay)
    assert not find(docs, "Secret"), "Secrets are created by hand or by Strimzi, never kept in the repository"
    for d in find(docs, "ConfigMap"):
        for key in d["data"]:
            assert not any(word in key for word in ("PASSWORD", "TOKEN", "SECRET")), key


# --- schemas ----------------------------------------------------------------------------------


def _validate_core(doc: dict[str, Any]) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_core_kinds_validate_against_kubernetes_schemas(overlay):
    docs = render(overlay)
    core = [d for d in docs if d["apiVersion"] in CORE_GROUPS]
    assert len(core) >= 15
    for doc in core:
        _validate_core(doc)
    # KubeRay's CRD embeds the core PodTemplateSpec for each group: validate those as PodTemplates
    for name, template in pod_specs(docs).items():
        if name.startswith("RayService/"):
            _validate_core({"apiVersion": "v1", "kind": "PodTemplate",
                            "metadata": {"name": name.split("/")[1], "namespace": NAMESPACE}, "template": template})


def test_core_validation_catches_a_typo():
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    sts = copy.deepcopy(one(render(OVERLAYS[0]), "StatefulSet", "stylestream-streams"))
    sts["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"exec": {"command": ["true"]}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, K8S_VERSION, strict=True)


@pytest.fixture(scope="session")
def crd_validator():
    """node + the CRD-schema packages pinned in k8s/crds, installed once into a cache folder."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not (node and npm):
        pytest.skip("node/npm not on PATH: the Strimzi and Prometheus Operator CRD schemas need them")
    files = ("package.json", "package-lock.json", "validate.mjs")
    digest = hashlib.sha256(b"".join((K8S / "crds" / f).read_bytes() for f in files)).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "stylestream" / f"k8s-crds-{digest}"
    if not (cache / "node_modules" / ".package-lock.json").is_file():
        cache.mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copy(K8S / "crds" / f, cache / f)
        out = subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
                             cwd=cache, capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            pytest.skip(f"npm ci of k8s/crds failed (no registry?): {out.stderr[-500:]}")

    def validate(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = subprocess.run([node, "validate.mjs"], cwd=cache, input=json.dumps(docs), capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    return validate


def test_custom_resources_validate_against_crd_schemas(overlay, crd_validator):
    docs = render(overlay)
    results = crd_validator(docs)
    checked = {(r["kind"], r["name"]) for r in results if r["checked"]}
    expected = {(d["kind"], d["metadata"]["name"]) for d in docs
                if d["kind"] in ("Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser", "PodMonitor")}
    assert checked == expected
    assert [r for r in results if r["error"]] == []


def test_crd_schemas_catch_mistakes(crd_validator):
    docs = render(OVERLAYS[0])
    user = copy.deepcopy(one(docs, "KafkaUser", "stylestream-streams"))
    user["spec"]["authorization"]["acls"][0]["operations"] = ["Reed"]
    kafka = copy.deepcopy(one(docs, "Kafka", "stylestream"))
    kafka["spec"]["kafka"]["listeners"][0]["authentication"]["type"] = "scram-sha-256"
    monitor = copy.deepcopy(one(docs, "PodMonitor", "stylestream-streams"))
    monitor["spec"]["podMetricsEndpoints"][0]["port"] = 6066
    results = crd_validator([user, kafka, monitor])
    assert all(r["checked"] and r["error"] for r in results), results


def test_rayservice_structure(overlay):
    """No KubeRay CRD schema is packaged in a reachable registry (k8s/crds/SOURCES.md): the
    fields KubeRay's ray.io/v1 RayService needs, checked by hand; the pod templates are
    validated against the core schema above."""
    docs = render(overlay)
    ray = one(docs, "RayService", "stylestream")
    assert ray["apiVersion"] == "ray.io/v1"
    assert isinstance(ray["spec"]["serveConfigV2"], str)
    cluster = ray["spec"]["rayClusterConfig"]
    assert set(cluster) <= {"rayVersion", "enableInTreeAutoscaling", "autoscalerOptions", "headGroupSpec",
                            "workerGroupSpecs", "headServiceAnnotations", "suspend"}
    assert cluster["enableInTreeAutoscaling"] is True
    assert isinstance(cluster["rayVersion"], str)
    head = cluster["headGroupSpec"]
    assert set(head) <= {"serviceType", "rayStartParams", "template", "headService", "enableIngress"}
    assert head["serviceType"] == "ClusterIP"
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    assert head["rayStartParams"]["metrics-export-port"] == "8080"
    groups = cluster["workerGroupSpecs"]
    assert [g["groupName"] for g in groups] == ["generator"]
    for params in [head["rayStartParams"]] + [g["rayStartParams"] for g in groups]:
        assert all(isinstance(v, str) for v in params.values()), "rayStartParams is a map of strings"
    for group in groups:
        assert set(group) <= {"groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template",
                              "scaleStrategy", "suspend", "idleTimeoutSeconds", "numOfHosts"}
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert group["rayStartParams"]["metrics-export-port"] == "8080"
    head_ports = {p["containerPort"]: p["name"] for p in head["template"]["spec"]["containers"][0]["ports"]}
    assert {8265: "dashboard", 8080: "metrics", 8000: "serve", 6379: "gcs-server"}.items() <= head_ports.items()
    for group in groups:
        ports = {p["containerPort"]: p["name"] for p in group["template"]["spec"]["containers"][0]["ports"]}
        assert {8080: "metrics", 8000: "serve"}.items() <= ports.items()


def test_milvus_structure(overlay):
    """No Milvus Operator CRD schema is packaged in a reachable registry: checked by hand."""
    docs = render(overlay)
    milvus = one(docs, "Milvus", "milvus")
    assert milvus["apiVersion"] == "milvus.io/v1beta1"
    spec = milvus["spec"]
    assert set(spec) <= {"mode", "config", "components", "dependencies"}
    assert spec["mode"] == ("cluster" if overlay == "gpu" else "standalone")
    assert spec["config"]["common"]["security"]["authorizationEnabled"] is True
    env = env_of(spec["components"])
    ref = env["COMMON_SECURITY_DEFAULTROOTPASSWORD"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "milvus-token", "key": "password"}
    assert set(spec["dependencies"]) <= {"etcd", "storage", "pulsar", "kafka", "msgStreamType"}
    # the client Service the operator makes is <name>-milvus
    assert config(docs)["MILVUS_URI"] == f"http://{milvus['metadata']['name']}-milvus.{NAMESPACE}.svc:19530"


# --- wiring -------------------------------------------------------------------------------------


def test_serve_config_v2_is_what_serve_config_writes(overlay):
    docs = render(overlay)
    data = config(docs)
    settings = Settings.from_env(env=data)
    expected = serve_config(settings, BUNDLE, data["MILVUS_URI"])
    actual = yaml.safe_load(one(docs, "RayService", "stylestream")["spec"]["serveConfigV2"])
    assert actual == expected, "serveConfigV2 should be:\n" + yaml.safe_dump(expected, sort_keys=False)
    assert settings.bundle_dir == Path(BUNDLE)


def test_config_map_names_only_known_settings(overlay):
    data = config(render(overlay))
    known = {name for name, _, _ in documented_settings()}
    assert set(data) - known == set()
    settings = Settings.from_env(env=data)
    assert str(settings.home) == "/var/lib/stylestream"
    assert settings.worker_web_bind == "0.0.0.0" and settings.serve_host == "0.0.0.0"
    assert data["STYLESTREAM_TABLE_STORE"] == "rocksdb"
    assert data["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL" and data["KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"


def test_service_addresses_match_the_resources(overlay):
    docs = render(overlay)
    data = config(docs)
    kafka = find(docs, "Kafka")[0]
    listener = kafka["spec"]["kafka"]["listeners"][0]
    assert listener["port"] == 9093 and listener["tls"] is True and listener["type"] == "internal"
    assert listener["authentication"]["type"] == "scram-sha-512"
    assert kafka["spec"]["kafka"]["authorization"]["type"] == "simple"
    assert data["KAFKA_BOOTSTRAP_SERVERS"] == f"{kafka['metadata']['name']}-kafka-bootstrap.{NAMESPACE}.svc:9093"
    ray = find(docs, "RayService")[0]["metadata"]["name"]
    assert data["STYLESTREAM_SERVING_URL"] == f"http://{ray}-serve-svc.{NAMESPACE}.svc:{data['STYLESTREAM_SERVE_PORT']}"


def test_topics_follow_the_faust_apps(overlay):
    docs = render(overlay)
    data = config(docs)
    partitions = int(data["STYLESTREAM_TOPIC_PARTITIONS"])
    assert partitions == (12 if overlay == "gpu" else 4)
    topics = {topic_name(d): d for d in find(docs, "KafkaTopic")}
    internal = set()
    for app in faust_apps().values():
        internal |= {f"{app['id']}-{table}-changelog" for table in app["tables"]}
        internal.add(f"{app['id']}-__assignor-__leader")
    assert set(topics) == {CLICKS, PURCHASES, CATALOG, RECS, DLQ} | internal
    brokers = sum(p["spec"]["replicas"] for p in find(docs, "KafkaNodePool") if "broker" in p["spec"]["roles"])
    min_isr = find(docs, "Kafka")[0]["spec"]["kafka"]["config"]["min.insync.replicas"]
    assert brokers == (1 if overlay == "dev" else 3)
    for name, topic in topics.items():
        spec = topic["spec"]
        assert spec["replicas"] == (1 if overlay == "dev" else 3) and min_isr <= spec["replicas"] <= brokers, name
        co_partitioned = name in (CLICKS, PURCHASES, CATALOG) or name.endswith("-changelog")
        if co_partitioned:
            assert spec["partitions"] == partitions, f"{name}: Faust co-partitioning needs {partitions}"
        assert (topic["metadata"]["labels"]["stylestream.io/partitions"] == "events") == (spec["partitions"] > 1)
    assert topics[CLICKS]["spec"]["config"]["retention.ms"] == 7 * DAY_MS
    assert topics[PURCHASES]["spec"]["config"]["retention.ms"] == 7 * DAY_MS
    assert topics[DLQ]["spec"]["config"]["retention.ms"] == 30 * DAY_MS
    assert topics[CATALOG]["spec"]["config"]["cleanup.policy"] == "compact,delete"
    for name in internal:
        if name.endswith("-changelog"):
            assert topics[name]["spec"]["config"]["cleanup.policy"] == "compact"
    for sts in find(docs, "StatefulSet"):
        assert 1 <= sts["spec"]["replicas"] <= partitions, sts["metadata"]["name"]


def test_kafka_users_and_acls(overlay):
    docs = render(overlay)
    apps = faust_apps()
    users = {u["metadata"]["name"]: u for u in find(docs, "KafkaUser")}
    wiring = {"streams": ("stylestream-streams", {CLICKS, PURCHASES, CATALOG}, {RECS, DLQ}),
              "indexer": ("stylestream-indexer", {CATALOG}, {DLQ})}
    for module, (workload, reads, writes) in wiring.items():
        app = apps[module]
        container = one(docs, "StatefulSet", workload)["spec"]["template"]["spec"]["containers"][0]
        env = env_of(container)
        user = env["KAFKA_SASL_USERNAME"]["value"]
        assert env["KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": user, "key": "password"}
        spec = users[user]["spec"]
        assert spec["authentication"]["type"] == "scram-sha-512"
        acls = {(a["resource"]["type"], a["resource"]["name"]): set(a["operations"])
                for a in spec["authorization"]["acls"]}
        assert all(a["resource"]["patternType"] == "literal" for a in spec["authorization"]["acls"])
        assert {"Read", "Describe"} <= acls[("group", app["id"])]
        internal = {f"{app['id']}-{t}-changelog" for t in app["tables"]} | {f"{app['id']}-__assignor-__leader"}
        for topic in reads:
            assert {"Read", "Describe", "Create"} <= acls[("topic", topic)], topic
        for topic in writes:
            assert {"Write", "Describe", "Create"} <= acls[("topic", topic)], topic
        for topic in internal:
            assert {"Read", "Write", "Describe", "Create"} <= acls[("topic", topic)], topic
        assert {name for kind, name in acls if kind == "topic"} == reads | writes | internal


def test_workers_and_indexer(overlay):
    docs = render(overlay)
    data = config(docs)
    ca_dir = str(Path(data["KAFKA_SSL_CAFILE"]).parent)
    for workload, module, port in (("stylestream-streams", "streams", 6066), ("stylestream-indexer", "indexer", 6067)):
        sts = one(docs, "StatefulSet", workload)
        pod = sts["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert container["command"] == ["python", "-m", module, "worker", "-l", "info"]
        assert container["envFrom"] == [{"configMapRef": {"name": "stylestream-config"}}]
        env = env_of(container)
        assert env["STYLESTREAM_WORKER_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
        assert env["MILVUS_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "milvus-token", "key": "token"}
        assert container["ports"] == [{"name": "web", "containerPort": port}]
        readiness = " ".join(container["readinessProbe"]["exec"]["command"])
        assert f"127.0.0.1:{port}/stats/" in readiness and "'ready'" in readiness
        assert container["livenessProbe"]["httpGet"] == {"path": "/stats/", "port": "web"}
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        claims = {c["metadata"]["name"]: c for c in sts["spec"]["volumeClaimTemplates"]}
        assert mounts[data["STYLESTREAM_HOME"]]["name"] in claims
        assert volumes[mounts["/models"]["name"]]["persistentVolumeClaim"]["claimName"] == "stylestream-models"
        assert volumes[mounts[ca_dir]["name"]]["secret"]["secretName"] == "stylestream-cluster-ca-cert"
        labels = sts["spec"]["template"]["metadata"]["labels"]
        assert labels["stylestream.io/kafka-client"] == "true"
        assert any(p["spec"]["selector"]["matchLabels"].items() <= labels.items()
                   for p in find(docs, "PodDisruptionBudget")), f"{workload}: no PodDisruptionBudget"
    pvc = one(docs, "PersistentVolumeClaim", "stylestream-models")
    assert pvc["spec"]["accessModes"] == ["ReadOnlyMany"]


def test_pods_are_hardened(overlay):
    docs = render(overlay)
    for name, template in pod_specs(docs).items():
        pod = template["spec"]
        if name != "RayService/head":  # its in-tree autoscaler talks to the Kubernetes API
            assert pod["automountServiceAccountToken"] is False, name
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        tmp = [v["name"] for v in pod["volumes"] if "emptyDir" in v]
        for c in pod["containers"]:
            where = f"{name}/{c['name']}"
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["runAsNonRoot"] is True, where
            assert sc["capabilities"] == {"drop": ["ALL"]}, where
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), where
            assert "livenessProbe" in c and "readinessProbe" in c, where
            assert any(m["mountPath"] == "/tmp" and m["name"] in tmp for m in c["volumeMounts"]), where
            image, _, tag = c["image"].rpartition(":")
            assert image == "stylestream" and tag and tag != "latest", where


def test_network_policies(overlay):
    docs = render(overlay)
    policies = find(docs, "NetworkPolicy")
    deny = one(docs, "NetworkPolicy", "default-deny-all")["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}

    def egress_ports(app: str) -> set[int]:
        ports = set()
        for p in policies:
            if p["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name") == app:
                for rule in p["spec"].get("egress", []):
                    ports |= {port["port"] for port in rule.get("ports", [])}
        return ports

    def ingress_ports(app: str) -> set[int]:
        ports = set()
        for p in policies:
            if p["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name") == app:
                for rule in p["spec"].get("ingress", []):
                    ports |= {port["port"] for port in rule.get("ports", [])}
        return ports

    assert {9093, 8000, 19530} <= egress_ports("stylestream-streams")
    assert {9093, 19530} <= egress_ports("stylestream-indexer")
    assert {19530} <= egress_ports("stylestream-ray")
    assert 6066 in ingress_ports("stylestream-streams") and 6067 in ingress_ports("stylestream-indexer")
    assert {8000, 8080, 8265} <= ingress_ports("stylestream-ray")
    peers = find(docs, "Kafka")[0]["spec"]["kafka"]["listeners"][0]["networkPolicyPeers"]
    assert peers == [{"podSelector": {"matchLabels": {"stylestream.io/kafka-client": "true"}}}]


def test_pod_monitors(overlay):
    docs = render(overlay)
    templates = pod_specs(docs)
    expected = {"stylestream-streams": ("web", 6066), "stylestream-indexer": ("web", 6067),
                "stylestream-ray": ("metrics", 8080)}
    for name, (port_name, port) in expected.items():
        monitor = one(docs, "PodMonitor", name)
        endpoint = monitor["spec"]["podMetricsEndpoints"][0]
        assert endpoint["port"] == port_name and endpoint["path"] == "/metrics"
        selected = [t for t in templates.values()
                    if monitor["spec"]["selector"]["matchLabels"].items() <= t["metadata"]["labels"].items()]
        assert selected, name
        for t in selected:
            assert {"name": port_name, "containerPort": port} in t["spec"]["containers"][0]["ports"], name
    assert len([t for t in templates if t.startswith("RayService/")]) >= 2


def test_gpu_and_dev_overlays_differ_where_they_should():
    dev, gpu = render("dev"), render("gpu")
    dev_ray = one(dev, "RayService", "stylestream")["spec"]["rayClusterConfig"]
    gpu_ray = one(gpu, "RayService", "stylestream")["spec"]["rayClusterConfig"]
    assert "nvidia.com/gpu" not in json.dumps(dev)
    worker = gpu_ray["workerGroupSpecs"][0]["template"]["spec"]
    container = worker["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["image"] == "stylestream:gpu"
    assert gpu_ray["headGroupSpec"]["template"]["spec"]["containers"][0]["image"] == "stylestream:gpu"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in worker["tolerations"]
    assert worker["nodeSelector"]
    assert config(gpu)["STYLESTREAM_GEN_NUM_GPUS"] == "1" and config(dev)["STYLESTREAM_GEN_NUM_GPUS"] == "0"
    assert dev_ray["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["image"] == "stylestream:0.1.0"
    assert one(dev, "StatefulSet", "stylestream-streams")["spec"]["replicas"] == 1


# --- Grafana --------------------------------------------------------------------------------------


def test_grafana_dashboard():
    dash = json.loads((K8S / "grafana" / "stylestream.json").read_text())
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    for p in panels:
        assert p["datasource"]["uid"] == "${datasource}"
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    text = "\n".join(exprs)
    for metric in ("stylestream_events_received_total", "stylestream_events_processed_total",
                   "stylestream_events_duplicates_total", "stylestream_events_dead_lettered_total",
                   "stylestream_recommendations_total", "stylestream_recommendation_latency_seconds_bucket",
                   "stylestream_consumer_lag", "stylestream_recs_pending", "stylestream_indexer_updates_total",
                   "stylestream_indexer_batch_seconds_bucket", "ray_serve_deployment_processing_latency_ms_bucket",
                   "ray_serve_num_ongoing_http_requests", "ray_serve_deployment_replica_healthy"):
        assert metric in text, metric
    for q in ("0.5", "0.95", "0.99"):
        assert (f"histogram_quantile({q}, sum by (le, path) (rate(stylestream_recommendation_latency_seconds_bucket"
                in text)
    assert "sum by (path)" in text and "by (topic, partition)" in text and "sum by (op)" in text
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
