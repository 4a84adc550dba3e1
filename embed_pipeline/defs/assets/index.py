"""The corpus re-embedded with the candidate model, as a FAISS index on disk."""

import dagster as dg

from embed_pipeline.defs.assets.common import cache_dir, read_corpus, shard_dir
from embed_pipeline.defs.resources import PipelineResource
from embed_pipeline.lib.corpus import split_shards
from embed_pipeline.lib.encoding import load_model, model_fingerprint
from embed_pipeline.lib.indexing import publish_index
from embed_pipeline.lib.shards import embed_shards, merge_shard_embeddings


@dg.asset(group_name="serving", kinds={"faiss"}, pool="gpu")
def corpus_index(context: dg.AssetExecutionContext, corpus: dict, embedding_model: dict, pipeline: PipelineResource) -> dg.MaterializeResult:
    """A FAISS index of every passage embedded by the candidate model, merged from its per-shard embeddings."""
    config = pipeline.load()
    model = load_model(embedding_model["model_dir"], threads=config.index.encode_threads)
    fingerprint = model_fingerprint(model)
    shards = split_shards(read_corpus(corpus), config.index.shards)
    done = embed_shards(model, fingerprint, shards, shard_dir(config, fingerprint), cache_dir(config),
                        config.encode_batch_size, config.corpus_prompt)
    ids, vectors = merge_shard_embeddings([s.path for s in done.values()])
    target = config.artifacts_dir / "indexes" / context.run_id
    meta = {"model_dir": embedding_model["model_dir"], "model_version": embedding_model["version"],
            "model_fingerprint": fingerprint}
    published = publish_index(ids, vectors, config.index, meta, target)
    encoded = sum(s.encoded for s in done.values())
    reused = sum(s.reused for s in done.values())
    return dg.MaterializeResult(
        value={"path": str(target), "type": published.type, "size": published.size, "model_fingerprint": fingerprint,
               "encoded": encoded, "reused": reused},
        metadata={
            "dagster/row_count": published.size,
            "index_type": published.type,
            "dimension": published.dimension,
            "shards": len(done),
            "passages_encoded": encoded,
            "passages_from_cache": reused,
            "index_path": dg.MetadataValue.path(str(target)),
        },
    )
