"""The eval report: base model, current champion and candidate on the held-out eval set."""

import dagster as dg

from embed_pipeline.defs import metadata as md
from embed_pipeline.defs.assets.common import encode_passages, encode_queries, load_eval_set, read_corpus
from embed_pipeline.defs.resources import MlflowResource, PipelineResource
from embed_pipeline.lib.embedding import load_model, model_fingerprint
from embed_pipeline.lib.evaluation import build_report, rank_exact, report_markdown, score_rankings
from embed_pipeline.lib.indexing import load_index
from embed_pipeline.lib.io import write_json
from embed_pipeline.lib.metrics import MAX_K
from embed_pipeline.lib.promotion import evaluate_gate


@dg.asset(group_name="evaluation", kinds={"json"})
def eval_report(
    context: dg.AssetExecutionContext,
    corpus: dict,
    embedding_model: dict,
    corpus_index: dict,
    pipeline: PipelineResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """Retrieval metrics of the base model, the champion and the candidate on the eval set, the lifts and the gate's verdict."""
    config = pipeline.load()
    tracker = mlflow.tracker(config)
    passages = read_corpus(corpus)
    ids = list(passages["passage_id"])
    eval_set, _ = load_eval_set(config, set(ids))
    query_texts = list(eval_set.queries.values())

    def exact_scores(model_ref: str):
        model = load_model(model_ref)
        fingerprint = model_fingerprint(model)
        corpus_vectors, _ = encode_passages(model, fingerprint, config, passages)
        query_vectors, _ = encode_queries(model, fingerprint, config, query_texts)
        return score_rankings(eval_set, rank_exact(query_vectors, corpus_vectors, ids, MAX_K)), model, fingerprint

    per_query = {}
    per_query["base"], _, _ = exact_scores(config.resolved_base_model)
    champion = tracker.alias_version(config.registered_model_name)
    if champion is not None:
        per_query["champion"], _, _ = exact_scores(champion.tags["model_path"])
        champion_info = {"name": champion.name, "version": str(champion.version), "run_id": champion.run_id}
    else:
        per_query["champion"] = per_query["base"]
        champion_info = {"name": config.base_model, "version": None, "note": "no champion yet: the base model stands in"}
    per_query["candidate_exact"], candidate_model, fingerprint = exact_scores(embedding_model["model_dir"])
    served = load_index(corpus_index["path"])
    query_vectors, _ = encode_queries(candidate_model, fingerprint, config, query_texts)
    _, ranked = served.search_ids(query_vectors, MAX_K)
    per_query["candidate"] = score_rankings(eval_set, ranked)

    models = {"base": config.base_model, "champion": champion_info, "candidate": embedding_model,
              "index": {k: corpus_index[k] for k in ("path", "type", "size")}}
    report = build_report(per_query, models)
    report["gate"] = evaluate_gate(report, config.gate)
    report_dir = config.artifacts_dir / "reports" / context.run_id
    path = write_json(report, report_dir / "eval_report.json")
    tracker.log_metrics(embedding_model["run_id"], {f"eval/{m}": v for m, v in report["candidate"].items()})
    tracker.log_artifact(embedding_model["run_id"], path, "eval")
    tracker.set_tags(embedding_model["run_id"], {"gate_passed": report["gate"]["passed"]})
    lift = report["lift_over_champion"]["recall@10"]
    context.log.info("eval report:\n" + report_markdown(report))
    return dg.MaterializeResult(
        value={"path": str(path)},
        metadata={
            md.REPORT_PATH: md.path(path),
            md.GATE_PASSED: report["gate"]["passed"],
            md.RECALL10_LIFT: lift,
            md.RECALL10_THRESHOLD: config.gate.min_recall_at_10_lift,
            md.CANDIDATE_VERSION: str(embedding_model["version"]),
            "eval_queries": report["eval"]["queries"],
            "report": dg.MetadataValue.md(report_markdown(report)),
            "candidate recall@10": report["candidate"]["recall@10"],
            "candidate ndcg@10": report["candidate"]["ndcg@10"],
        },
    )
