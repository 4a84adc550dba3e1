"""The merged training set, decontaminated against the eval set."""

import dagster as dg
import pandas as pd

from embed_pipeline.defs import metadata as md
from embed_pipeline.defs.assets.common import load_eval_set, output_dir, passage_ids
from embed_pipeline.defs.resources import PipelineResource
from embed_pipeline.lib.artifacts import CorpusHandle, PairsHandle
from embed_pipeline.lib.io import write_parquet
from embed_pipeline.lib.leakage import decontaminate
from embed_pipeline.lib.pairs import length_histogram, merge_pairs
from embed_pipeline.lib.plots import png_markdown, query_lengths_png
from embed_pipeline.lib.text import text_hash


@dg.asset(group_name="pairs", kinds={"parquet"})
def training_pairs(
    context: dg.AssetExecutionContext, corpus: CorpusHandle, search_log_pairs: PairsHandle, curated_pairs: PairsHandle,
    synthetic_pairs: PairsHandle, pipeline: PipelineResource,
) -> dg.MaterializeResult:
    """The training set: one row per (query, positive passage), deduplicated, with its source; pairs leaking an eval query removed."""
    config = pipeline.config
    folder = output_dir(context, config)
    frames = [pd.read_parquet(h.path) for h in (search_log_pairs, curated_pairs, synthetic_pairs)]
    merged = merge_pairs(frames, config.synthetic.max_share, config.synthetic.seed, config.merge.quotas)
    lk = config.leakage
    eval_set, _ = load_eval_set(config, passage_ids(corpus), curated_pairs)
    clean = decontaminate(merged.pairs, list(eval_set.queries.values()), lk.near_duplicate_jaccard, lk.shingle_words)
    leaks_path = write_parquet(clean.leaks, folder / "leaking_pairs.parquet")
    # `fail` keeps the leaking rows so the blocking check sees (and prints) them and stops the run.
    pairs = clean.pairs if lk.on_leak == "drop" else merged.pairs
    if pairs.empty:
        raise ValueError("no training pairs: every source is empty after its rules (see the upstream assets' metadata)")
    out = write_parquet(pairs, folder / "training_pairs.parquet")
    version = text_hash(pairs.to_csv(index=False))
    lengths = length_histogram(pairs)
    per_source = pd.DataFrame({"in": pd.Series(merged.per_source_in), "out": pd.Series(pairs["source"].value_counts())})
    leak_kinds = clean.leaks.drop_duplicates("query")["kind"].value_counts().to_dict() if len(clean.leaks) else {}
    return dg.MaterializeResult(
        value=PairsHandle(str(out), len(pairs), version=version, rows_in=merged.counts.rows_in,
                          quarantined=clean.dropped_pairs if lk.on_leak == "drop" else 0, files={"leaks": str(leaks_path),
                                 # carried to the eval report, which counts every input's quarantine
                                 **({"search_logs_quarantine": search_log_pairs.files["quarantine"]}
                                    if "quarantine" in search_log_pairs.files else {})}),
        metadata={
            "dagster/row_count": len(pairs),
            "dataset_version": version,
            "per_source": dg.MetadataValue.md(per_source.fillna(0).astype(int).rename_axis("source").to_markdown()),
            "synthetic_share": round(int((pairs["source"] == "synthetic").sum()) / len(pairs), 4),
            "max_synthetic_share": config.synthetic.max_share,
            "rule_counts": md.counts_md({"rows_in": merged.counts.rows_in, **merged.counts.dropped,
                                         "leaking_eval_queries": clean.dropped_pairs if lk.on_leak == "drop" else 0,
                                         "rows_out": len(pairs)}),
            "duplicates_removed": merged.counts.dropped["exact_duplicates"],
            "conflicts_resolved": merged.counts.dropped["source_conflicts"],
            "leakage_mode": lk.on_leak,
            "leaking_pairs": clean.dropped_pairs,
            "leaking_pairs_dropped": clean.dropped_pairs if lk.on_leak == "drop" else 0,
            "leaking_pairs_per_source": md.counts_md(clean.dropped_per_source),
            "leaks_exact": int(leak_kinds.get("exact", 0)),
            "leaks_near_duplicate": int(leak_kinds.get("near-duplicate", 0)),
            "leaks_path": md.path(leaks_path),
            "unique_queries": int(pairs["query"].nunique()),
            "query_length_histogram": dg.MetadataValue.md(lengths.to_markdown()),
            "query_length_plot": dg.MetadataValue.md(png_markdown(query_lengths_png(lengths), "query lengths per source")),
            "path": md.path(out),
            "config_hash": pipeline.config_hash,
            "preview": md.preview(pairs[["query", "passage_id", "source"]].sample(min(10, len(pairs)), random_state=0)),
        },
        data_version=dg.DataVersion(version),
    )
