#!/usr/bin/env bash
# Renders every overlay and runs checkov (static security checks) on the result.
#   bash k8s/check.sh            # checkov in its own venv ($CHECKOV_VENV, made on first use)
# checkov is not in the project's dev extra: it pulls ~100 packages (about 300 MB).
# Renderer: kustomize or `kubectl kustomize` when on PATH, else k8s/kustomize_lite.py (the
# subset this folder uses; tests/k8s check it renders exactly what kustomize renders).
# checkov does not look inside custom resources, so the RayService's head and worker pod
# templates are also written out as Pods for it. Justified skips are checkov.io/skipN
# annotations on the resources (reasons included); any other finding fails this script.
set -euo pipefail
cd "$(dirname "$0")/.."

CHECKOV_VENV=${CHECKOV_VENV:-/tmp/checkov-venv}
CHECKOV_VERSION=${CHECKOV_VERSION:-3.3.30}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

if [ ! -x "$CHECKOV_VENV/bin/checkov" ]; then
    python3 -m venv "$CHECKOV_VENV"
    "$CHECKOV_VENV/bin/pip" install --disable-pip-version-check -q "checkov==$CHECKOV_VERSION"
fi
PY="$CHECKOV_VENV/bin/python"   # has PyYAML (a checkov dependency)

render() {
    if command -v kustomize >/dev/null; then
        kustomize build "$1"
    elif command -v kubectl >/dev/null; then
        kubectl kustomize "$1"
    else
        "$PY" k8s/kustomize_lite.py "$1"
    fi
}

for overlay in k8s/overlays/*/; do
    name=$(basename "$overlay")
    render "$overlay" > "$OUT/$name.yaml"
    "$PY" - "$OUT/$name.yaml" "$OUT/$name-ray-pods.yaml" <<'EOF'
import sys

import yaml

pods = []
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if doc and doc["kind"] == "RayService":
        cluster = doc["spec"]["rayClusterConfig"]
        groups = [("head", cluster["headGroupSpec"])] + [(g["groupName"], g) for g in cluster["workerGroupSpecs"]]
        for group, spec in groups:
            meta = spec["template"].get("metadata", {})
            pods.append({"apiVersion": "v1", "kind": "Pod",
                         "metadata": {"name": f"{doc['metadata']['name']}-ray-{group}",
                                      "namespace": doc["metadata"]["namespace"],
                                      **{k: meta[k] for k in ("labels", "annotations") if k in meta}},
                         "spec": spec["template"]["spec"]})
yaml.safe_dump_all(pods, open(sys.argv[2], "w"), sort_keys=False)
EOF
done

# --skip-download: no Prisma Cloud look-ups (offline); the exit code is non-zero on a finding
BC_SKIP_MAPPING=TRUE "$CHECKOV_VENV/bin/checkov" -d "$OUT" --framework kubernetes --skip-download \
    --compact --quiet -o cli 2>"$OUT/checkov.err" || { status=$?; cat "$OUT/checkov.err" >&2; exit $status; }
