"""Asset checks: blocking checks stop a run before bad data trains or a bad model is promoted."""

import dagster as dg
import pandas as pd

from embed_pipeline.defs.assets.common import load_eval_set, read_corpus
from embed_pipeline.defs.resources import PipelineResource
from embed_pipeline.lib.io import read_json
from embed_pipeline.lib.leakage import find_leaks

LEAKAGE_CHECK = "training_pairs_no_eval_leakage"
GATE_CHECK = "eval_report_promotion_gate"


@dg.asset_check(asset="training_pairs", name=LEAKAGE_CHECK, blocking=True, additional_ins={"corpus": dg.AssetIn("corpus")})
def training_pairs_no_eval_leakage(training_pairs: dict, corpus: dict, pipeline: PipelineResource) -> dg.AssetCheckResult:
    """No training query equals an eval query after normalisation, or is a near duplicate of one
    (Jaccard of word shingles >= `leakage.near_duplicate_jaccard`; lib/leakage.py says why)."""
    config = pipeline.load()
    lk = config.leakage
    eval_set, _ = load_eval_set(config, set(read_corpus(corpus)["passage_id"]))
    pairs = pd.read_parquet(training_pairs["path"])
    leaks = find_leaks(pairs[["query", "passage_id", "source"]], list(eval_set.queries.values()), lk.near_duplicate_jaccard, lk.shingle_words)
    shown = leaks.head(lk.max_offenders_shown)[["query", "eval_query", "kind", "jaccard", "source", "passage_id"]]
    return dg.AssetCheckResult(
        passed=leaks.empty,
        metadata={
            "leaked_pairs": len(leaks),
            "exact_leaks": int((leaks["kind"] == "exact").sum()),
            "near_duplicate_leaks": int((leaks["kind"] == "near-duplicate").sum()),
            "threshold (leaked pairs allowed)": 0,
            "near_duplicate_jaccard": lk.near_duplicate_jaccard,
            "eval_queries": len(eval_set.queries),
            "training_queries": int(pairs["query"].nunique()),
            "offenders": dg.MetadataValue.md(shown.to_markdown(index=False) if len(shown) else "none"),
        },
    )


@dg.asset_check(asset="curated_pairs", blocking=True)
def curated_pairs_quarantine_share(curated_pairs: dict, pipeline: PipelineResource) -> dg.AssetCheckResult:
    """The share of curated rows sent to quarantine stays under `curation.max_quarantine_share`."""
    limit = pipeline.load().curation.max_quarantine_share
    share = curated_pairs["quarantined"] / curated_pairs["rows_in"] if curated_pairs["rows_in"] else 0.0
    return dg.AssetCheckResult(passed=share <= limit, metadata={"quarantined_share": round(share, 4), "threshold": limit,
                                                                 "quarantined": curated_pairs["quarantined"], "rows_in": curated_pairs["rows_in"]})


@dg.asset_check(asset="eval_report", name=GATE_CHECK, blocking=True)
def eval_report_promotion_gate(eval_report: dict) -> dg.AssetCheckResult:
    """The candidate clears every clause of the promotion gate (values beside thresholds in the metadata)."""
    gate = read_json(eval_report["path"])["gate"]
    metadata = {}
    for clause in gate["clauses"]:
        metadata[f"{clause['name']}"] = clause["value"]
        metadata[f"{clause['name']} (threshold)"] = clause["threshold"]
        metadata[f"{clause['name']} (passed)"] = clause["passed"]
    return dg.AssetCheckResult(passed=gate["passed"], metadata=metadata)
