"""Source assets: the corpus and the three kinds of (query, passage) pairs."""

import dataclasses

import dagster as dg
import pandas as pd

from embed_pipeline.defs import metadata as md
from embed_pipeline.defs.assets.common import embed, output_dir, passage_ids, ray_encoding, ray_metadata, read_corpus
from embed_pipeline.defs.query_generators import QueryGeneratorResource, generator_for
from embed_pipeline.defs.resources import PipelineResource
from embed_pipeline.lib.artifacts import CorpusHandle, PairsHandle
from embed_pipeline.lib.click_logs import pairs_from_search_logs, read_search_logs
from embed_pipeline.lib.corpus import dataset_for
from embed_pipeline.lib.io import write_parquet
from embed_pipeline.lib.labelled import load_labelled_pairs
from embed_pipeline.lib.leakage import split_labelled_pairs
from embed_pipeline.lib.pairs import PAIR_COLUMNS
from embed_pipeline.lib.synthetic import round_trip_filter, sample_passages

GROUP = "sources"


@dg.asset(group_name=GROUP, kinds={"parquet"})
def corpus(context: dg.AssetExecutionContext, pipeline: PipelineResource) -> dg.MaterializeResult:
    """The passage corpus, validated: a Parquet dataset, one file per shard, one row per passage (passage_id, title, text, content_hash)."""
    config = pipeline.config
    dataset = dataset_for(config, context.log.info)
    manifest = dataset.manifest
    preview = next(dataset.batches(["passage_id", "title", "text"], batch_rows=5), None)
    rows = ["| shard | passages | content hash |", "|---|---|---|"]
    rows += [f"| {k} | {s['rows']} | {s['hash']} |" for k, s in manifest["shards"].items()]
    return dg.MaterializeResult(
        value=CorpusHandle(str(dataset.folder), len(dataset), str(dataset.quarantine_path), dataset.version),
        metadata={
            "dagster/row_count": len(dataset),
            "rows_in": manifest["rows_in"],
            "quarantined": manifest["quarantined"],
            "quarantine_reasons": md.counts_md(manifest["quarantine_reasons"]),
            "source": md.path(config.corpus),
            "source_stamp": manifest["source_stamp"],
            "path": md.path(dataset.folder),
            "quarantine_path": md.path(dataset.quarantine_path),
            "shards": dataset.num_shards,
            "per_shard": dg.MetadataValue.md("\n".join(rows)),
            "preview": md.preview(preview.head(5) if preview is not None else pd.DataFrame()),
            "config_hash": pipeline.config_hash,
        },
        data_version=dg.DataVersion(dataset.version),
    )


@dg.asset(group_name=GROUP, kinds={"parquet"})
def search_log_pairs(context: dg.AssetExecutionContext, corpus: CorpusHandle, pipeline: PipelineResource) -> dg.MaterializeResult:
    """Positives from satisfied clicks in the search logs, one row per (query, passage); skip-above negatives beside them."""
    config = pipeline.config
    folder = output_dir(context, config)
    if config.search_logs is None:
        empty = pd.DataFrame(columns=PAIR_COLUMNS + ["support"])
        out = write_parquet(empty, folder / "search_log_pairs.parquet")
        skip = write_parquet(pd.DataFrame(columns=["query", "passage_id", "kind"]), folder / "skip_above.parquet")
        return dg.MaterializeResult(
            value=PairsHandle(str(out), 0, files={"skip_above": str(skip)}),
            metadata={"dagster/row_count": 0, "note": "no search_logs in the config"},
        )
    result = pairs_from_search_logs(read_search_logs(config.search_logs), passage_ids(corpus), config.search_log_rules,
                                    source=str(config.search_logs))
    out = write_parquet(result.pairs, folder / "search_log_pairs.parquet")
    skip = write_parquet(result.skip_above, folder / "skip_above.parquet")
    quarantine = write_parquet(result.quarantine, folder / "search_logs_quarantine.parquet")
    return dg.MaterializeResult(
        value=PairsHandle(str(out), len(result.pairs), rows_in=result.counts.rows_in, quarantined=len(result.quarantine),
                          files={"skip_above": str(skip), "quarantine": str(quarantine)}),
        metadata={
            "dagster/row_count": len(result.pairs),
            "impressions_read": result.counts.rows_in,
            "impressions_kept": result.impressions_kept,
            "quarantined": len(result.quarantine),
            "quarantine_reasons": md.counts_md(_reason_kinds(result.quarantine)),
            "quarantine_path": md.path(quarantine),
            "sessions": result.sessions,
            "clicks": result.clicks,
            "pairs_out": len(result.pairs),
            "skip_above_negatives": len(result.skip_above),
            "dropped_by_rule": md.counts_md(result.counts.dropped),
            "rules": dg.MetadataValue.json(dataclasses.asdict(config.search_log_rules)),
            "path": md.path(out),
            "preview": md.preview(result.pairs),
        },
    )


def _reason_kinds(quarantine: pd.DataFrame) -> dict[str, int]:
    """Quarantine reasons counted by kind (the text before a quoted value or a parenthesis)."""
    return quarantine["reason"].str.replace(r"\s*[('\"].*$", "", regex=True).value_counts().to_dict() if len(quarantine) else {}


