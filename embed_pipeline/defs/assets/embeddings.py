"""Corpus embeddings per shard, by the served model: what a corpus change or a new champion re-embeds."""

import dagster as dg

from embed_pipeline.defs.assets.common import cache_dir, served_model_ref, shard_dir
from embed_pipeline.defs.partitions import corpus_shards
from embed_pipeline.defs.resources import PipelineResource
from embed_pipeline.lib.corpus import load_corpus, split_shards
from embed_pipeline.lib.encoding import load_model, model_fingerprint
from embed_pipeline.lib.indexing import publish_index
from embed_pipeline.lib.shards import embed_shards


@dg.asset(
    group_name="serving",
    kinds={"numpy"},
    pool="gpu",
    partitions_def=corpus_shards,
    backfill_policy=dg.BackfillPolicy.single_run(),
)
def corpus_embeddings(context: dg.AssetExecutionContext, pipeline: PipelineResource) -> dg.MaterializeResult[None]:
    """Embeddings of one corpus shard (or a range of shards in one run) by the served model, one .npz per shard."""
    config = pipeline.load()
    model_ref = served_model_ref(config)
    model = load_model(model_ref, threads=config.index.encode_threads)
    fingerprint = model_fingerprint(model)
    shards = split_shards(load_corpus(config.corpus).passages, config.index.shards)
    wanted = {key: shards[key] for key in context.partition_keys if key in shards}
    done = embed_shards(model, fingerprint, wanted, shard_dir(config, fingerprint), cache_dir(config),
                        config.encode_batch_size, config.corpus_prompt)
    rows = ["| shard | passages | encoded | from cache | removed |", "|---|---|---|---|---|"]
    rows += [f"| {k} | {s.passages} | {s.encoded} | {s.reused} | {s.removed} |" for k, s in done.items()]
    # No value: one run may materialise many partitions, which Dagster's IO managers cannot store.
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": sum(s.passages for s in done.values()),
            "passages_encoded": sum(s.encoded for s in done.values()),
            "passages_from_cache": sum(s.reused for s in done.values()),
            "passages_removed": sum(s.removed for s in done.values()),
            "shards": len(done),
            "model": model_ref,
            "model_fingerprint": fingerprint,
            "dir": dg.MetadataValue.path(str(shard_dir(config, fingerprint))),
            "per_shard": dg.MetadataValue.md("\n".join(rows)),
        },
    )


@dg.asset(group_name="serving", kinds={"faiss"}, deps=[corpus_embeddings])
def served_index(context: dg.AssetExecutionContext, pipeline: PipelineResource) -> dg.MaterializeResult:
    """The served model's index rebuilt from its shard embeddings; the served pointer is switched to it."""
    from embed_pipeline.lib.shards import merge_shard_embeddings, shard_paths
    from embed_pipeline.lib.corpus import shard_keys
    from embed_pipeline.lib.promotion import read_served, write_served

    config = pipeline.load()
    model_ref = served_model_ref(config)
    fingerprint = model_fingerprint(load_model(model_ref))
    ids, vectors = merge_shard_embeddings(shard_paths(shard_dir(config, fingerprint), shard_keys(config.index.shards)))
    target = config.artifacts_dir / "indexes" / f"served-{context.run_id}"
    published = publish_index(ids, vectors, config.index, {"model_dir": model_ref, "model_fingerprint": fingerprint}, target)
    served = read_served(config.artifacts_dir)
    switched = served is not None and served["model_dir"] == model_ref
    if switched:
        write_served(config.artifacts_dir, {k: v for k, v in served.items() if k != "served_since"} | {"index_path": str(target)})
    return dg.MaterializeResult(
        value={"path": str(target), "type": published.type, "size": published.size},
        metadata={
            "dagster/row_count": published.size,
            "index_type": published.type,
            "model": model_ref,
            "served_pointer_switched": switched,
            "index_path": dg.MetadataValue.path(str(target)),
        },
    )
