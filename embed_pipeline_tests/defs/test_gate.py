"""The eval_report checks as Dagster runs them: the promotion gate (a warning: refusal is a normal outcome) and the small-eval warning."""

import dagster as dg

from embed_pipeline.defs.checks import EVAL_SIZE_CHECK, GATE_CHECK, eval_report_eval_set_size, eval_report_promotion_gate
from embed_pipeline.lib.artifacts import ReportHandle
from embed_pipeline.lib.config import GateConfig
from embed_pipeline.lib.io import write_json
from embed_pipeline_tests.reports import CLEAR_LIFT, make_report


def run_checks(tmp_path, report: dict) -> dict[str, dg.AssetCheckEvaluation]:
    path = write_json(report, tmp_path / "eval_report.json")

    @dg.asset(name="eval_report")
    def stand_in() -> ReportHandle:
        return ReportHandle(str(path), bool(report["gate"]["passed"]))

    result = dg.materialize([stand_in, eval_report_promotion_gate, eval_report_eval_set_size],
                            instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def meta(evaluation: dg.AssetCheckEvaluation) -> dict:
    return {k: getattr(v, "value", v) for k, v in evaluation.metadata.items()}


def test_gate_check_passes_and_reports_every_value_beside_its_threshold(tmp_path):
    checks = run_checks(tmp_path, make_report(*CLEAR_LIFT, segments={"a": 50, "b": 50}, gate=GateConfig()))
    gate = checks[GATE_CHECK]
    assert gate.passed and not gate.blocking and gate.severity == dg.AssetCheckSeverity.WARN
    values = meta(gate)
    assert values["recall@10 lift over champion"] == 0.15
    assert values["recall@10 lift over champion (needs >=)"] == 0.01
    assert values["recall@10 lift CI lower bound (needs >)"] == 0.0
    assert values["recall@10 lift CI lower bound"] > 0
    assert values["worst segment recall@10 lift (needs >=)"] == -0.03
    assert values["eval queries"] == 100 and values["eval queries (needs >=)"] == 50
    assert checks[EVAL_SIZE_CHECK].passed


def test_small_eval_set_warns_and_the_gate_refuses(tmp_path):
    champion, candidate = [0.0] * 20, [1.0] * 20
    checks = run_checks(tmp_path, make_report(champion, candidate, gate=GateConfig()))
    size = checks[EVAL_SIZE_CHECK]
    assert not size.passed and size.severity == dg.AssetCheckSeverity.WARN
    assert meta(size)["eval_queries"] == 20 and meta(size)["threshold"] == 50
    gate = checks[GATE_CHECK]
    assert not gate.passed and gate.severity == dg.AssetCheckSeverity.WARN  # a refusal keeps the run green
    assert meta(gate)["eval queries (verdict)"].startswith("fail: too few eval queries")
    assert "eval queries 20 is not >= 50" in meta(gate)["summary"]

    allowed = run_checks(tmp_path, make_report(champion, candidate, gate=GateConfig(allow_small_eval=True)))
    assert allowed[GATE_CHECK].passed and not allowed[EVAL_SIZE_CHECK].passed  # still warned
