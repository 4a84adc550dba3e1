"""The merged training set."""

import dagster as dg
import pandas as pd

from embed_pipeline.defs import metadata as md
from embed_pipeline.defs.assets.common import data_dir
from embed_pipeline.defs.resources import PipelineResource
from embed_pipeline.lib.io import write_parquet
from embed_pipeline.lib.pairs import merge_pairs
from embed_pipeline.lib.text import text_hash


@dg.asset(group_name="pairs", kinds={"parquet"})
def training_pairs(
    search_log_pairs: dict, curated_pairs: dict, synthetic_pairs: dict, pipeline: PipelineResource
) -> dg.MaterializeResult:
    """The training set: one row per (query, positive passage), deduplicated, with its source (click/curated/synthetic)."""
    config = pipeline.load()
    frames = {name: pd.read_parquet(h["path"]) for name, h in
              [("click", search_log_pairs), ("curated", curated_pairs), ("synthetic", synthetic_pairs)]}
    merged = merge_pairs(list(frames.values()), config.synthetic.max_share, config.synthetic.seed)
    pairs = merged.pairs
    if pairs.empty:
        raise ValueError("no training pairs: every source is empty after its rules (see the upstream assets' metadata)")
    out = write_parquet(pairs, data_dir(config) / "training_pairs.parquet")
    version = text_hash(pairs.to_csv(index=False))
    return dg.MaterializeResult(
        value={"path": str(out), "pairs": len(pairs), "version": version},
        metadata={
            "dagster/row_count": len(pairs),
            "dataset_version": version,
            "per_source": md.counts_md(merged.per_source),
            "rule_counts": md.counts_md({"rows_in": merged.counts.rows_in, **merged.counts.dropped}),
            "unique_queries": int(pairs["query"].nunique()),
            "path": md.path(out),
            "preview": md.preview(pairs[["query", "passage_id", "source"]].sample(min(10, len(pairs)), random_state=0)),
        },
        data_version=dg.DataVersion(version),
    )
