"""The Serve application on a real local Ray, searching a real Milvus Lite server, for a
real (tiny) bundle: the same answers as the in-process path, clear 4xx for bad input,
two Retriever replicas beside a writing client, and a rollout without a failed request."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from fuzz_records import dumps, fuzz, recommend_bodies
from hypothesis import given

from indexer.build import build_index
from indexer.collection import ItemCollection, connect
from models.bundle import MANIFEST, Bundle, bundle_version
from models.recommender import History, MixupRecommender
from serving.app import APP_NAME, serve_config
from serving.schemas import RecommendBody
from stylestream.config import Settings
from stylestream.devstack import DevStack
from stylestream.devstack.processes import free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_bundle):
    home = tmp_path_factory.mktemp("serving-home")
    settings = Settings.from_env({"STYLESTREAM_HOME": str(home)}, bundle=tiny_bundle.folder, serve_port=free_port(),
                                 ray_dashboard_port=free_port(), retriever_replicas=2, gen_max_batch_size=4,
                                 gen_min_replicas=1, gen_max_replicas=1)
    stack = DevStack(settings)
    try:
        stack.start_milvus()
        stack.start_serving()
        yield stack
    finally:
        stack.close()


def post(url: str, body: object, timeout: float = 60) -> dict:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url + "/recommend", data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def get(url: str, path: str) -> dict:
    with urllib.request.urlopen(url + path, timeout=30) as r:
        return json.loads(r.read())


def body_for(items: list[str], r: int, k: int = 10) -> dict:
    return {"user_id": f"u{r}", "k": k, "history": [{"item_id": items[7 * r + j], "kind": kind}
                                                    for j, kind in enumerate(("click", "purchase", "click"))]}


def test_recommend_answers_as_the_in_process_path(served, tiny_bundle):
    rec = MixupRecommender(Bundle.load(tiny_bundle.folder), engine="onnx", device="cpu")
    for r in range(5):
        body = body_for(rec.item_ids, r)
        answer = post(served.serving_url, body)
        history = History.of([e["item_id"] for e in body["history"]], [e["kind"] for e in body["history"]])
        local = rec.recommend([history], k=10)[0]
        assert answer["path"] == local.path and answer["model_version"] == rec.bundle.version
        assert answer["generated_text"] == local.generated_text
        assert [i["item_id"] for i in answer["items"]] == [h.item_id for h in local.items]
        assert all(i["title"] for i in answer["items"])
        assert answer["timings_ms"]["total"] >= answer["timings_ms"]["generate"]


@pytest.mark.parametrize(("raw", "status", "reason"), [
    (b"{not json", 422, "json"),
    ({"user_id": 7, "history": [{"item_id": "a"}]}, 422, "user_id"),
    ({"user_id": "u", "history": []}, 422, "history"),
    ({"user_id": "u", "history": [{"item_id": "a", "kind": "like"}]}, 422, "kind"),
    ({"user_id": "u", "history": [{"item_id": "a"}], "k": 1000}, 422, "less than or equal to 100"),
    ({"user_id": "u", "history": [{"item_id": "a"}], "tenant": "x"}, 422, "Extra inputs are not permitted"),
    ({"user_id": "u", "history": [{"item_id": "a"}] * 201}, 422, "at most 200"),
    ({"user_id": "u", "history": [{"item_id": "x" * 300}]}, 422, "at most 256"),
    ({"user_id": "u" * 129, "history": [{"item_id": "a"}]}, 422, "at most 128"),
    (b'{"user_id": "u", "history": [{"item_id": "a", "ts": NaN}]}', 422, "finite"),
    (b"[" + b"1," * 200_000 + b"1]", 413, "bytes"),
])
def test_bad_requests_get_a_4xx_with_the_reason(served, raw, status, reason):
    with pytest.raises(urllib.error.HTTPError) as err:
        post(served.serving_url, raw)
    assert err.value.code == status
    assert reason.lower() in err.value.read().decode().lower()
    assert get(served.serving_url, "/healthz")["status"] == "ok", "the replica stays up"


@fuzz(1_000)
@given(body=recommend_bodies)
def test_fuzzed_bodies_get_an_answer_or_a_4xx_never_a_5xx(served, body):
    try:
        answer = post(served.serving_url, dumps(body), timeout=30)
    except urllib.error.HTTPError as err:
        assert 400 <= err.code < 500, err.read()[:300]
    else:
        valid = RecommendBody.model_validate(body)
        assert answer["user_id"] == valid.user_id and len(answer["items"]) <= valid.k


def test_a_chunked_body_over_the_limit_is_refused_before_it_is_parsed(served):
    import http.client
    from urllib.parse import urlsplit

    url = urlsplit(served.serving_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    chunks = (b"[" + b"1," * 50_000 for _ in range(4))  # 400 kB, no Content-Length
    conn.request("POST", "/recommend", body=chunks, headers={"content-type": "application/json"},
                 encode_chunked=True)
    answer = conn.getresponse()
    assert answer.status == 413 and b"at most" in answer.read()
    conn.close()
    assert get(served.serving_url, "/healthz")["status"] == "ok"


def test_serve_dashboard_and_milvus_listen_on_loopback_only(served):
    import psutil

    def listeners(port: int) -> set[str]:
        return {c.laddr.ip for c in psutil.net_connections(kind="inet")
                if c.status == psutil.CONN_LISTEN and c.laddr.port == port}

    def loopback(ip: str) -> bool:
        address = ipaddress.ip_address(ip)
        return (getattr(address, "ipv4_mapped", None) or address).is_loopback

    milvus_port = int(served.milvus_uri.rsplit(":", 1)[1])
    for port in (served.settings.serve_port, served.settings.ray_dashboard_port, milvus_port):
        assert listeners(port) and all(loopback(ip) for ip in listeners(port)), (port, listeners(port))


def test_in_cluster_callers_use_a_deployment_handle(served, tiny_bundle):
    from ray import serve

    items = Bundle.load(tiny_bundle.folder).items()["item_id"].tolist()
    answer = serve.get_app_handle(APP_NAME).answer.remote(body_for(items, 1, k=3)).result(timeout_s=60)
    assert answer.path == "llm" and len(answer.items) == 3


def test_two_retriever_replicas_answer_while_another_client_writes(served, tiny_bundle):
    from ray import serve

    status = serve.status().applications[APP_NAME].deployments["Retriever"]
    assert status.replica_states.get("RUNNING") == 2
    items = Bundle.load(tiny_bundle.folder).items()["item_id"].tolist()
    client = connect(served.milvus_uri)
    scratch = ItemCollection(client, "writer_scratch").create(4)
    stop = threading.Event()
    written: list[object] = []

    def write() -> None:
        r = 0
        try:
            while not stop.is_set():
                scratch.upsert([{"item_id": f"w{r}", "vector": [1.0, 0, 0, 0], "title": "t", "category": "c",
                                 "in_stock": True, "imputed": False, "bundle_version": "x", "ts": float(r),
                                 "indexed_at": 0.0}])
                written.append(r)
                r += 1
        except Exception as exc:  # noqa: BLE001 - reported below
            written.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    results: list[object] = []

    def ask(r: int) -> None:
        try:
            results.append(len(post(served.serving_url, body_for(items, r % 20, k=5))["items"]))
        except Exception as exc:  # noqa: BLE001 - collected and reported
            results.append(exc)

    askers = [threading.Thread(target=ask, args=(r,)) for r in range(16)]
    for t in askers:
        t.start()
    for t in askers:
        t.join(120)
    stop.set()
    writer.join(30)
    client.close()
    assert results == [5] * 16
    assert written and all(isinstance(w, int) for w in written), written[-1:]


def rechosen_bundle(source: Path, dest: Path, lam: float) -> Bundle:
    """The same models with a re-chosen λ: a new bundle version (vectors unchanged)."""
    shutil.copytree(source, dest)
    manifest = json.loads((dest / MANIFEST).read_text())
    manifest["encoders"]["lstm"]["fusion"]["lam"] = lam
    manifest["version"] = bundle_version({"from": manifest["version"], "lam": lam})
    (dest / MANIFEST).write_text(json.dumps(manifest))
    return Bundle.load(dest)


def test_a_new_bundle_rolls_out_with_serve_deploy_without_a_failed_request(served, tiny_bundle, tmp_path):
    s = served.settings
    old = Bundle.load(tiny_bundle.folder)
    new = rechosen_bundle(tiny_bundle.folder, tmp_path / "new-bundle", 0.5 if old.fusion().lam != 0.5 else 0.3)
    client = connect(served.milvus_uri)
    build_index(client, new, s.milvus_collection, progress=False)
    client.close()
    config = tmp_path / "serve_config.yaml"
    config.write_text(yaml.safe_dump(serve_config(s, new.folder, served.milvus_uri)))
    items = old.items()["item_id"].tolist()
    failures: list[str] = []
    versions: list[str] = []
    stop = threading.Event()

    def steady() -> None:
        r = 0
        while not stop.is_set():
            try:
                versions.append(post(served.serving_url, body_for(items, r % 20, k=5))["model_version"])
            except Exception as exc:  # noqa: BLE001 - every failure is one too many
                failures.append(repr(exc))
            r += 1
            time.sleep(0.05)

    requester = threading.Thread(target=steady)
    requester.start()
    try:
        deploy = subprocess.run([str(Path(sys.executable).parent / "serve"), "deploy", str(config), "--address",
                                 f"http://127.0.0.1:{s.ray_dashboard_port}"], capture_output=True, text=True,
                                timeout=120, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
        assert deploy.returncode == 0, deploy.stderr[-2000:]
        deadline = time.monotonic() + 240  # until the old replicas have drained and only the new bundle answers
        while time.monotonic() < deadline and not (versions[-5:] == [new.version] * 5 and get(
                served.serving_url, "/version")["bundle_version"] == new.version):
            time.sleep(0.5)
    finally:
        stop.set()
        requester.join(120)
    assert get(served.serving_url, "/version")["bundle_version"] == new.version
    assert not failures, failures[:5]
    assert versions[0] == old.version and versions[-1] == new.version and len(versions) > 10
