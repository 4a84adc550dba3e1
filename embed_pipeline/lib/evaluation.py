"""Scoring models on the held-out eval set and assembling the eval report.

The report is a JSON contract read by the CLI (`--json`), the promotion gate and the sensor:
- `eval`: `queries` (how many eval queries were scored).
- `bm25` (lexical), `base`, `champion`, `candidate` (dense, through the served FAISS index),
  `candidate_exact` (exact search) and, for hybrid retrieval, `candidate_hybrid` and
  `champion_hybrid` (each fused with BM25) map each metric in `metrics.METRICS` to its mean.
- `retrieval`: the candidate's `RetrievalSpec` (lib/retrieval.py): `mode`, `fusion`, `dense_weight`,
  `dense_weight_source`, `rrf_k`, `depth`, `precision` (of the corpus vectors) and `derived`: how
  the candidate would serve, and so what the gate judged (a promotion copies it whole into the
  served pointer); plus `champion`: the champion's spec and `as` ("served" = as the champion
  serves now, from the served pointer; else "the candidate's mode").
  `judged`: the two rows compared (`candidate` or `candidate_hybrid` by the candidate's mode against
  `champion` or `champion_hybrid` by the champion's).
- `lift` is the judged candidate minus base; `lift_over_champion` is the judged candidate minus the
  judged champion (the number the gate judges); `approximate_search_loss` is exact minus index.
- `ci`: for `recall@10` and `ndcg@10`, the paired-bootstrap interval of the lift of the candidate
  over the champion (`point`, `low`, `high`, `confidence`, `resamples`, `seed`, `queries`).
- `segments`: one row per (kind, segment) with its query count, the champion's and candidate's
  recall@10 and the recall@10 / nDCG@10 lifts over the champion. Kinds: `source` (when the eval
  set names one), `length` (query length bucket) and `segment` (the eval queries' metadata).
- `recall_curves`: model -> {k: mean recall@k}, for the recall@k plot.
- `models`: what was compared (base name, champion version, candidate run/version, index).
- `general`: the forgetting guard (lib/general.py): `available`, and when true the reference
  set (`set`, `pairs`, `metric`: spearman_cosine) and the `base`, `champion` and `candidate`
  scores with `candidate_minus_base`; when false, `reason` (no reference set configured).
- `gate`: added by `lib.promotion.evaluate_gate`: `passed` and each clause's value, threshold,
  comparison and verdict.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from embed_pipeline.lib.bootstrap import paired_bootstrap
from embed_pipeline.lib.config import GateConfig, RetrievalConfig
from embed_pipeline.lib.io import write_json, write_parquet
from embed_pipeline.lib.metrics import MAX_K, METRICS, mean_metrics, per_query_metrics, recall_curve
from embed_pipeline.lib.retrieval import (
    RetrievalSpec,
    WeightChoice,
    choose_weight,
    dense_candidates,
    exact_index,
    rank,
    ranked_ids,
)

CI_METRICS = ("recall@10", "ndcg@10")
REPORT_MODELS = ("base", "champion", "candidate", "candidate_exact")  # always present
ROW_ORDER = ("bm25", "base", "champion", "champion_hybrid", "candidate", "candidate_exact", "candidate_hybrid")
# Query length buckets (in words): short keyword searches, phrases, full questions.
LENGTH_BUCKETS = ((1, 3, "1-3 words"), (4, 6, "4-6 words"), (7, 10_000, "7+ words"))


@dataclass(frozen=True)
class EvalSet:
    """Eval queries (`query_id` -> text) and their relevant passage ids."""

    queries: dict[str, str]
    relevant: dict[str, set[str]]


def diff(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {m: round(a[m] - b[m], 6) for m in METRICS}


def length_bucket(query: str) -> str:
    words = len(query.split())
    return next(label for low, high, label in LENGTH_BUCKETS if low <= words <= high) if words else LENGTH_BUCKETS[0][2]


def query_groups(eval_pairs: pd.DataFrame, queries: dict[str, str]) -> dict[str, dict[str, str]]:
    """kind -> {query_id: group} for every way the eval set can be sliced.

    `eval_pairs` is the validated eval table (`query_id`, optional `source` and `segment`
    columns, as `lib.pairs.load_labelled_pairs` returns it). A query with several rows takes its
    first non-empty value. Every query gets a length bucket; `source`/`segment` appear only when
    at least one query carries one (a query without one is grouped as "(none)").
    """
    groups = {"length": {qid: length_bucket(text) for qid, text in queries.items()}}
    for kind in ("source", "segment"):
        if kind not in eval_pairs.columns:
            continue
        values = eval_pairs[["query_id", kind]].astype(str).replace({"nan": "", "None": ""})
        values = values[values[kind] != ""].drop_duplicates("query_id").set_index("query_id")[kind]
        if len(values):
            groups[kind] = {qid: values.get(qid, "(none)") for qid in queries}
    return groups


def segment_lifts(champion: pd.DataFrame, candidate: pd.DataFrame, groups: dict[str, dict[str, str]]) -> list[dict]:
    """Lift of the candidate over the champion per segment, with each segment's query count.

    A segment's lift is the mean over its queries, so small segments are noisy: the gate only
    judges segments with at least `gate.min_segment_queries` queries.
    """
    rows = []
    for kind, mapping in groups.items():
        labels = pd.Series(mapping).reindex(candidate.index)
        for label, qids in labels.groupby(labels, sort=True).groups.items():
            champ, cand = champion.loc[qids], candidate.loc[qids]
            rows.append({
                "kind": kind,
                "segment": str(label),
                "queries": int(len(qids)),
                "champion_recall@10": round(float(champ["recall@10"].mean()), 6),
                "candidate_recall@10": round(float(cand["recall@10"].mean()), 6),
                "recall@10_lift": round(float((cand["recall@10"] - champ["recall@10"]).mean()), 6),
                "ndcg@10_lift": round(float((cand["ndcg@10"] - champ["ndcg@10"]).mean()), 6),
            })
    return rows


def lift_intervals(champion: pd.DataFrame, candidate: pd.DataFrame, resamples: int, confidence: float, seed: int) -> dict[str, dict]:
    """Paired-bootstrap interval of the candidate's lift over the champion for each of `CI_METRICS`."""
    champion = champion.reindex(candidate.index)
    return {
        m: paired_bootstrap(candidate[m].to_numpy(), champion[m].to_numpy(), resamples, confidence, seed).as_dict()
        for m in CI_METRICS
    }


