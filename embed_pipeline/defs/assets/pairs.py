"""The merged training set."""

import dagster as dg
import pandas as pd

from embed_pipeline.defs import metadata as md
from embed_pipeline.defs.assets.common import data_dir
from embed_pipeline.defs.resources import PipelineResource
from embed_pipeline.lib.io import write_parquet
from embed_pipeline.lib.pairs import length_histogram, merge_pairs, plot_length_histogram
from embed_pipeline.lib.text import text_hash


@dg.asset(group_name="pairs", kinds={"parquet"})
def training_pairs(
    search_log_pairs: dict, curated_pairs: dict, synthetic_pairs: dict, pipeline: PipelineResource
) -> dg.MaterializeResult:
    """The training set: one row per (query, positive passage), deduplicated, with its source (click/curated/synthetic) and weight."""
    config = pipeline.load()
    frames = [pd.read_parquet(h["path"]) for h in (search_log_pairs, curated_pairs, synthetic_pairs)]
    merged = merge_pairs(frames, config.synthetic.max_share, config.synthetic.seed, config.merge.quotas, config.merge.weights)
    pairs = merged.pairs
    if pairs.empty:
        raise ValueError("no training pairs: every source is empty after its rules (see the upstream assets' metadata)")
    out = write_parquet(pairs, data_dir(config) / "training_pairs.parquet")
    version = text_hash(pairs.to_csv(index=False))
    lengths = length_histogram(pairs)
    plot = plot_length_histogram(lengths, data_dir(config) / "training_pairs_query_lengths.png")
    per_source = pd.DataFrame({"in": pd.Series(merged.per_source_in), "out": pd.Series(merged.per_source)}).fillna(0).astype(int)
    return dg.MaterializeResult(
        value={"path": str(out), "pairs": len(pairs), "version": version},
        metadata={
            "dagster/row_count": len(pairs),
            "dataset_version": version,
            "per_source": dg.MetadataValue.md(per_source.rename_axis("source").to_markdown()),
            "synthetic_share": round(merged.per_source.get("synthetic", 0) / len(pairs), 4),
            "max_synthetic_share": config.synthetic.max_share,
            "rule_counts": md.counts_md({"rows_in": merged.counts.rows_in, **merged.counts.dropped, "rows_out": len(pairs)}),
            "duplicates_removed": merged.counts.dropped["exact_duplicates"],
            "conflicts_resolved": merged.counts.dropped["source_conflicts"],
            "unique_queries": int(pairs["query"].nunique()),
            "query_length_histogram": dg.MetadataValue.md(lengths.to_markdown()),
            "query_length_plot": md.path(plot),
            "path": md.path(out),
            "preview": md.preview(pairs[["query", "passage_id", "source", "weight"]].sample(min(10, len(pairs)), random_state=0)),
        },
        data_version=dg.DataVersion(version),
    )
