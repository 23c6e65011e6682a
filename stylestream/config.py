"""One configuration object for every part of stylestream.

Every field is read from an environment variable ``STYLESTREAM_<FIELD>`` (upper case);
two well-known variables keep their usual names: ``KAFKA_BOOTSTRAP_SERVERS`` and
``MILVUS_URI``. When either of those is set, the embedded dev stack starts nothing
for that part and connects to the given service instead.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

PREFIX = "STYLESTREAM_"
PLAIN_NAMES = {name: name.upper() for name in (
    "kafka_bootstrap_servers", "kafka_security_protocol", "kafka_sasl_mechanism", "kafka_sasl_username",
    "kafka_sasl_password", "kafka_ssl_cafile", "milvus_uri", "milvus_token")}


def setting(default: Any, doc: str, secret: bool = False) -> Any:
    """A settings field whose ``doc`` feeds the README table and ``stylestream config``; a
    ``secret`` one is left out of reprs and shown masked."""
    return field(default=default, repr=not secret, metadata={"doc": doc, "secret": secret})


MIN_SESSION_TIMEOUT = 6.0  # Kafka's default group.min.session.timeout.ms, which noida-db enforces too


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    """Runtime settings. Field docs double as the README's configuration table."""

    home: Path = setting(Path(".stylestream"), "working folder: data, bundle, broker files, Milvus Lite data, logs")
    kafka_bootstrap_servers: str = setting("", "external Kafka; empty = start the embedded broker")
    kafka_security_protocol: str = setting("PLAINTEXT", "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (Strimzi's "
                                                        "SCRAM listener); every Kafka client of stylestream uses it")
    kafka_sasl_mechanism: str = setting("SCRAM-SHA-512", "SASL mechanism: SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN")
    kafka_sasl_username: str = setting("", "SASL user (Strimzi: the KafkaUser's name)")
    kafka_sasl_password: str = setting("", "SASL password (from a Secret; never logged)", secret=True)
    kafka_ssl_cafile: str = setting("", "CA certificate to trust for TLS (Strimzi: the cluster CA's ca.crt); "
                                        "empty = the system's")
    broker: str = setting("noida", "embedded broker: noida (persistent, exact offsets) or tansu (memory, fast)")
    milvus_uri: str = setting("", "external Milvus; empty = the embedded Milvus Lite server (data under home)")
    topic_partitions: int = setting(4, "partitions of the event topics and of the table changelog")
    sequence_length: int = setting(50, "events kept per user in the rolling sequence")
    trigger_every_clicks: int = setting(5, "recommend after every k-th click (0 = never on clicks)")
    trigger_idle_seconds: float = setting(30.0,
                                          "recommend when a user with unserved clicks is idle this long (0 = off)")
    trigger_mode: str = setting("live", "live: purchases, every k-th click and idle shoppers trigger; every-event: "
                                        "every event does (replay evaluation); off: nothing does")
    trigger_from_ts: float = setting(0.0, "events older than this (event time, s) fill sequences but trigger "
                                          "nothing: a replay's warm-up history")
    recs_k: int = setting(10, "items per recommendation")
    dataset: Path = setting(Path(""), "data set folder the worker's recommender loads (empty = home/data/synth)")
    worker_id: str = setting("worker-1", "static group member id of a stream worker (KIP-345): "
                                         "a restarted worker takes its partitions back at once")
    worker_web_bind: str = setting("127.0.0.1", "address the worker's web view binds (0.0.0.0 in a pod)")
    worker_web_host: str = setting("127.0.0.1", "address other workers reach this one's web view at (the pod IP "
                                                "in a cluster): /users/<id>/ is routed to the worker owning <id>")
    table_store: str = setting("rocksdb", "where a worker keeps its table partitions: rocksdb (on disk under home, "
                                          "recovery reads only the changelog written since) or memory (rebuilt from "
                                          "the whole changelog at every start)")
    rocksdb_write_buffer_mb: int = setting(8, "RocksDB memtable size of each table partition, MiB (up to 2 per "
                                              "partition; Faust's default, 3 of 64, let a worker grow by GiBs)")
    rocksdb_block_cache_mb: int = setting(16, "RocksDB block cache of each table partition, MiB (Faust's default: "
                                              "2 GiB each)")
    table_standby_replicas: int = setting(0, "standby copies of each table partition kept warm on other workers "
                                             "(1 in a cluster: a failed worker's shoppers move without a rebuild)")
    worker_web_port: int = setting(6066, "Faust worker web port (stats, sequences)")
    fetch_idle_wait_ms: float = setting(5.0, "minimum time an empty fetch takes (client-side); stops idle spinning "
                                             "on brokers that ignore fetch.max.wait.ms (noida-db); 0 = off")
    event_loop: str = setting("aio", "stream worker's asyncio event loop: aio (the standard library's) or uvloop "
                                     "(one worker 1.14× the events/s here, bench/results/stream_uvloop.json)")
    consumer_fast_path: bool = setting(True, "hand each fetched record to Faust's agents without the four tasks per "
                                             "record of its consumer loop (stylestream/consumer_fast_path.py); "
                                             "false = Faust's own loop")
    stream_batch_max_events: int = setting(500, "stream worker: most events applied as one batch (each shopper's "
                                                "table value is written once per batch)")
    stream_batch_wait_ms: float = setting(10.0, "stream worker: longest wait for a batch to fill")
    producer_linger_ms: float = setting(2.0,
                                        "how long the worker's producer batches sends (table changelog, recs.out)")
    commit_interval: float = setting(1.0, "seconds between offset commits")
    session_timeout: float = setting(6.0, "consumer group session timeout; small so joins take seconds (at least 6 s: "
                                           "brokers refuse shorter)")
    ray_dashboard_port: int = setting(8265, "local Ray dashboard port (127.0.0.1 only)")
    bundle: Path = setting(Path(""), "model bundle folder (empty = home/bundle); written by `stylestream train`")
    recommender: str = setting("auto", "what answers the stream: serving (the gate, then the LLM via Ray Serve, "
                                       "with the fast path answering what the gate declines and what Serve does "
                                       "not answer in time), fast (the fast path alone), baseline; auto = serving "
                                       "when a bundle and a serving URL exist, else fast with a bundle, else "
                                       "baseline")
    fast_path: str = setting("last-title", "the fast path: last-title (the bundle's last-title mix-up) or id-only "
                                           "(SASRec alone: the fast path of earlier versions, kept to compare)")
    fast_path_search: str = setting("auto", "the fast path's search over the stored vectors: exact, ivf (an "
                                            "in-process inverted file: each query reads about 1/16 of them) or auto "
                                            "(exact up to 50,000 items, ivf above)")
    gate: str = setting("bundle", "the gate before the LLM path: bundle (its choice, fitted on validation), open "
                                  "(every event to the LLM path) or closed (none)")
    serving_url: str = setting("", "Ray Serve ingress the stream calls (empty = none; `stylestream up` sets it)")
    serving_timeout_ms: float = setting(4000.0, "deadline for an LLM answer; later, the stream answers from "
                                                "the fast path instead")
    serving_max_in_flight: int = setting(8, "most LLM requests a stream worker keeps open at once (the limit adapts "
                                            "below it: halved on a missed deadline); beyond, the fast path answers")
    serve_host: str = setting("127.0.0.1", "address Ray Serve's HTTP proxy binds")
    serve_port: int = setting(8000, "Ray Serve HTTP port (POST /recommend, GET /healthz, GET /version)")
    gen_engine: str = setting("onnx", "Generator engine: onnx (ONNX Runtime, CUDA provider first) or torch")
    gen_num_gpus: str = setting("auto", "GPUs per Generator replica: auto (1 when Ray sees a GPU, else 0) "
                                        "or a number")
    gen_threads: int = setting(0, "CPU threads per Generator replica (0 = one per core); on a small machine leave "
                                  "cores to the stream workers and the broker")
    gen_max_batch_size: int = setting(0, "Generator dynamic batching: most prompts in one batch; 0 = auto: 16 on "
                                         "a GPU, 2 on a CPU (prefill-bound there: bigger batches only wait longer)")
    gen_batch_wait_ms: float = setting(50.0, "Generator dynamic batching: longest wait for a batch to fill")
    gen_min_replicas: int = setting(1, "Generator autoscaling: fewest replicas")
    gen_max_replicas: int = setting(2, "Generator autoscaling: most replicas")
    gen_target_ongoing_requests: float = setting(8.0, "Generator autoscaling: ongoing requests per replica "
                                                      "it aims for")
    retriever_replicas: int = setting(1, "Retriever replicas (title encoder, SASRec, Milvus search)")
    max_request_history: int = setting(200, "most history events a /recommend request may carry")
    milvus_collection: str = setting("stylestream_items", "Milvus alias of the live item collection")
    milvus_token: str = setting("", "Milvus token (user:password or API key) for a secured server; never logged",
                                secret=True)
    index_batch_size: int = setting(256, "indexer: most catalog updates written to Milvus in one upsert")
    index_batch_wait_ms: float = setting(200.0, "indexer: longest wait for a batch to fill (an update is searchable "
                                                "this long after it arrives, plus the write)")
    indexer_web_port: int = setting(6067, "indexer worker web port (/stats/)")
    log_level: str = setting("INFO", "logging level")

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``env`` (default: ``os.environ``), then apply ``overrides``."""
        env = dict(os.environ) if env is None else env
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = env_name(f.name)
            if name in env and env[name] != "":
                values[f.name] = _parse(name, env[name], hints[f.name])
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.broker not in ("noida", "tansu"):
            raise ConfigError(f"{env_name('broker')} must be 'noida' or 'tansu', not {self.broker!r}")
        if self.kafka_security_protocol.upper() != "PLAINTEXT" and not self.kafka_bootstrap_servers:
            raise ConfigError(f"{env_name('kafka_security_protocol')}={self.kafka_security_protocol} needs "
                              f"{env_name('kafka_bootstrap_servers')}: the embedded broker speaks PLAINTEXT only")
        if self.table_store not in ("rocksdb", "memory"):
            raise ConfigError(f"{env_name('table_store')} must be rocksdb or memory, not {self.table_store!r}")
        if self.recommender not in ("auto", "serving", "fast", "baseline"):
            raise ConfigError(f"{env_name('recommender')} must be auto, serving, fast or baseline, "
                              f"not {self.recommender!r}")
        if self.fast_path not in ("last-title", "id-only"):
            raise ConfigError(f"{env_name('fast_path')} must be last-title or id-only, not {self.fast_path!r}")
        if self.fast_path_search not in ("auto", "exact", "ivf"):
            raise ConfigError(f"{env_name('fast_path_search')} must be auto, exact or ivf, "
                              f"not {self.fast_path_search!r}")
        if self.gate not in ("bundle", "open", "closed"):
            raise ConfigError(f"{env_name('gate')} must be bundle, open or closed, not {self.gate!r}")
        if self.trigger_mode not in ("live", "every-event", "off"):
            raise ConfigError(f"{env_name('trigger_mode')} must be live, every-event or off, not {self.trigger_mode!r}")
        if self.event_loop not in ("aio", "uvloop"):
            raise ConfigError(f"{env_name('event_loop')} must be aio or uvloop, not {self.event_loop!r}")
        if self.gen_engine not in ("onnx", "torch"):
            raise ConfigError(f"{env_name('gen_engine')} must be onnx or torch, not {self.gen_engine!r}")
        if self.gen_num_gpus != "auto":
            try:
                float(self.gen_num_gpus)
            except ValueError:
                raise ConfigError(f"{env_name('gen_num_gpus')} must be auto or a number, "
                                  f"not {self.gen_num_gpus!r}") from None
        if not 1 <= self.gen_min_replicas <= self.gen_max_replicas:
            raise ConfigError(f"{env_name('gen_min_replicas')} must be at least 1 and at most "
                              f"{env_name('gen_max_replicas')}")
        if self.session_timeout < MIN_SESSION_TIMEOUT:  # the broker would refuse the join, and the worker wait forever
            raise ConfigError(f"{env_name('session_timeout')} must be at least {MIN_SESSION_TIMEOUT:g} s (brokers "
                              f"refuse shorter ones: group.min.session.timeout.ms), not {self.session_timeout:g}")
        if self.gen_max_batch_size < 0:
            raise ConfigError(f"{env_name('gen_max_batch_size')} must be 0 (auto) or more, "
                              f"not {self.gen_max_batch_size}")
        for name in ("topic_partitions", "sequence_length", "recs_k", "serving_max_in_flight",
                     "stream_batch_max_events", "retriever_replicas", "max_request_history", "index_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{env_name(name)} must be at least 1, not {getattr(self, name)}")

    @property
    def bundle_dir(self) -> Path:
        return self.bundle if str(self.bundle) not in ("", ".") else self.home / "bundle"

    @property
    def dataset_dir(self) -> Path:
        return self.dataset if str(self.dataset) not in ("", ".") else self.home / "data" / "synth"

    def as_env(self) -> dict[str, str]:
        """Environment variables that reproduce these settings in a child process."""
        return {env_name(k): str(v) for k, v in asdict(self).items()}


def env_name(field_name: str) -> str:
    return PLAIN_NAMES.get(field_name, PREFIX + field_name.upper())


def _parse(name: str, raw: str, kind: Any) -> Any:
    try:
        if kind is Path:
            return Path(raw)
        if kind is bool:
            return raw.lower() in ("1", "true", "yes", "on")
        return kind(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a valid {getattr(kind, '__name__', kind)}") from None


def documented_settings() -> list[tuple[str, str, str]]:
    """(variable, default, meaning) rows for the README and ``stylestream config``."""
    return [(env_name(f.name), str(f.default), f.metadata.get("doc", "")) for f in fields(Settings)]


def is_secret(field_name: str) -> bool:
    return any(f.name == field_name and f.metadata.get("secret") for f in fields(Settings))
