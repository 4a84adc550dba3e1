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


def eval_split_path(config: PipelineConfig) -> Path:
    """Where curated_pairs writes the eval split it holds out when the config names no `eval` set."""
    return data_dir(config) / "eval_split.parquet"


def load_eval_set(config: PipelineConfig, passage_ids: set[str]):
    """The held-out eval set as an `EvalSet` plus the validated rows (with `segment` when given).

    With no `eval` in the config, the split that curated_pairs held out (`eval_split_path`) is the
    eval set, so eval_report and the leakage check always see the same queries.
    """
    from embed_pipeline.lib.evaluation import EvalSet
    from embed_pipeline.lib.pairs import LabelledPairs, load_labelled_pairs, relevance_map

    if config.eval is None:
        path = eval_split_path(config)
        if not path.exists():
            raise ValueError(f"no eval set in the config and no held-out split at {path}: materialise curated_pairs first")
        split = pd.read_parquet(path)
        loaded = LabelledPairs(split, split.iloc[0:0].assign(reason=""), len(split))
    else:
        loaded = load_labelled_pairs(config.eval, passage_ids)
    if loaded.pairs.empty:
        raise ValueError(f"the eval set {config.eval or eval_split_path(config)} has no usable rows ({len(loaded.quarantine)} quarantined)")
    queries = loaded.pairs.drop_duplicates("query_id").set_index("query_id")["query"].to_dict()
    return EvalSet(queries=queries, relevant=relevance_map(loaded.pairs)), loaded


def embed(config: PipelineConfig, model_ref: str, passages: pd.DataFrame, queries: list[str]):
    """`lib.embedding.embed_corpus_and_queries` with the config's cache, batch size, prompts and threads."""
    from embed_pipeline.lib.corpus import passage_texts
    from embed_pipeline.lib.encoding import embed_corpus_and_queries

    return embed_corpus_and_queries(model_ref, passage_texts(passages), queries, cache_dir(config),
                                    config.encode_batch_size, config.corpus_prompt, config.query_prompt,
                                    config.index.encode_threads)


def shard_dir(config: PipelineConfig, fingerprint: str) -> Path:
    """Per-shard embedding files of one model (by content fingerprint)."""
    return config.artifacts_dir / "embeddings" / fingerprint


def served_model_ref(config: PipelineConfig) -> str:
    """The model serving queries: the served pointer's model folder, else the base model."""
    from embed_pipeline.lib.promotion import read_served

    served = read_served(config.artifacts_dir)
    return served["model_dir"] if served else config.resolved_base_model
