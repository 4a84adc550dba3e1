"""The corpus re-embedded with the candidate model, as a FAISS index (and a BM25 index) on disk."""

import dagster as dg

from embed_pipeline.defs.assets.common import (
    cache_dir,
    md_window,
    output_dir,
    passage_windows,
    ray_encoding,
    ray_metadata,
    read_corpus,
    shard_dir,
    window_meta,
)
from embed_pipeline.defs.resources import PipelineResource
from embed_pipeline.lib.artifacts import CorpusHandle, IndexHandle, ModelHandle
from embed_pipeline.lib.encoding import load_model, model_fingerprint
from embed_pipeline.lib.indexing import build_index_from_shards
from embed_pipeline.lib.shards import embed_shards


@dg.asset(group_name="serving", kinds={"faiss"}, pool="gpu")
def corpus_index(context: dg.AssetExecutionContext, corpus: CorpusHandle, embedding_model: ModelHandle,
                 pipeline: PipelineResource) -> dg.MaterializeResult:
    """A FAISS index of every passage embedded by the candidate model (merged from per-shard embeddings), plus BM25 of the same passages."""
    config = pipeline.config
    model = load_model(embedding_model.model_dir, threads=config.index.encode_threads)
    fingerprint = model_fingerprint(model)
    dataset = read_corpus(corpus)
    context.log.info(f"corpus_index: embedding {len(dataset)} passages in {dataset.num_shards} shards with the candidate "
                     f"v{embedding_model.version} (cached passages are reused)")
    cluster = ray_encoding(context, config)
    windows = passage_windows(config, model)
    done = embed_shards(model, fingerprint, dataset, dataset.keys, shard_dir(config, fingerprint, windows), cache_dir(config),
                        config.encode_batch_size, config.corpus_prompt, config.index.encode_precision,
                        config.index.encode_processes, config.index.encode_threads, context.log.info, cluster, windows)
    # The precision of the corpus vectors goes into the candidate's retrieval spec: served queries are encoded alike.
    meta = {"model_dir": embedding_model.model_dir, "model_version": embedding_model.version, "model_fingerprint": fingerprint,
            "encode_precision": ", ".join(sorted({s.precision for s in done.values()})),
            "windows": window_meta(windows)}
    built = build_index_from_shards([s.path for s in done.values()], config.index, meta, output_dir(context, config),
                                    dataset, config.retrieval.lexical_language, context.log.info)
    encoded = sum(s.encoded for s in done.values())
    reused = sum(s.reused for s in done.values())
    return dg.MaterializeResult(
        value=IndexHandle(str(built.dense.path), built.dense.type, built.dense.size, fingerprint, encoded, reused,
                          str(built.lexical_path or "")),
        metadata={
            "dagster/row_count": built.dense.size,
            "index_type": built.dense.type,
            "dimension": built.dense.dimension,
            "shards": len(done),
            "passages_encoded": encoded,
            "passages_from_cache": reused,
            "long_passages": sum(s.long_passages for s in done.values()),
            "window": md_window(windows),
            "encode_precision": ", ".join(sorted({s.precision for s in done.values()})),
            "index_path": dg.MetadataValue.path(str(built.dense.path)),
            "lexical_index_path": dg.MetadataValue.path(str(built.lexical_path)),
            "config_hash": pipeline.config_hash,
            **ray_metadata(cluster),
        },
    )
