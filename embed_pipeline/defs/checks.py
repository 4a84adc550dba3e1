"""Asset checks: blocking checks stop a run before bad data trains or a bad model is promoted."""

import dagster as dg
import pandas as pd

from embed_pipeline.defs.assets.common import load_eval_set, passage_ids
from embed_pipeline.defs.resources import PipelineResource
from embed_pipeline.lib.artifacts import CorpusHandle, PairsHandle, ReportHandle
from embed_pipeline.lib.contracts import read_eval_report
from embed_pipeline.lib.leakage import find_leaks

LEAKAGE_CHECK = "training_pairs_no_eval_leakage"
GATE_CHECK = "eval_report_promotion_gate"
EVAL_SIZE_CHECK = "eval_report_eval_set_size"


@dg.asset_check(asset="training_pairs", name=LEAKAGE_CHECK, blocking=True,
                additional_ins={"corpus": dg.AssetIn("corpus"), "curated_pairs": dg.AssetIn("curated_pairs")})
def training_pairs_no_eval_leakage(training_pairs: PairsHandle, corpus: CorpusHandle, curated_pairs: PairsHandle,
                                   pipeline: PipelineResource) -> dg.AssetCheckResult:
    """The final training set leaks no eval query: none equal after normalisation or a near duplicate
    (Jaccard of word shingles >= `leakage.near_duplicate_jaccard`; lib/leakage.py says why).
    With `leakage.on_leak: drop` training_pairs has already removed them; with `fail` this stops the run."""
    config = pipeline.config
    lk = config.leakage
    eval_set, _ = load_eval_set(config, passage_ids(corpus), curated_pairs)
    pairs = pd.read_parquet(training_pairs.path)
    leaks = find_leaks(pairs[["query", "passage_id", "source"]], list(eval_set.queries.values()), lk.near_duplicate_jaccard, lk.shingle_words)
    shown = leaks.head(lk.max_offenders_shown)[["query", "eval_query", "kind", "jaccard", "source", "passage_id"]]
    return dg.AssetCheckResult(
        passed=leaks.empty,
        metadata={
            "leaked_pairs": len(leaks),
            "exact_leaks": int((leaks["kind"] == "exact").sum()),
            "near_duplicate_leaks": int((leaks["kind"] == "near-duplicate").sum()),
            "threshold (leaked pairs allowed)": 0,
            "leakage_mode": lk.on_leak,
            "dropped_before_this_check": training_pairs.quarantined,
            "near_duplicate_jaccard": lk.near_duplicate_jaccard,
            "eval_queries": len(eval_set.queries),
            "training_queries": int(pairs["query"].nunique()),
            "offenders": dg.MetadataValue.md(shown.to_markdown(index=False) if len(shown) else "none"),
        },
    )


@dg.asset_check(asset="curated_pairs", blocking=True)
def curated_pairs_quarantine_share(curated_pairs: PairsHandle, pipeline: PipelineResource) -> dg.AssetCheckResult:
    """The share of curated rows sent to quarantine stays under `curation.max_quarantine_share`."""
    limit = pipeline.config.curation.max_quarantine_share
    share = curated_pairs.quarantined / curated_pairs.rows_in if curated_pairs.rows_in else 0.0
    return dg.AssetCheckResult(passed=share <= limit, metadata={"quarantined_share": round(share, 4), "threshold": limit,
                                                                 "quarantined": curated_pairs.quarantined, "rows_in": curated_pairs.rows_in,
                                                                 "quarantine_path": curated_pairs.files.get("quarantine", "")})


@dg.asset_check(asset="eval_report", name=GATE_CHECK)
def eval_report_promotion_gate(eval_report: ReportHandle) -> dg.AssetCheckResult:
    """The candidate clears every clause of the promotion gate: eval size, recall@10 lift, its CI lower bound, segment regressions, general-domain forgetting.

    A refusal is a normal outcome of a nightly run, not a crash: the check fails with WARN
    severity (the run stays green, the verdict is visible) and the promotion sensor promotes only
    reports whose gate passed. A red run always means something broke."""
    gate = read_eval_report(eval_report.path)["gate"]
    metadata: dict = {"summary": gate["summary"]}
    for clause in gate["clauses"]:
        metadata[clause["name"]] = "n/a" if clause["value"] is None else clause["value"]
        metadata[f"{clause['name']} (needs {clause['comparison']})"] = clause["threshold"]
        metadata[f"{clause['name']} (verdict)"] = clause["verdict"] + (f": {clause['detail']}" if clause["detail"] else "")
    return dg.AssetCheckResult(passed=gate["passed"], severity=dg.AssetCheckSeverity.WARN, metadata=metadata)


@dg.asset_check(asset="eval_report", name=EVAL_SIZE_CHECK)
def eval_report_eval_set_size(eval_report: ReportHandle) -> dg.AssetCheckResult:
    """Warns when the eval set is too small to judge a lift (the gate then refuses unless `gate.allow_small_eval`)."""
    report = read_eval_report(eval_report.path)
    size = next(c for c in report["gate"]["clauses"] if c["name"] == "eval queries")
    return dg.AssetCheckResult(
        passed=report["eval"]["queries"] >= size["threshold"],
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"eval_queries": report["eval"]["queries"], "threshold": size["threshold"], "gate": size["verdict"],
                  "note": "recall@10's standard error is about sqrt(p(1-p)/n): 0.05 at 50 queries, 0.02 at 300"},
    )