@dg.asset(group_name=GROUP, kinds={"parquet"})
def curated_pairs(context: dg.AssetExecutionContext, corpus: CorpusHandle, pipeline: PipelineResource) -> dg.MaterializeResult:
    """Hand-labelled (query, passage) pairs, validated; rejected rows go to a quarantine file with a reason each.

    With no `eval` set in the config, a seeded share of these queries is held out as the eval set."""
    config = pipeline.config
    folder = output_dir(context, config)
    if config.curated_pairs is None:
        out = write_parquet(pd.DataFrame(columns=PAIR_COLUMNS), folder / "curated_pairs.parquet")
        return dg.MaterializeResult(value=PairsHandle(str(out), 0),
                                    metadata={"dagster/row_count": 0, "note": "no curated_pairs in the config"})
    loaded = load_labelled_pairs(config.curated_pairs, passage_ids(corpus))
    accepted = loaded.pairs.assign(source="curated")
    quarantine = write_parquet(loaded.quarantine, folder / "curated_quarantine.parquet")
    files = {"quarantine": str(quarantine)}
    share = len(loaded.quarantine) / loaded.rows_in if loaded.rows_in else 0.0
    split_md = {}
    if config.eval is None:
        lk = config.leakage
        accepted, held_out, split = split_labelled_pairs(accepted, lk.eval_fraction, lk.split_seed,
                                                         lk.near_duplicate_jaccard, lk.shingle_words)
        split_path = write_parquet(held_out.drop(columns=["source"]), folder / "eval_split.parquet")
        files["eval_split"] = str(split_path)
        split_md = {"eval_split_queries": int(held_out["query_id"].nunique()), "eval_split_pairs": len(held_out),
                    "eval_split_fraction": lk.eval_fraction, "eval_split_seed": lk.split_seed,
                    "near_duplicate_groups_kept_together": split.grouped_queries, "eval_split_path": md.path(split_path)}
    out = write_parquet(accepted, folder / "curated_pairs.parquet")
    return dg.MaterializeResult(
        value=PairsHandle(str(out), len(accepted), rows_in=loaded.rows_in, quarantined=len(loaded.quarantine), files=files),
        metadata={
            "dagster/row_count": len(accepted),
            "rows_in": loaded.rows_in,
            "accepted": len(loaded.pairs),
            "quarantined": len(loaded.quarantine),
            "rows_in == accepted + quarantined": loaded.rows_in == len(loaded.pairs) + len(loaded.quarantine),
            "quarantined_share": round(share, 4),
            "quarantine_reasons": md.counts_md(loaded.quarantine["reason"].value_counts().to_dict()),
            "quarantine_path": md.path(quarantine),
            **split_md,
            "preview": md.preview(accepted),
        },
    )


@dg.asset(group_name=GROUP, kinds={"parquet"})
def synthetic_pairs(context: dg.AssetExecutionContext, corpus: CorpusHandle, pipeline: PipelineResource,
                    query_generator: QueryGeneratorResource) -> dg.MaterializeResult:
    """Synthetic (query, passage) pairs from the corpus (offline inverse cloze/titles or an LLM), round-trip filtered."""
    config = pipeline.config
    s = config.synthetic
    dataset = read_corpus(corpus)
    passages = dataset.frame()
    generator = generator_for(s, query_generator)
    context.log.info(f"synthetic_pairs: generating queries for {min(len(passages), s.max_passages or len(passages))} passages "
                     f"({type(generator).__name__})" + (f", then a round trip through the base model (top {s.round_trip_k})"
                                                         if s.round_trip else ""))
    generated = generator.generate(sample_passages(passages, s.max_passages, s.seed), s, config.artifacts_dir / "llm_cache")
    pairs, round_trip_md = generated.pairs, {"round_trip": "off"}
    cluster = ray_encoding(context, config)
    if s.round_trip and len(pairs):
        base = embed(config, config.resolved_base_model, dataset, list(pairs["query"]), context.log.info, cluster)
        kept, ranks = round_trip_filter(pairs, base.query_vectors, base.corpus_ids, base.corpus_vectors,
                                        s.round_trip_k)
        round_trip_md = {"round_trip_k": s.round_trip_k, "generated": len(pairs), "kept_by_round_trip": len(kept),
                         "round_trip_keep_rate": round(len(kept) / len(pairs), 4),
                         "round_trip_keep_rate_by_method": md.counts_md(
                             pairs.assign(kept=ranks <= s.round_trip_k).groupby("method")["kept"].mean().round(4).to_dict()),
                         "corpus_passages_from_cache": base.corpus_stats.reused}
        pairs = kept
    out = write_parquet(pairs, output_dir(context, config) / "synthetic_pairs.parquet")
    return dg.MaterializeResult(
        value=PairsHandle(str(out), len(pairs)),
        metadata={
            "dagster/row_count": len(pairs),
            **generated.stats,
            **round_trip_md,
            **ray_metadata(cluster),
            "by_method": md.counts_md(pairs["method"].value_counts().to_dict()),
            "passages_used": int(pairs["passage_id"].nunique()),
            "path": md.path(out),
            "preview": md.preview(pairs[["query", "passage_id", "method"]]),
        },
    )