def per_query_table(per_query: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per (model, query) with every metric: the raw material of the CI and segment tables."""
    return pd.concat([frame.rename_axis("query_id").reset_index().assign(model=name) for name, frame in per_query.items()],
                     ignore_index=True)


def build_report(
    per_query: dict[str, pd.DataFrame],
    models: dict[str, dict],
    groups: dict[str, dict[str, str]] | None = None,
    recall_curves: dict[str, dict[int, float]] | None = None,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    judged: tuple[str, str] = ("candidate", "champion"),
) -> dict:
    """The report dict (module docstring) from per-query tables keyed by row name (`REPORT_MODELS`
    at least); `judged` = (candidate row, champion row) that the lift, CI and segments compare."""
    means = {name: mean_metrics(per_query[name]) for name in ROW_ORDER if name in per_query}
    candidate, champion = judged
    return {
        "eval": {"queries": int(len(per_query["candidate"]))},
        **means,
        "judged": {"candidate": candidate, "champion": champion},
        "lift": diff(means[candidate], means["base"]),
        "lift_over_champion": diff(means[candidate], means[champion]),
        "approximate_search_loss": diff(means["candidate_exact"], means["candidate"]),
        "ci": lift_intervals(per_query[champion], per_query[candidate], resamples, confidence, seed),
        "segments": segment_lifts(per_query[champion], per_query[candidate], groups or {}),
        "recall_curves": {name: {str(k): v for k, v in curve.items()} for name, curve in (recall_curves or {}).items()},
        "models": models,
    }


def assemble_report(
    eval_set: EvalSet,
    eval_pairs: pd.DataFrame,
    rankings: dict[str, dict[str, list[str]]],
    models: dict[str, dict],
    gate: GateConfig,
    retrieval: dict | None = None,
    judged: tuple[str, str] | None = None,
    general: dict | None = None,
) -> tuple[dict, pd.DataFrame]:
    """The full report (with the gate's verdict) and the per-query table, from each model's rankings.

    `rankings` maps row names (every name in `REPORT_MODELS`, optionally `bm25` and the `_hybrid`
    rows) to {query_id: ranked passage ids}; `eval_pairs` is the validated eval table (for
    source/segment slices). `retrieval` = {mode, fusion, dense_weight}: in `hybrid` mode the gate
    judges `candidate_hybrid` against `champion_hybrid`, the mode that will be served; `judged`
    = (candidate row, champion row) overrides that pair. `general` is the forgetting guard's block
    (`lib.general.general_block`), judged by the gate's general-domain clause.
    """
    from embed_pipeline.lib.promotion import evaluate_gate

    retrieval = retrieval or {"mode": "dense", "fusion": None, "dense_weight": None}
    if judged is None:
        judged = ("candidate_hybrid", "champion_hybrid") if retrieval["mode"] == "hybrid" else ("candidate", "champion")
    per_query = {name: per_query_metrics(rankings[name], eval_set.relevant) for name in ROW_ORDER if name in rankings}
    curves = {name: recall_curve(rankings[name], eval_set.relevant) for name in ("bm25", "base", "champion", judged[0])
              if name in rankings}
    report = build_report(per_query, models, query_groups(eval_pairs, eval_set.queries), curves,
                          gate.bootstrap_resamples, gate.confidence, gate.bootstrap_seed, judged)
    report["retrieval"] = retrieval
    if general is not None:
        report["general"] = general
    report["gate"] = evaluate_gate(report, gate)
    return report, per_query_table(per_query)


# (model ref, query texts) -> (query vectors, corpus vectors), both L2-normalised, corpus in corpus_ids order.
Encode = Callable[[str, list[str]], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Contenders:
    """The models an eval compares (model folders or hub ids) and the candidate's index as it will serve.

    `champion` None: nothing is promoted yet, the base model stands in. `served_index` is anything
    with `search_ids(vectors, k) -> (scores, ids)` (`lib.indexing.load_index`); None: the candidate
    is searched exactly (the `candidate` and `candidate_exact` rows are then the same).
    `champion_retrieval` is the served pointer's `retrieval` (a `RetrievalSpec` record): the
    champion is judged as it serves now (dense, or fused with its own weight, rrf_k and depth), so
    the gate compares what would serve against what serves. Unknown (or no champion yet): the
    champion row takes the candidate's spec.
    """

    base: str
    candidate: str
    champion: str | None = None
    served_index: object | None = None
    champion_retrieval: dict | None = None  # how the champion serves now (the served pointer's `retrieval`); None: unknown


@dataclass(frozen=True)
class Evaluation:
    report: dict  # the JSON contract of this module's docstring, with the gate's verdict
    per_query: pd.DataFrame  # one row per (model row, query): every metric
    weight: WeightChoice  # the hybrid's dense weight and where it came from
    spec: RetrievalSpec  # how the candidate would serve: what the gate judged


def decide_spec(retrieval: RetrievalConfig, weight: WeightChoice, precision: str) -> RetrievalSpec:
    """The candidate's spec, decided once: the configured mode, fusion, rrf_k and depth, the chosen
    weight (hybrid), and `precision`, the label of what its corpus vectors were encoded in."""
    hybrid = retrieval.mode == "hybrid"
    return RetrievalSpec(mode=retrieval.mode, fusion=retrieval.fusion if hybrid else None,
                         dense_weight=weight.dense_weight if hybrid else None, dense_weight_source=weight.source,
                         rrf_k=retrieval.rrf_k, depth=retrieval.depth, precision=precision)


def evaluate(
    eval_set: EvalSet,
    eval_pairs: pd.DataFrame,
    corpus_ids: list[str],
    contenders: Contenders,
    encode: Encode,
    retrieval: RetrievalConfig,
    gate: GateConfig,
    models: dict[str, dict],
    *,
    precision: str,
    lexical=None,
    dev_queries: list[str] = (),
    dev_relevant: dict[str, set[str]] | None = None,
    general: dict | None = None,
) -> Evaluation:
    """Rank the eval queries with BM25, the base model, the champion and the candidate, fuse, judge.

    Every row is ranked by `lib.retrieval.rank`, the function the query API serves with. Dense
    rows are exact search over the whole corpus, except `candidate` and `candidate_hybrid`, which
    go through `served_index` (what will serve). With a BM25 index (`lexical`, a
    `lib.lexical.LexicalIndex`) the `bm25`, `champion_hybrid` and `candidate_hybrid` rows are
    added, fused with the dense weight `retrieval.dense_weight`, or chosen on `dev_queries` (the
    dev split the training run held out: never the eval set). `precision` is the label of what
    the served index's vectors were encoded in (it goes into the spec). In `hybrid` mode the gate
    judges the hybrid rows. `models` describes the contenders for the report. `general` is the
    forgetting guard's block (`lib.general.general_block` over base, champion and candidate): it
    goes into the report as `general` and the gate judges it.
    """
    qids, texts = list(eval_set.queries), list(eval_set.queries.values())
    if lexical is None and retrieval.mode == "hybrid":
        raise ValueError("retrieval.mode is hybrid but there is no BM25 index beside the dense one")

    def encoded(model_ref: str, queries: list[str]):
        # `encode` returns (query vectors, corpus vectors) row-aligned with `corpus_ids`, or with
        # passage windows (lib/windows.py) also each row's passage id and the windows block.
        query_vectors, corpus_vectors, *windowed = encode(model_ref, queries)
        row_ids, windows = windowed if windowed else (corpus_ids, None)
        return query_vectors, exact_index(corpus_vectors, row_ids, windows)

    dev_queries = list(dev_queries)
    choose = lexical is not None and bool(dev_queries) and retrieval.dense_weight is None  # else nothing to rank them for
    dev_dense = dev_lexical = None
    if choose:
        dev_vectors, dev_exact = encoded(contenders.candidate, dev_queries)
        dev_index = contenders.served_index if contenders.served_index is not None else dev_exact
        dev_dense = dense_candidates(dev_index, dev_vectors, retrieval.depth)
        dev_lexical = lexical.search(dev_queries, retrieval.depth)
    weight = choose_weight(retrieval.dense_weight, retrieval.fusion, dev_dense, dev_lexical, dev_queries,
                           dev_relevant or {}, retrieval.rrf_k)
    spec = decide_spec(retrieval, weight, precision)
    hybrid = spec if spec.mode == "hybrid" else spec.as_hybrid(retrieval.fusion, weight.dense_weight)
    champion_spec, champion_as = _champion_spec(contenders, spec, retrieval)
    champion_hybrid = champion_spec if champion_spec.mode == "hybrid" else hybrid

    base_vectors, base_index = encoded(contenders.base, texts)
    candidate_vectors, candidate_exact = encoded(contenders.candidate, texts)
    champion_vectors, champion_index = encoded(contenders.champion, texts) if contenders.champion else (base_vectors, base_index)
    served = contenders.served_index if contenders.served_index is not None else candidate_exact
    rows = {"base": (spec.as_dense(), base_vectors, base_index), "champion": (champion_spec.as_dense(), champion_vectors, champion_index),
            "candidate": (spec.as_dense(), candidate_vectors, served),
            "candidate_exact": (spec.as_dense(), candidate_vectors, candidate_exact)}
    if lexical is not None:
        rows |= {"candidate_hybrid": (hybrid, candidate_vectors, served),
                 "champion_hybrid": (champion_hybrid, champion_vectors, champion_index)}
    rankings = {name: ranked_ids(rank(row_spec, vectors, texts, index, lexical, MAX_K), qids)
                for name, (row_spec, vectors, index) in rows.items()}
    if lexical is not None:
        rankings["bm25"] = ranked_ids(lexical.search(texts, MAX_K), qids)
    judged = ("candidate_hybrid" if spec.mode == "hybrid" else "candidate",
              "champion_hybrid" if champion_spec.mode == "hybrid" and lexical is not None else "champion")
    record = {**spec.as_dict(), "champion": {**champion_spec.as_dict(), "as": champion_as}}
    report, per_query = assemble_report(eval_set, eval_pairs, rankings, models, gate, record, judged, general)
    return Evaluation(report, per_query, weight, spec)


def _champion_spec(contenders: Contenders, candidate: RetrievalSpec, retrieval: RetrievalConfig) -> tuple[RetrievalSpec, str]:
    """How the champion rows are ranked: as the champion serves now, else (none yet, or not recorded) like the candidate."""
    served = contenders.champion_retrieval if contenders.champion else None
    if not served or served.get("mode") not in ("dense", "hybrid"):
        return candidate, "the candidate's mode"
    return RetrievalSpec.from_record(served, retrieval.depth, candidate.precision), "served"


PARITY_METRICS = ("recall@10", "ndcg@10")


def served_parity(searcher, eval_set: EvalSet, report: dict) -> dict:
    """The eval queries ranked through the query API beside the row the gate judged.

    `searcher` is a `lib.retrieval.Searcher` over the served pointer, asked for the top 10 as a
    user would; `report` is the eval report whose candidate it serves. Returns the judged row's
    name and {"judged": ..., "served": ...} means of `PARITY_METRICS`: equal (to float rounding)
    when what serves is what was judged.
    """
    from embed_pipeline.lib.metrics import ndcg_at_k, recall_at_k

    qids = list(eval_set.queries)
    hits = searcher.search([eval_set.queries[q] for q in qids], 10)
    ranked = {q: [pid for pid, _ in row] for q, row in zip(qids, hits, strict=True)}
    served = {"recall@10": float(np.mean([recall_at_k(ranked[q], eval_set.relevant[q], 10) for q in qids])),
              "ndcg@10": float(np.mean([ndcg_at_k(ranked[q], eval_set.relevant[q], 10) for q in qids]))}
    row = report["judged"]["candidate"]
    return {"row": row, "judged": {m: report[row][m] for m in PARITY_METRICS}, "served": served}


def record_evaluation(tracker, run_id: str, evaluation: Evaluation, folder: Path) -> None:
    """Log the judged metrics, the lift, its CI, the retrieval spec (tags) and the report files on the candidate's MLflow run."""
    report = evaluation.report
    judged = report["judged"]["candidate"]
    tracker.log_metrics(run_id, {f"eval/{m}": v for m, v in report[judged].items()}
                        | {f"eval/dense/{m}": v for m, v in report["candidate"].items()}
                        | {f"eval/lift_over_champion/{m}": v for m, v in report["lift_over_champion"].items()}
                        | {f"eval/ci_low/{m}": c["low"] for m, c in report["ci"].items()})
    tracker.log_artifacts(run_id, folder, "eval")
    decision = "gate passed: awaiting promotion" if report["gate"]["passed"] else f"not promoted: {report['gate']['summary']}"
    # Tags, not params: a re-evaluation of the same run may judge it with another spec (params are write-once).
    tracker.set_tags(run_id, {"gate_passed": report["gate"]["passed"], "promotion_decision": decision,
                              **{f"retrieval.{k}": v for k, v in evaluation.spec.as_dict().items()}})


def write_report(report: dict, per_query: pd.DataFrame, folder: Path, min_segment_queries: int) -> tuple[Path, dict[str, bytes]]:
    """Write `eval_report.json`, `per_query.parquet` and the two plots (PNG) into `folder`.

    Returns the report's path and the plots' bytes (for the asset's metadata). The report is
    validated against `contracts.EvalReport` first (as JSON: what `write_json` would write).
    """
    import json

    from embed_pipeline.lib.contracts import EvalReport, dump
    from embed_pipeline.lib.plots import recall_curves_png, segment_lifts_png

    path = write_json(dump(EvalReport, json.loads(json.dumps(report, default=str))), Path(folder) / "eval_report.json")
    write_parquet(per_query, Path(folder) / "per_query.parquet")
    plots = {"recall_at_k": recall_curves_png(report["recall_curves"]),
             "segment_lift": segment_lifts_png(report["segments"], min_segment_queries)}
    for name, png in plots.items():
        (Path(folder) / f"{name}.png").write_bytes(png)
    return path, plots


def report_markdown(report: dict) -> str:
    """The report as Markdown for the Dagster UI and the terminal: metrics, CI, segments, gate."""
    names = [n for n in ROW_ORDER if n in report]
    lines = ["| metric | " + " | ".join(names) + " | lift vs base | lift vs champion |", "|---" * (len(names) + 3) + "|"]
    for m in METRICS:
        cells = [f"{report[n][m]:.4f}" for n in names]
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {report['lift'][m]:+.4f} | {report['lift_over_champion'][m]:+.4f} |")
    if report.get("ci"):
        confidence = next(iter(report["ci"].values()))["confidence"]
        judged = report.get("judged", {"candidate": "candidate", "champion": "champion"})
        lines += ["", f"judged: `{judged['candidate']}` against `{judged['champion']}`", "",
                  f"| lift over champion | point | {confidence:.0%} paired-bootstrap interval |", "|---|---|---|"]
        for m, c in report["ci"].items():
            lines.append(f"| {m} | {c['point']:+.4f} | [{c['low']:+.4f}, {c['high']:+.4f}] ({c['resamples']} resamples, {c['queries']} queries) |")
    if report.get("segments"):
        lines += ["", "| kind | segment | queries | champion recall@10 | candidate recall@10 | recall@10 lift | nDCG@10 lift |",
                  "|---|---|---|---|---|---|---|"]
        for s in report["segments"]:
            lines.append(f"| {s['kind']} | {s['segment']} | {s['queries']} | {s['champion_recall@10']:.4f} | "
                         f"{s['candidate_recall@10']:.4f} | {s['recall@10_lift']:+.4f} | {s['ndcg@10_lift']:+.4f} |")
    general = report.get("general")
    if general and general.get("available"):
        lines += ["", f"General-domain reference ({general['pairs']} pairs, Spearman of cosine): base {general['base']:.4f}, "
                      f"champion {general['champion']:.4f}, candidate {general['candidate']:.4f} "
                      f"({general['candidate_minus_base']:+.4f} vs base)"]
    elif general:
        lines += ["", f"General-domain reference: {general['reason']}"]
    windows = report.get("windows")
    if windows and windows.get("tokens"):
        lines += ["", f"Long passages: {windows['long_passages']} of {windows['passages']} longer than the model's window "
                      f"({windows['tokens']} tokens), read whole in {windows['rows']} windows (stride {windows['stride']}); "
                      "a passage scores as its best window"]
    if report.get("gate"):
        lines += ["", f"**Promotion gate: {'PASSED' if report['gate']['passed'] else 'REFUSED'}**", "",
                  "| clause | value | needs | verdict |", "|---|---|---|---|"]
        for c in report["gate"]["clauses"]:
            value = "n/a" if c["value"] is None else (f"{c['value']:+.4f}" if isinstance(c["value"], float) else str(c["value"]))
            threshold = f"{c['threshold']:+.4f}" if isinstance(c["threshold"], float) else str(c["threshold"])
            lines.append(f"| {c['name']} | {value} | {c['comparison']} {threshold} | {c['verdict']} |")
    return "\n".join(lines)
