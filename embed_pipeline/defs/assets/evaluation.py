"""The eval report: BM25, base model, current champion and candidate on the held-out eval set."""

from pathlib import Path

import dagster as dg
import pandas as pd

from embed_pipeline.defs import metadata as md
from embed_pipeline.defs.assets.common import embed, load_eval_set, output_dir, read_corpus
from embed_pipeline.defs.resources import MlflowResource, PipelineResource
from embed_pipeline.lib.artifacts import CorpusHandle, IndexHandle, ModelHandle, NegativesHandle, PairsHandle, ReportHandle
from embed_pipeline.lib.evaluation import assemble_report, report_markdown, write_report
from embed_pipeline.lib.fusion import fuse
from embed_pipeline.lib.indexing import load_index
from embed_pipeline.lib.lexical import LexicalIndex
from embed_pipeline.lib.metrics import MAX_K
from embed_pipeline.lib.plots import png_markdown
from embed_pipeline.lib.promotion import expected_served
from embed_pipeline.lib.retrieval import choose_weight, dense_ranked, dev_relevance, ranked_ids
from embed_pipeline.lib.training_data import split_dev
from embed_pipeline.lib.tracking import RegistryError


def report_metadata(report: dict, path, plots: dict[str, bytes]) -> dict:
    """The eval_report materialisation's metadata; the keys in `defs/metadata.py` are read by the sensor."""
    ci = report["ci"]["recall@10"]
    judged = report["judged"]["candidate"]
    return {
        md.REPORT_PATH: md.path(path),
        md.GATE_PASSED: report["gate"]["passed"],
        md.GATE_SUMMARY: report["gate"]["summary"],
        md.RECALL10_LIFT: report["lift_over_champion"]["recall@10"],
        md.RECALL10_THRESHOLD: next(c["threshold"] for c in report["gate"]["clauses"] if c["name"] == "recall@10 lift over champion"),
        md.CANDIDATE_VERSION: str(report["models"]["candidate"]["version"]),
        "eval_queries": report["eval"]["queries"],
        "retrieval": dg.MetadataValue.json(report.get("retrieval") or {"mode": "dense"}),
        "recall@10 lift CI": f"[{ci['low']:+.4f}, {ci['high']:+.4f}] ({ci['confidence']:.0%}, {ci['resamples']} resamples)",
        "candidate recall@10 (judged)": report[judged]["recall@10"],
        "candidate ndcg@10 (judged)": report[judged]["ndcg@10"],
        "bm25 recall@10": report["bm25"]["recall@10"] if "bm25" in report else "n/a",
        "approximate search recall@10 loss": report["approximate_search_loss"]["recall@10"],
        "report": dg.MetadataValue.md(report_markdown(report)),
        **{f"plot: {name}": dg.MetadataValue.md(png_markdown(png, name)) for name, png in plots.items()},
    }


def resolve_champion(tracker, config) -> dict | None:
    """The champion's model folder and version; None only when nothing has been promoted yet.

    Fails closed: a registry error, an alias naming a version whose model folder is gone, or an
    alias that disagrees with the promotion history (the served pointer's source of truth) all
    raise: judging a candidate against the base model by mistake could replace a better champion.
    """
    try:
        alias = tracker.alias_version(config.registered_model_name)
    except RegistryError as exc:
        raise dg.Failure(f"cannot resolve the champion, refusing to judge the candidate: {exc}") from None
    served = expected_served(config.artifacts_dir)
    if alias is None and served is None:
        return None
    if alias is None or served is None or str(alias.version) != str(served["model_version"]):
        raise dg.Failure(
            f"the champion is ambiguous: registry alias {'v' + str(alias.version) if alias else 'none'}, promotion history "
            f"{'v' + str(served['model_version']) if served else 'none'}. `embed-pipeline promote` (or the promotion "
            "sensor's next tick) reconciles them from the history; then re-run.")
    path = alias.tags.get("model_path")
    if not path or not Path(path).exists():
        raise dg.Failure(f"champion v{alias.version}: its model folder {path!r} is missing (retention or a manual delete?)")
    return {"name": alias.name, "version": str(alias.version), "run_id": alias.run_id, "model_dir": path,
            "retrieval": served.get("retrieval")}


