"""The served model's corpus: per-shard embeddings (what a corpus change or a new champion re-embeds) and the served index built from them."""

import dagster as dg

from embed_pipeline.defs.assets.common import (
    cache_dir,
    md_window,
    output_dir,
    passage_windows,
    ray_encoding,
    ray_metadata,
    served_model_ref,
    shard_dir,
    window_meta,
)
from embed_pipeline.defs.partitions import corpus_shards
from embed_pipeline.defs.resources import PipelineResource
from embed_pipeline.lib.artifacts import IndexHandle
from embed_pipeline.lib.corpus import dataset_for, shard_keys
from embed_pipeline.lib.encoding import load_model, model_fingerprint
from embed_pipeline.lib.indexing import build_index_from_shards
from embed_pipeline.lib.promotion import read_served, record_reindex
from embed_pipeline.lib.shards import SHARD_SUFFIX, embed_shards, shard_paths


@dg.asset(
    group_name="serving",
    kinds={"numpy"},
    pool="gpu",
    partitions_def=corpus_shards,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=["corpus"],  # lineage: the passages come from the configured corpus file, read as it is now
)
def corpus_embeddings(context: dg.AssetExecutionContext, pipeline: PipelineResource) -> dg.MaterializeResult[None]:
    """Embeddings of one corpus shard (or a range of shards in one run) by the served model, one Arrow file per shard."""
    config = pipeline.config
    model_ref = served_model_ref(config)
    model = load_model(model_ref, threads=config.index.encode_threads)
    fingerprint = model_fingerprint(model)
    dataset = dataset_for(config, context.log.info)
    wanted = [key for key in context.partition_keys if key in set(dataset.keys)]
    context.log.info(f"corpus_embeddings: {len(wanted)} shard(s), {sum(dataset.shard_rows(k) for k in wanted)} passages, "
                     f"model {model_ref}")
    cluster = ray_encoding(context, config)
    windows = passage_windows(config, model)
    # Shards this model has no file for under the current window setting (a setting changed, or
    # files pruned) are embedded too: the served index is built from every shard's file.
    absent = [k for k in dataset.keys if k not in wanted and not (shard_dir(config, fingerprint, windows) / f"{k}{SHARD_SUFFIX}").exists()]
    if absent:
        context.log.info(f"corpus_embeddings: {len(absent)} more shard(s) have no embeddings with this model and window "
                         f"setting yet; embedding them too")
        wanted += absent
    done = embed_shards(model, fingerprint, dataset, wanted, shard_dir(config, fingerprint, windows), cache_dir(config),
                        config.encode_batch_size, config.corpus_prompt, config.index.encode_precision,
                        config.index.encode_processes, config.index.encode_threads, context.log.info, cluster, windows)
    rows = ["| shard | passages | encoded | from cache | removed |", "|---|---|---|---|---|"]
    rows += [f"| {k} | {s.passages} | {s.encoded} | {s.reused} | {s.removed} |" for k, s in done.items()]
    # No value: one run may materialise many partitions, which Dagster's IO managers cannot store.
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": sum(s.passages for s in done.values()),
            "passages_encoded": sum(s.encoded for s in done.values()),
            "passages_from_cache": sum(s.reused for s in done.values()),
            "passages_removed": sum(s.removed for s in done.values()),
            "encode_precision": ", ".join(sorted({s.precision for s in done.values()})),
            "shards": len(done),
            "model": model_ref,
            "model_fingerprint": fingerprint,
            "long_passages": sum(s.long_passages for s in done.values()),
            "window": md_window(windows),
            "dir": dg.MetadataValue.path(str(shard_dir(config, fingerprint, windows))),
            "per_shard": dg.MetadataValue.md("\n".join(rows)),
            **ray_metadata(cluster),
        },
    )


@dg.asset(group_name="serving", kinds={"faiss"}, deps=[corpus_embeddings])
def served_index(context: dg.AssetExecutionContext, pipeline: PipelineResource) -> dg.MaterializeResult:
    """The served model's index (FAISS + BM25) rebuilt from its shard embeddings; the served pointer is switched to it."""
    config = pipeline.config
    served = read_served(config.artifacts_dir)
    model_ref = served["model_dir"] if served else config.resolved_base_model
    model = load_model(model_ref)
    fingerprint = model_fingerprint(model)
    windows = passage_windows(config, model)
    dataset = dataset_for(config, context.log.info)
    built = build_index_from_shards(shard_paths(shard_dir(config, fingerprint, windows), shard_keys(config.index.shards)),
                                    config.index, {"model_dir": model_ref, "model_fingerprint": fingerprint,
                                                   "windows": window_meta(windows)}, output_dir(context, config),
                                    dataset, config.retrieval.lexical_language, context.log.info)
    switched = served is not None and record_reindex(
        config.artifacts_dir, served["model_version"], str(built.dense.path), str(built.lexical_path), by=f"run {context.run_id}"
    ) is not None
    return dg.MaterializeResult(
        value=IndexHandle(str(built.dense.path), built.dense.type, built.dense.size, fingerprint, 0, 0, str(built.lexical_path)),
        metadata={
            "dagster/row_count": built.dense.size,
            "index_type": built.dense.type,
            "model": model_ref,
            "served_pointer_switched": switched,
            "index_path": dg.MetadataValue.path(str(built.dense.path)),
            "lexical_index_path": dg.MetadataValue.path(str(built.lexical_path)),
        },
    )
