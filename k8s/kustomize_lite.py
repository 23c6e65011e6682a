"""A small kustomize renderer for exactly the subset k8s/ uses, for machines without kustomize.

Prefer the real one: ``kustomize build DIR`` or ``kubectl kustomize DIR`` (tests/k8s and
k8s/check.sh use it when either is on PATH, and the tests check that this renderer's output
equals it). Supported, and nothing else (anything else raises ``Unsupported``):

- ``resources``: YAML files and folders holding a kustomization.yaml
- ``namespace``; ``labels`` with ``includeSelectors: false`` (metadata.labels only)
- ``images`` (``newName``/``newTag``/``digest``, on every ``containers``/``initContainers`` image)
- ``replicas`` (``spec.replicas`` of the named resources)
- ``configMapGenerator`` (``envs``, ``literals``, ``behavior`` create/merge/replace) with
  ``generatorOptions.disableNameSuffixHash: true``
- ``patches`` holding inline JSON 6902 operations (add/replace/remove), targets selected by
  ``kind``/``name``/``labelSelector`` (equality terms)

``python k8s/kustomize_lite.py DIR`` prints the rendered YAML stream.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml

KNOWN_KEYS = {"apiVersion", "kind", "resources", "namespace", "labels", "images", "replicas",
              "configMapGenerator", "generatorOptions", "patches"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "PersistentVolume", "StorageClass", "PriorityClass", "IngressClass",
                  "ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"}


class Unsupported(ValueError):
    """A kustomization feature this renderer does not implement."""


def build(folder: str | Path) -> list[dict[str, Any]]:
    """The resources ``kustomize build folder`` would print (order aside)."""
    folder = Path(folder)
    kust = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(kust) - KNOWN_KEYS
    if unknown:
        raise Unsupported(f"{folder}: kustomization keys {sorted(unknown)}")
    docs: list[dict[str, Any]] = []
    for entry in kust.get("resources", []):
        path = folder / entry
        if path.is_dir():
            docs.extend(build(path))
        else:
            docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    options = kust.get("generatorOptions", {})
    for gen in kust.get("configMapGenerator", []):
        if not options.get("disableNameSuffixHash"):
            raise Unsupported("configMapGenerator without disableNameSuffixHash: true")
        _generate_config_map(folder, gen, docs)
    for patch in kust.get("patches", []):
        _apply_patch(patch, docs)
    for rep in kust.get("replicas", []):
        hits = [d for d in docs if d["metadata"]["name"] == rep["name"] and "replicas" in d.get("spec", {})]
        if not hits:
            raise Unsupported(f"replicas: no resource named {rep['name']}")
        for d in hits:
            d["spec"]["replicas"] = rep["count"]
    for image in kust.get("images", []):
        for d in docs:
            _set_images(d, image)
    for group in kust.get("labels", []):
        if group.get("includeSelectors") or group.get("includeTemplates"):
            raise Unsupported("labels with includeSelectors/includeTemplates")
        for d in docs:
            d["metadata"].setdefault("labels", {}).update(group["pairs"])
    if "namespace" in kust:
        for d in docs:
            if d["kind"] not in CLUSTER_SCOPED:
                d["metadata"]["namespace"] = kust["namespace"]
    return docs


def _generate_config_map(folder: Path, gen: dict[str, Any], docs: list[dict[str, Any]]) -> None:
    unknown = set(gen) - {"name", "envs", "literals", "behavior"}
    if unknown:
        raise Unsupported(f"configMapGenerator keys {sorted(unknown)}")
    data: dict[str, str] = {}
    for env_file in gen.get("envs", []):
        for line in (folder / env_file).read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                key, _, value = line.partition("=")
                data[key.strip()] = value
    for literal in gen.get("literals", []):
        key, _, value = literal.partition("=")
        data[key] = value
    behavior = gen.get("behavior", "create")
    existing = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == gen["name"]]
    if behavior == "create":
        if existing:
            raise Unsupported(f"ConfigMap {gen['name']} generated twice")
        docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}, "data": data})
    elif behavior in ("merge", "replace") and len(existing) == 1:
        if behavior == "merge":
            existing[0].setdefault("data", {}).update(data)
        else:
            existing[0]["data"] = data
    else:
        raise Unsupported(f"configMapGenerator behavior {behavior!r} for {gen['name']}")


def _matches(doc: dict[str, Any], target: dict[str, Any]) -> bool:
    unknown = set(target) - {"kind", "name", "labelSelector"}
    if unknown:
        raise Unsupported(f"patch target keys {sorted(unknown)}")
    if "kind" in target and doc["kind"] != target["kind"]:
        return False
    if "name" in target and doc["metadata"]["name"] != target["name"]:
        return False
    labels = doc["metadata"].get("labels", {})
    for term in filter(None, target.get("labelSelector", "").split(",")):
        if "=" not in term or "!=" in term:
            raise Unsupported(f"labelSelector term {term!r}")
        key, value = (s.strip() for s in term.replace("==", "=").split("=", 1))
        if labels.get(key) != value:
            return False
    return True


def _apply_patch(patch: dict[str, Any], docs: list[dict[str, Any]]) -> None:
    if set(patch) != {"target", "patch"}:
        raise Unsupported("patches entries need exactly an inline `patch` and a `target`")
    ops = yaml.safe_load(patch["patch"])
    if not isinstance(ops, list):
        raise Unsupported("strategic-merge patches (only JSON 6902 operation lists are supported)")
    hits = [d for d in docs if _matches(d, patch["target"])]
    if not hits:
        raise Unsupported(f"patch target {patch['target']} matches nothing")
    for doc in hits:
        for op in ops:
            _json6902(doc, op)


def _json6902(doc: dict[str, Any], op: dict[str, Any]) -> None:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].lstrip("/").split("/")]
    parent: Any = doc
    for part in parts[:-1]:
        parent = parent[int(part)] if isinstance(parent, list) else parent[part]
    last = parts[-1]
    kind = op["op"]
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last)
        if kind == "add":
            parent.insert(index, copy.deepcopy(op["value"]))
        elif kind == "replace":
            parent[index] = copy.deepcopy(op["value"])
        elif kind == "remove":
            del parent[index]
        else:
            raise Unsupported(f"JSON patch op {kind!r}")
    else:
        if kind in ("replace", "remove") and last not in parent:
            raise KeyError(f"{op['path']}: nothing to {kind}")
        if kind in ("add", "replace"):
            parent[last] = copy.deepcopy(op["value"])
        elif kind == "remove":
            del parent[last]
        else:
            raise Unsupported(f"JSON patch op {kind!r}")


def _split_image(image: str) -> tuple[str, str]:
    """("name", "tag or @digest suffix") of an image reference."""
    if "@" in image:
        name, digest = image.split("@", 1)
        return name, "@" + digest
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return image[:colon], image[colon:]
    return image, ""


def _set_images(node: Any, image: dict[str, Any]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                for container in value:
                    if isinstance(container, dict) and "image" in container:
                        name, suffix = _split_image(container["image"])
                        if name == image["name"]:
                            if "digest" in image:
                                suffix = "@" + image["digest"]
                            elif "newTag" in image:
                                suffix = ":" + str(image["newTag"])
                            container["image"] = image.get("newName", name) + suffix
            _set_images(value, image)
    elif isinstance(node, list):
        for item in node:
            _set_images(item, image)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: kustomize_lite.py KUSTOMIZATION_DIR", file=sys.stderr)
        return 2
    yaml.safe_dump_all(build(argv[0]), sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