@dg.asset(group_name="evaluation", kinds={"json"})
def eval_report(
    context: dg.AssetExecutionContext,
    corpus: CorpusHandle,
    curated_pairs: PairsHandle,
    hard_negatives: NegativesHandle,
    embedding_model: ModelHandle,
    corpus_index: IndexHandle,
    pipeline: PipelineResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """BM25, base, champion and candidate (dense and hybrid) on the eval set: metrics, bootstrap CI, segments, plots, the gate's verdict."""
    config = pipeline.config
    retrieval = config.retrieval
    try:
        tracker = mlflow.tracker(config)
    except RegistryError as exc:
        raise dg.Failure(f"cannot resolve the champion, refusing to judge the candidate: {exc}") from None
    champion = resolve_champion(tracker, config)
    passages = read_corpus(corpus)
    ids = list(passages["passage_id"])
    eval_set, loaded = load_eval_set(config, set(ids), curated_pairs)
    qids, texts = list(eval_set.queries), list(eval_set.queries.values())
    lexical = LexicalIndex.load(corpus_index.lexical_path) if corpus_index.lexical_path else None
    lexical_eval = lexical.search(texts, retrieval.depth) if lexical else None

    def dense(model_ref: str, queries: list[str]):
        vectors = embed(config, model_ref, passages, queries)
        return dense_ranked(vectors.query_vectors, vectors.corpus_vectors, ids, MAX_K), vectors.query_vectors

    context.log.info(f"eval_report: ranking {len(qids)} eval queries with BM25, the base model, "
                     f"{'champion v' + champion['version'] if champion else 'no champion (base stands in)'} and the candidate")
    base, _ = dense(config.resolved_base_model, texts)
    champion_dense = dense(champion["model_dir"], texts)[0] if champion else base
    candidate_exact, candidate_vectors = dense(embedding_model.model_dir, texts)
    served_scores, served_ids = load_index(corpus_index.path).search_ids(candidate_vectors, MAX_K)
    rankings = {"base": ranked_ids(base, qids), "champion": ranked_ids(champion_dense, qids),
                "candidate": dict(zip(qids, served_ids, strict=True)), "candidate_exact": ranked_ids(candidate_exact, qids)}

    # The hybrid's dense weight: configured, or chosen on the training dev split (never the eval set).
    triples = pd.read_parquet(hard_negatives.path)
    dev_rows = split_dev(triples, config.training.dev_share, config.training.dev_max_queries, config.training.seed)[1]
    dev_queries, dev_relevant = dev_relevance(dev_rows)
    weight = choose_weight(retrieval.dense_weight, retrieval.fusion,
                           dense(embedding_model.model_dir, dev_queries)[0] if lexical and dev_queries else None,
                           lexical.search(dev_queries, retrieval.depth) if lexical and dev_queries else None,
                           dev_queries, dev_relevant)
    if lexical is not None:
        rankings["bm25"] = ranked_ids(lexical_eval, qids)
        fused = {"candidate_hybrid": (served_ids, served_scores), "champion_hybrid": champion_dense}
        for row, dense_list in fused.items():
            rankings[row] = dict(zip(qids, fuse(dense_list, lexical_eval, retrieval.fusion, weight.dense_weight, MAX_K,
                                                retrieval.rrf_k), strict=True))
    elif retrieval.mode == "hybrid":
        raise dg.Failure("retrieval.mode is hybrid but corpus_index holds no BM25 index")
    served_mode = {"mode": retrieval.mode, "fusion": retrieval.fusion if retrieval.mode == "hybrid" else None,
                   "dense_weight": weight.dense_weight if retrieval.mode == "hybrid" else None,
                   "dense_weight_source": weight.source}

    models = {"base": config.base_model,
              "champion": ({k: champion[k] for k in ("name", "version", "run_id")} if champion else
                           {"name": config.base_model, "version": None, "note": "no champion yet: the base model stands in"}),
              "candidate": {"model_dir": embedding_model.model_dir, "run_id": embedding_model.run_id,
                            "name": embedding_model.name, "version": embedding_model.version},
              "index": {"path": corpus_index.path, "type": corpus_index.type, "size": corpus_index.size,
                        "lexical_path": corpus_index.lexical_path}}
    report, per_query = assemble_report(eval_set, loaded.pairs, rankings, models, config.gate, served_mode)
    report["leakage"] = {"mode": config.leakage.on_leak, **_leakage_counts(context)}
    folder = output_dir(context, config)
    path, plots = write_report(report, per_query, folder, config.gate.min_segment_queries)
    if weight.table is not None:
        weight.table.to_csv(folder / "dense_weight_dev.csv", index=False)
    run_id = embedding_model.run_id
    judged = report["judged"]["candidate"]
    tracker.log_metrics(run_id, {f"eval/{m}": v for m, v in report[judged].items()}
                        | {f"eval/dense/{m}": v for m, v in report["candidate"].items()}
                        | {f"eval/lift_over_champion/{m}": v for m, v in report["lift_over_champion"].items()}
                        | {f"eval/ci_low/{m}": c["low"] for m, c in report["ci"].items()})
    tracker.log_params(run_id, {"retrieval.served_mode": retrieval.mode,
                                "retrieval.chosen_dense_weight": served_mode["dense_weight"],
                                "retrieval.dense_weight_source": weight.source})
    tracker.log_artifacts(run_id, folder, "eval")
    decision = "gate passed: awaiting promotion" if report["gate"]["passed"] else f"not promoted: {report['gate']['summary']}"
    tracker.set_tags(run_id, {"gate_passed": report["gate"]["passed"], "promotion_decision": decision})
    context.log.info("eval report:\n" + report_markdown(report))
    return dg.MaterializeResult(value=ReportHandle(str(path), bool(report["gate"]["passed"])),
                                metadata={**report_metadata(report, path, plots), "config_hash": pipeline.config_hash})


def _leakage_counts(context: dg.AssetExecutionContext) -> dict:
    """training_pairs' leak counts of this run (its materialisation metadata), for the report's `leakage` block."""
    event = context.instance.get_latest_materialization_event(dg.AssetKey("training_pairs"))
    meta = event.asset_materialization.metadata if event is not None and event.run_id == context.run_id else {}

    def value(key: str) -> int:
        return int(meta[key].value) if key in meta else 0

    return {"dropped_pairs": value("leaking_pairs_dropped"), "exact": value("leaks_exact"),
            "near_duplicate": value("leaks_near_duplicate")}
