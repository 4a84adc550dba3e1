"""Asset checks: blocking checks stop a run before bad data trains or a bad model is promoted."""

import dagster as dg
import pandas as pd

from embed_pipeline.defs.assets.common import load_eval_set, read_corpus
from embed_pipeline.defs.resources import PipelineResource
from embed_pipeline.lib.io import read_json
from embed_pipeline.lib.text import query_key

LEAKAGE_CHECK = "training_pairs_no_eval_leakage"
GATE_CHECK = "eval_report_promotion_gate"


@dg.asset_check(asset="training_pairs", name=LEAKAGE_CHECK, blocking=True, additional_ins={"corpus": dg.AssetIn("corpus")})
def training_pairs_no_eval_leakage(training_pairs: dict, corpus: dict, pipeline: PipelineResource) -> dg.AssetCheckResult:
    """No training query equals an eval query after normalisation (case, whitespace, unicode)."""
    config = pipeline.load()
    eval_set, _ = load_eval_set(config, set(read_corpus(corpus)["passage_id"]))
    eval_keys = {query_key(q): q for q in eval_set.queries.values()}
    pairs = pd.read_parquet(training_pairs["path"])
    leaked = pairs[pairs["query"].map(query_key).isin(eval_keys)]
    return dg.AssetCheckResult(
        passed=leaked.empty,
        metadata={"leaked_pairs": len(leaked), "threshold": 0,
                  "offenders": dg.MetadataValue.md(leaked.head(10)[["query", "passage_id", "source"]].to_markdown(index=False) if len(leaked) else "none")},
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
