"""The corpus re-embedded with the candidate model, as a FAISS index on disk."""

import dagster as dg

from embed_pipeline.defs.assets.common import encode_passages, read_corpus
from embed_pipeline.defs.resources import PipelineResource
from embed_pipeline.lib.embedding import load_model, model_fingerprint
from embed_pipeline.lib.indexing import build_faiss_index, save_index


@dg.asset(group_name="serving", kinds={"faiss"}, pool="gpu")
def corpus_index(context: dg.AssetExecutionContext, corpus: dict, embedding_model: dict, pipeline: PipelineResource) -> dg.MaterializeResult:
    """A FAISS index of every passage embedded by the candidate model, with its row -> passage id map."""
    config = pipeline.load()
    passages = read_corpus(corpus)
    model = load_model(embedding_model["model_dir"])
    fingerprint = model_fingerprint(model)
    vectors, stats = encode_passages(model, fingerprint, config, passages)
    index_type = "flat"
    index = build_faiss_index(vectors, index_type)
    target = config.artifacts_dir / "indexes" / context.run_id
    save_index(index, list(passages["passage_id"]), {"type": index_type, "model_dir": embedding_model["model_dir"],
                                                      "model_version": embedding_model["version"],
                                                      "model_fingerprint": fingerprint}, target)
    return dg.MaterializeResult(
        value={"path": str(target), "type": index_type, "size": int(index.ntotal), "model_fingerprint": fingerprint,
               "encoded": stats.encoded, "reused": stats.reused},
        metadata={
            "dagster/row_count": int(index.ntotal),
            "index_type": index_type,
            "dimension": int(index.d),
            "passages_encoded": stats.encoded,
            "passages_from_cache": stats.reused,
            "path": dg.MetadataValue.path(str(target)),
        },
    )
