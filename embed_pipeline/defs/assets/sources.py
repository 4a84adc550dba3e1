"""Source assets: the corpus and the three kinds of (query, passage) pairs."""

import dagster as dg
import pandas as pd

from embed_pipeline.defs import metadata as md
from embed_pipeline.defs.resources import PipelineResource
from embed_pipeline.lib.corpus import load_corpus
from embed_pipeline.lib.io import read_table, write_parquet
from embed_pipeline.lib.pairs import PAIR_COLUMNS, load_labelled_pairs, pairs_from_search_logs
from embed_pipeline.lib.synthetic import inverse_cloze_pairs
from embed_pipeline.defs.assets.common import data_dir, read_corpus

GROUP = "sources"


@dg.asset(group_name=GROUP, kinds={"parquet"})
def corpus(pipeline: PipelineResource) -> dg.MaterializeResult:
    """The passage corpus, validated: one row per passage (passage_id, title, text)."""
    config = pipeline.load()
    loaded = load_corpus(config.corpus)
    out = write_parquet(loaded.passages, data_dir(config) / "corpus.parquet")
    quarantine = write_parquet(loaded.quarantine, data_dir(config) / "corpus_quarantine.parquet")
    return dg.MaterializeResult(
        value={"path": str(out), "passages": len(loaded.passages)},
        metadata={
            "dagster/row_count": len(loaded.passages),
            "rows_in": loaded.rows_in,
            "quarantined": len(loaded.quarantine),
            "quarantine_reasons": md.counts_md(loaded.quarantine["reason"].value_counts().to_dict()),
            "source": md.path(config.corpus),
            "path": md.path(out),
            "quarantine_path": md.path(quarantine),
            "preview": md.preview(loaded.passages),
        },
    )


@dg.asset(group_name=GROUP, kinds={"parquet"})
def search_log_pairs(corpus: dict, pipeline: PipelineResource) -> dg.MaterializeResult:
    """Positives from satisfied clicks in the search logs, one row per (query, passage); skip-above negatives beside them."""
    config = pipeline.load()
    if config.search_logs is None:
        empty = pd.DataFrame(columns=PAIR_COLUMNS + ["support"])
        out = write_parquet(empty, data_dir(config) / "search_log_pairs.parquet")
        skip = write_parquet(pd.DataFrame(columns=["query", "passage_id"]), data_dir(config) / "skip_above.parquet")
        return dg.MaterializeResult(
            value={"path": str(out), "skip_above_path": str(skip), "pairs": 0},
            metadata={"dagster/row_count": 0, "note": "no search_logs in the config"},
        )
    passages = read_corpus(corpus)
    result = pairs_from_search_logs(read_table(config.search_logs), set(passages["passage_id"]), config.search_log_rules)
    out = write_parquet(result.pairs, data_dir(config) / "search_log_pairs.parquet")
    skip = write_parquet(result.skip_above, data_dir(config) / "skip_above.parquet")
    return dg.MaterializeResult(
        value={"path": str(out), "skip_above_path": str(skip), "pairs": len(result.pairs)},
        metadata={
            "dagster/row_count": len(result.pairs),
            "impressions_read": result.counts.rows_in,
            "sessions": result.sessions,
            "skip_above_negatives": len(result.skip_above),
            "rule_counts": md.counts_md(result.counts.dropped),
            "preview": md.preview(result.pairs),
        },
    )


@dg.asset(group_name=GROUP, kinds={"parquet"})
def curated_pairs(corpus: dict, pipeline: PipelineResource) -> dg.MaterializeResult:
    """Hand-labelled (query, passage) pairs, validated; rejected rows go to a quarantine file with a reason each."""
    config = pipeline.load()
    if config.curated_pairs is None:
        out = write_parquet(pd.DataFrame(columns=PAIR_COLUMNS), data_dir(config) / "curated_pairs.parquet")
        return dg.MaterializeResult(value={"path": str(out), "pairs": 0, "rows_in": 0, "quarantined": 0},
                                    metadata={"dagster/row_count": 0, "note": "no curated_pairs in the config"})
    passages = read_corpus(corpus)
    loaded = load_labelled_pairs(config.curated_pairs, set(passages["passage_id"]))
    accepted = loaded.pairs.assign(source="curated")
    out = write_parquet(accepted, data_dir(config) / "curated_pairs.parquet")
    quarantine = write_parquet(loaded.quarantine, data_dir(config) / "curated_quarantine.parquet")
    share = len(loaded.quarantine) / loaded.rows_in if loaded.rows_in else 0.0
    return dg.MaterializeResult(
        value={"path": str(out), "pairs": len(accepted), "rows_in": loaded.rows_in, "quarantined": len(loaded.quarantine)},
        metadata={
            "dagster/row_count": len(accepted),
            "rows_in": loaded.rows_in,
            "accepted": len(accepted),
            "quarantined": len(loaded.quarantine),
            "quarantined_share": round(share, 4),
            "quarantine_reasons": md.counts_md(loaded.quarantine["reason"].value_counts().to_dict()),
            "quarantine_path": md.path(quarantine),
            "preview": md.preview(accepted),
        },
    )


@dg.asset(group_name=GROUP, kinds={"parquet"})
def synthetic_pairs(corpus: dict, pipeline: PipelineResource) -> dg.MaterializeResult:
    """Offline synthetic pairs from the corpus: a sentence (inverse cloze) or the title as the query."""
    config = pipeline.load()
    passages = read_corpus(corpus)
    s = config.synthetic
    pairs = inverse_cloze_pairs(passages, s.pairs_per_passage, s.min_query_words, s.seed)
    out = write_parquet(pairs, data_dir(config) / "synthetic_pairs.parquet")
    return dg.MaterializeResult(
        value={"path": str(out), "pairs": len(pairs)},
        metadata={
            "dagster/row_count": len(pairs),
            "by_method": md.counts_md(pairs["method"].value_counts().to_dict()),
            "passages_used": int(pairs["passage_id"].nunique()),
            "preview": md.preview(pairs[["query", "passage_id", "method"]]),
        },
    )
