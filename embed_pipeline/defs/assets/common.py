"""Small helpers shared by asset modules: artifact locations and reading stage outputs."""

from pathlib import Path

import pandas as pd

from embed_pipeline.lib.config import PipelineConfig


def data_dir(config: PipelineConfig) -> Path:
    return config.artifacts_dir / "data"


def cache_dir(config: PipelineConfig) -> Path:
    return config.artifacts_dir / "embedding_cache"


def read_corpus(handle: dict) -> pd.DataFrame:
    return pd.read_parquet(handle["path"])


def load_eval_set(config: PipelineConfig, passage_ids: set[str]):
    """The held-out eval set as an `EvalSet` plus the validated rows (with `segment` when given)."""
    from embed_pipeline.lib.evaluation import EvalSet
    from embed_pipeline.lib.pairs import load_labelled_pairs, relevance_map

    loaded = load_labelled_pairs(config.eval, passage_ids)
    if loaded.pairs.empty:
        raise ValueError(f"the eval set {config.eval} has no usable rows ({len(loaded.quarantine)} quarantined)")
    queries = loaded.pairs.drop_duplicates("query_id").set_index("query_id")["query"].to_dict()
    return EvalSet(queries=queries, relevant=relevance_map(loaded.pairs)), loaded


def encode_passages(model, fingerprint: str, config: PipelineConfig, passages: pd.DataFrame):
    """Corpus embeddings through the shared on-disk cache: (vectors, EncodeStats)."""
    from embed_pipeline.lib.corpus import passage_texts
    from embed_pipeline.lib.embedding import encode_cached

    return encode_cached(model, passage_texts(passages), cache_dir(config), fingerprint,
                         config.encode_batch_size, config.corpus_prompt)


def encode_queries(model, fingerprint: str, config: PipelineConfig, queries: list[str]):
    from embed_pipeline.lib.embedding import encode_cached

    return encode_cached(model, queries, cache_dir(config), fingerprint,
                         config.encode_batch_size, config.query_prompt, progress=False)
