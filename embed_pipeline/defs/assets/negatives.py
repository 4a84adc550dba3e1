"""Hard negatives mined with the base model."""

import base64

import dagster as dg
import pandas as pd

from embed_pipeline.defs import metadata as md
from embed_pipeline.defs.assets.common import embed, output_dir, ray_encoding, ray_metadata, read_corpus
from embed_pipeline.defs.resources import PipelineResource
from embed_pipeline.lib.artifacts import CorpusHandle, NegativesHandle, PairsHandle
from embed_pipeline.lib.encoding import load_model
from embed_pipeline.lib.io import write_parquet
from embed_pipeline.lib.negatives import mine_hard_negatives
from embed_pipeline.lib.plots import score_histogram_png
from embed_pipeline.lib.text import text_hash
from embed_pipeline.lib.windows import WindowSpec, with_window_texts


@dg.asset(group_name="pairs", kinds={"faiss", "parquet"})
def hard_negatives(
    context: dg.AssetExecutionContext, corpus: CorpusHandle, training_pairs: PairsHandle, search_log_pairs: PairsHandle,
    pipeline: PipelineResource,
) -> dg.MaterializeResult:
    """Training rows with mined negatives: one row per (query, positive) with up to N hard negative passage ids."""
    config = pipeline.config
    folder = output_dir(context, config)
    dataset = read_corpus(corpus)
    pairs = pd.read_parquet(training_pairs.path)
    query_texts = list(dict.fromkeys(pairs["query"]))
    cluster = ray_encoding(context, config)
    base = embed(config, config.resolved_base_model, dataset, query_texts, context.log.info, cluster)
    fingerprint, corpus_vectors, query_vectors, corpus_stats = (base.fingerprint, base.corpus_vectors,
                                                                base.query_vectors, base.corpus_stats)
    context.log.info(f"base model {config.base_model} (fingerprint {fingerprint}): {len(dataset)} passages, "
                     f"{corpus_stats.encoded} encoded, {corpus_stats.reused} from cache")
    skip = pd.read_parquet(search_log_pairs.files["skip_above"])
    extra = skip.groupby("query")["passage_id"].agg(list).to_dict() if len(skip) else {}
    mined = mine_hard_negatives(pairs, query_texts, query_vectors, base.corpus_ids, corpus_vectors, config.mining, extra)
    triples = mined.triples.merge(pairs[["query", "passage_id", "source", "positive_text"]], on=["query", "passage_id"], how="left")
    if base.windows is not None:  # train on the window that matters: each positive's and negative's best window
        # The windows the mining ranked (their spec recorded by `embed`); the tokenizer splits the named passages again.
        spec = WindowSpec(base.windows["tokens"], base.windows["stride"])
        triples = with_window_texts(triples, dataset, load_model(config.resolved_base_model).tokenizer, spec)
        context.log.info(f"passage windows: {base.windows['long_passages']} of {base.windows['passages']} passages longer than "
                         f"the base model's window ({base.windows['tokens']} tokens); training reads each positive's and "
                         "negative's best window")
    out = write_parquet(triples, folder / "hard_negatives.parquet")
    png = score_histogram_png(mined.positive_scores, mined.negative_scores, mined.removed_scores)
    plot = folder / "hard_negatives_scores.png"
    plot.write_bytes(png)
    per_query = triples["negatives"].map(len)
    version = text_hash(triples[["query", "passage_id", "negatives"]].to_json(orient="records"))
    return dg.MaterializeResult(
        value=NegativesHandle(str(out), len(triples), version, fingerprint),
        metadata={
            "dagster/row_count": len(triples),
            "candidates_seen": mined.candidates_seen,
            "removed_by_margin": mined.removed_by_margin,
            "removed_as_positive": mined.removed_as_positive,
            "mean_negatives_per_row": round(float(per_query.mean()), 3),
            "rows_without_negatives": int((per_query == 0).sum()),
            "corpus_passages_encoded": corpus_stats.encoded,
            "corpus_passages_from_cache": corpus_stats.reused,
            "relative_margin": config.mining.relative_margin,
            "negatives_per_row": md.counts_md(per_query.value_counts().sort_index().rename(lambda n: f"{n} negatives").to_dict()),
            "score_histogram": dg.MetadataValue.md(f"![score distributions](data:image/png;base64,{base64.b64encode(png).decode()})"),
            "score_histogram_path": md.path(plot),
            "mean_positive_score": round(float(mined.positive_scores.mean()), 4) if len(triples) else 0.0,
            "mean_negative_score": round(float(mined.negative_scores.mean()), 4) if len(mined.negative_scores) else 0.0,
            "false_negative_audit": md.preview(_with_negative_text(mined.audit.head(config.mining.audit_rows), dataset),
                                               rows=config.mining.audit_rows),
            "dataset_version": version,
            "path": md.path(out),
            **ray_metadata(cluster),
        },
    )


def _with_negative_text(audit: pd.DataFrame, dataset) -> pd.DataFrame:
    """The audit rows with each negative's text, looked up by id (a few rows, never the corpus)."""
    if audit.empty:
        return audit
    texts = dataset.lookup(list(audit["negative_id"].astype(str).unique()), ["text"])["text"]
    return audit.assign(negative_text=audit["negative_id"].map(texts))
