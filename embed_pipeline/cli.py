"""`embed-pipeline`: run the whole graph, promote, roll back, open the UI.

`run` executes the training job in this process against the Dagster instance in $DAGSTER_HOME
(default: `<artifacts_dir>/dagster_home`, seeded with the project's dagster.yaml), so every run,
materialisation and check result shows in the Dagster UI afterwards.

Exit codes: 0 success; 1 a step or a blocking check failed; 2 config error; 3 (`run` only)
everything ran and only the promotion gate refused the candidate (the report is still printed).
"""

import argparse
import contextlib
import json
import os
import shutil
import sys
from pathlib import Path

from embed_pipeline.lib.config import CONFIG_ENV_VAR, ConfigError, PipelineConfig, load_config

PROJECT_ROOT = Path(__file__).resolve().parent.parent
EXIT_FAILED, EXIT_GATE_REFUSED = 1, 3


def _say(message: str) -> None:
    print(f"[embed-pipeline] {message}", file=sys.stderr, flush=True)


def _prepare(args: argparse.Namespace) -> PipelineConfig:
    config = load_config(args.config)
    os.environ[CONFIG_ENV_VAR] = str(config.source)
    if not os.environ.get("DAGSTER_HOME"):
        home = config.artifacts_dir / "dagster_home"
        home.mkdir(parents=True, exist_ok=True)
        project_yaml = PROJECT_ROOT / "dagster.yaml"
        if project_yaml.exists() and not (home / "dagster.yaml").exists():
            shutil.copy(project_yaml, home / "dagster.yaml")
        os.environ["DAGSTER_HOME"] = str(home)
    _say(f"config {config.source}; DAGSTER_HOME={os.environ['DAGSTER_HOME']}; MLflow {config.tracking_uri}")
    return config


def _failed_checks(result) -> list:
    """Failed checks of ERROR severity (a failed WARN check, like a small eval set, is reported but fails nothing)."""
    import dagster as dg

    return [e for e in result.get_asset_check_evaluations() if not e.passed and e.severity != dg.AssetCheckSeverity.WARN]


def _warned_checks(result) -> list:
    import dagster as dg

    return [e for e in result.get_asset_check_evaluations() if not e.passed and e.severity == dg.AssetCheckSeverity.WARN]


def cmd_run(args: argparse.Namespace) -> int:
    import dagster as dg

    from embed_pipeline.definitions import build_defs
    from embed_pipeline.lib.evaluation import report_markdown
    from embed_pipeline.lib.io import read_json

    config = _prepare(args)
    defs = build_defs(str(config.source))
    job = defs.resolve_job_def("training_job")
    # Libraries print progress to stdout (the trainer's loss lines); keep stdout for the report.
    with contextlib.redirect_stdout(sys.stderr):
        log_level = "DEBUG" if args.verbose else "INFO"
        result = job.execute_in_process(instance=dg.DagsterInstance.get(), raise_on_error=False,
                                        run_config={"loggers": {"console": {"config": {"log_level": log_level}}}})
    for event in result.all_events:
        if event.event_type_value == "STEP_SUCCESS":
            _say(f"step {event.step_key}: done in {event.event_specific_data.duration_ms / 1000:.1f}s")
    for check in _warned_checks(result):
        _say(f"check WARNING: {check.check_name} on {check.asset_key.to_user_string()}: "
             + ", ".join(f"{k}={getattr(v, 'value', v)}" for k, v in check.metadata.items()))
    failed_checks = _failed_checks(result)
    for check in failed_checks:
        _say(f"check FAILED: {check.check_name} on {check.asset_key.to_user_string()}")
        for key, value in check.metadata.items():
            _say(f"  {key}: {getattr(value, 'value', value)}")
    report = None
    if _has_output(result, "eval_report"):
        report = read_json(result.output_for_node("eval_report")["path"])
    if report is not None:
        _say("eval report (run id %s):\n%s" % (result.run_id, report_markdown(report)))
        gate = report["gate"]
        _say(f"promotion gate: {'PASSED' if gate['passed'] else 'REFUSED'}"
             + ("" if not gate["passed"] else " (the promotion sensor promotes it; or run `embed-pipeline promote`)"))
        if args.json:
            print(json.dumps({**report, **_index_summary(result)}, indent=2))
    if result.success:
        return 0
    only_gate = report is not None and failed_checks and all(c.check_name == "eval_report_promotion_gate" for c in failed_checks)
    if not only_gate:
        for event in result.all_events:
            if event.event_type_value == "STEP_FAILURE":
                _say(f"step {event.step_key} FAILED: {event.event_specific_data.error.message.strip()}")
    return EXIT_GATE_REFUSED if only_gate else EXIT_FAILED


def _index_summary(result) -> dict:
    """`index`: passages in the candidate's index, encoded in this run, reused from the cache, type."""
    if not _has_output(result, "corpus_index"):
        return {}
    built = result.output_for_node("corpus_index")
    return {"index": {"passages": built["size"], "encoded": built["encoded"], "reused_from_cache": built["reused"],
                      "type": built["type"], "path": built["path"]}}


def _has_output(result, node: str) -> bool:
    try:
        result.output_for_node(node)
    except Exception:  # noqa: BLE001 - Dagster raises several types for "no such output"
        return False
    return True


def cmd_promote(args: argparse.Namespace) -> int:
    from embed_pipeline.cli_actions import promote_latest

    config = _prepare(args)
    return promote_latest(config, _say)


def cmd_rollback(args: argparse.Namespace) -> int:
    from embed_pipeline.cli_actions import rollback

    config = _prepare(args)
    return rollback(config, _say)


def cmd_ui(args: argparse.Namespace) -> int:
    _prepare(args)
    os.chdir(PROJECT_ROOT)
    os.execvp("dagster", ["dagster", "dev", "-w", str(PROJECT_ROOT / "workspace.yaml")])
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="embed-pipeline", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, help_text in [
        ("run", cmd_run, "materialise the whole training graph and print the eval report"),
        ("promote", cmd_promote, "apply the promotion sensor's decision to the latest eval report now"),
        ("rollback", cmd_rollback, "restore the previous champion (MLflow alias and served pointer)"),
        ("ui", cmd_ui, "start `dagster dev` with DAGSTER_HOME and the config set"),
    ]:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", help=f"pipeline YAML (default: ${CONFIG_ENV_VAR}, else the bundled demo)")
        if name == "run":
            p.add_argument("--json", action="store_true", help="print only the eval report (with `gate`) as JSON on stdout; exit 3 when only the gate refused")
            p.add_argument("--verbose", action="store_true", help="also Dagster's DEBUG events (inputs, outputs, step handoffs)")
        p.set_defaults(func=func)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        _say(f"config error: {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
