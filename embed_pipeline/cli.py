"""`embed-pipeline`: run the training graph, promote, roll back, search the served index, open the UI.

Every command takes `--config FILE` (default: the bundled demo config, run in ./artifacts) and passes
that path explicitly to the Dagster definitions; nothing reads the config from the environment.
Runs execute in this process against the Dagster instance in $DAGSTER_HOME (default:
`<artifacts_dir>/dagster_home`, seeded with the bundled dagster.yaml), so every run,
materialisation and check result shows in the Dagster UI afterwards.

Exit codes:
  0  success (for `run`: the candidate passed the promotion gate)
  1  a step failed, a blocking data check failed, or `run` produced no eval report; the root cause
     is the last line printed
  1  also: promotion records that disagree where one is damaged (a torn served_history.jsonl line,
     an unreadable served.json): nothing changes until `--repair history|pointer` says whom to trust
  2  config, input or usage error (a bad key or value, a missing or malformed file, an unwritable or
     full artifacts_dir, an unreachable store, `search --k 0`), found before any work
  3  `run` and `demo`: everything ran and the promotion gate refused the candidate (a normal
     outcome; the run itself is green in the UI, the gate's check is a warning)
  128+N  interrupted by signal N (130 Ctrl-C, 143 SIGTERM, 129 a closed terminal): the run is
     canceled, its pool slots freed, and the one line printed says what it was doing
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from embed_pipeline.console import (Session, StorageError, check_evaluations, os_error_in, output, quiet_libraries,
                                    root_cause, say, storage_problem)
from embed_pipeline.run_watch import RunInterrupted
from embed_pipeline.lib.config import ConfigError
from embed_pipeline.lib.io import InputError
from embed_pipeline.lib.promotion import PromotionError
from embed_pipeline.lib.tracking import RegistryError

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_GATE_REFUSED = 0, 1, 2, 3


def cmd_run(args: argparse.Namespace) -> int:
    from embed_pipeline.lib.evaluation import report_markdown
    from embed_pipeline.console import check_environment
    from embed_pipeline.lib.inputs import validate_inputs
    from embed_pipeline.lib.contracts import read_eval_report

    session = Session(args.config)
    check_environment(session.config)
    summary = validate_inputs(session.config)
    say("inputs checked: " + "; ".join(summary))
    session.recover()
    session.reconcile(args.repair)
    result = session.execute("training_job", verbose=args.verbose)
    for event in result.all_events:
        if event.event_type_value == "STEP_SUCCESS":
            say(f"step {event.step_key}: done in {event.event_specific_data.duration_ms / 1000:.1f}s")
    _say_quarantines(result)
    failed_checks, warned_checks = check_evaluations(result)
    for check in warned_checks:
        if check.check_name != "eval_report_promotion_gate":
            say(f"check WARNING: {check.check_name} on {check.asset_key.to_user_string()}: "
                + ", ".join(f"{k}={getattr(v, 'value', v)}" for k, v in check.metadata.items()))
    for check in failed_checks:
        say(f"check FAILED: {check.check_name} on {check.asset_key.to_user_string()}")
        for key, value in check.metadata.items():
            say(f"  {key}: {getattr(value, 'value', value)}")
    handle = output(result, "eval_report")
    report = read_eval_report(handle.path) if handle is not None else None
    if report is not None:
        say(f"eval report (run {result.run_id}):\n{report_markdown(report)}")
        gate = report["gate"]
        say(f"promotion gate: {'PASSED: the promotion sensor promotes it (or run `embed-pipeline promote`)' if gate['passed'] else 'REFUSED: ' + gate['summary']}")
        if args.json:
            print(json.dumps({**report, **_index_summary(result)}, indent=2))
    if not result.success or failed_checks:
        causes = [f"step {e.step_key} failed: {root_cause(e.event_specific_data.error)}"
                  for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        causes += [f"check {c.check_name} failed (see above)" for c in failed_checks]
        say("FAILED. " + (" | ".join(causes) or "see the Dagster events above"))
        return EXIT_FAILED
    if report is None:  # the gate never judged anything: a failure, not a refusal
        say(f"FAILED. run {result.run_id} succeeded but produced no eval report, so there is nothing for the gate to judge")
        return EXIT_FAILED
    return EXIT_OK if report["gate"]["passed"] else EXIT_GATE_REFUSED


def _say_quarantines(result) -> None:
    """Rows set aside by the run (never silently dropped), with where to read them."""
    import pandas as pd

    corpus, curated, pairs, logs, report = (output(result, n) for n in ("corpus", "curated_pairs", "training_pairs",
                                                                         "search_log_pairs", "eval_report"))
    def first(path: str) -> str:
        row = pd.read_parquet(path).iloc[0]
        return f"first: {row['file'] + ' ' if 'file' in row else ''}line {row['line']}: {row['reason']}"

    if corpus is not None:
        quarantined = len(pd.read_parquet(corpus.quarantine_path))
        if quarantined:
            say(f"quarantined {quarantined} corpus row(s) ({first(corpus.quarantine_path)}): {corpus.quarantine_path}")
    if curated is not None and curated.quarantined:
        say(f"quarantined {curated.quarantined} of {curated.rows_in} curated row(s) ({first(curated.files['quarantine'])}): "
            f"{curated.files['quarantine']}")
    if logs is not None and logs.quarantined:
        say(f"quarantined {logs.quarantined} of {logs.rows_in} search-log impression(s) ({first(logs.files['quarantine'])}): "
            f"{logs.files['quarantine']}")
    if report is not None:
        from embed_pipeline.lib.io import read_json

        block = read_json(report.path).get("quarantine", {}).get("eval", {})
        if block.get("rows"):
            say(f"quarantined {block['rows']} eval row(s) ({first(block['path'])}): {block['path']}")
    if pairs is not None and pairs.quarantined:
        say(f"dropped {pairs.quarantined} training pair(s) leaking an eval query (decontamination): {pairs.files['leaks']}")


def _index_summary(result) -> dict:
    """`index`: passages in the candidate's index, encoded in this run, reused from the cache, type."""
    built = output(result, "corpus_index")
    if built is None:
        return {}
    return {"index": {"passages": built.size, "encoded": built.encoded, "reused_from_cache": built.reused,
                      "type": built.type, "path": built.path, "lexical_path": built.lexical_path}}


def cmd_promote(args: argparse.Namespace) -> int:
    """Apply the promotion sensor's decision to the latest eval report (same function, same run key)."""
    import dagster as dg

    from embed_pipeline.defs.promotion_sensor import promotion_decision

    session = Session(args.config)
    session.recover()
    session.reconcile(args.repair)
    instance = session.instance
    event = instance.get_latest_materialization_event(dg.AssetKey("eval_report"))
    if event is None:
        say("no eval_report has been materialised yet: run `embed-pipeline run` first")
        return EXIT_FAILED
    decision = promotion_decision(event)
    if isinstance(decision, dg.SkipReason):
        say(decision.skip_message)
        return EXIT_OK
    run_key_tag = "dagster/run_key"
    already = instance.get_run_records(dg.RunsFilter(tags={run_key_tag: decision.run_key}), limit=1)
    if already:
        say(f"already promoted by run {already[0].dagster_run.run_id} (run key {decision.run_key})")
        return EXIT_OK
    result = session.execute("promotion_job", run_config=decision.run_config,
                             tags={**decision.tags, run_key_tag: decision.run_key})
    return _served_outcome(result)


def cmd_rollback(args: argparse.Namespace) -> int:
    """Serve the champion before the current one again, as a `served_model` materialisation."""
    import getpass

    from embed_pipeline.lib.promotion import missing_parts, served_history, served_stack

    session = Session(args.config)
    session.recover()
    session.reconcile(args.repair)
    # Refusals known before the job starts are one line (the job would refuse too, with Dagster's traceback).
    stack = served_stack(served_history(session.config.artifacts_dir))
    if len(stack) < 2:
        say("nothing to roll back to: " + ("no model has been promoted yet" if not stack
                                           else f"v{stack[-1]['model_version']} is the first promoted model"))
        return EXIT_CONFIG
    if missing := missing_parts(stack[-2]):
        say(f"refused: cannot roll back to v{stack[-2]['model_version']}: its {' and '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} gone; nothing changed (v{stack[-1]['model_version']} still serves)")
        return EXIT_FAILED
    config = {"action": "rollback", "requested_by": f"{getpass.getuser()} via embed-pipeline rollback",
              "reason": args.reason or "manual rollback"}
    result = session.execute("promotion_job", run_config={"ops": {"served_model": {"config": config}}})
    return _served_outcome(result)


def _served_outcome(result) -> int:
    for event in result.all_events:
        if event.event_type_value == "ASSET_MATERIALIZATION":
            meta = event.event_specific_data.materialization.metadata
            say(f"{meta['decision'].value} (run {result.run_id}; served_model materialised)")
        if event.event_type_value == "STEP_FAILURE":
            say(f"refused: {root_cause(event.event_specific_data.error)}")
    return EXIT_OK if result.success else EXIT_FAILED


def cmd_search(args: argparse.Namespace) -> int:
    """Query the served model and index by hand; one JSON line per hit on stdout (each with `score` and `mode`).

    It reads the state `promote` reads: the served pointer reconciled with the promotion history
    and the registry alias first, then the pointer's model folder and indexes must exist."""
    from embed_pipeline.lib.promotion import missing_parts, read_served
    from embed_pipeline.lib.retrieval import search_served

    if args.k < 1:
        say(f"usage error: --k must be at least 1 (got {args.k})")
        return EXIT_CONFIG
    if not args.query.strip():
        say("usage error: the query is empty; give the text to search for")
        return EXIT_CONFIG
    session = Session(args.config)
    session.reconcile(args.repair)
    pointer = read_served(session.config.artifacts_dir)
    if pointer is None:
        say("no model is served yet: run `embed-pipeline run` and promote a candidate first")
        return EXIT_FAILED
    if missing := missing_parts(pointer):
        say(f"v{pointer['model_version']} serves, but its {' and '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} missing: restore it, or `embed-pipeline rollback`")
        return EXIT_CONFIG
    try:
        hits = search_served(session.config, args.query, args.k, args.mode)
    except (LookupError, ValueError) as exc:
        say(str(exc))
        return EXIT_FAILED
    if hits:
        say(f"{len(hits)} hit(s) from v{hits[0]['model_version']}, ranked {hits[0]['mode']}")
    for hit in hits:
        print(json.dumps(hit))
    return EXIT_OK


def cmd_ui(args: argparse.Namespace) -> int:
    """`dagster dev` from this venv, with DAGSTER_HOME and the config path set for the definitions."""
    from embed_pipeline.definitions import CONFIG_ENV_VAR

    session = Session(args.config)
    dagster = Path(sys.executable).parent / "dagster"
    if not dagster.exists():
        say(f"no `dagster` executable beside {sys.executable}: reinstall the project (pip install -e .)")
        return EXIT_FAILED
    os.environ[CONFIG_ENV_VAR] = session.config_path
    # The installed module, not a workspace file beside a checkout: this works from any directory.
    os.execv(str(dagster), [str(dagster), "dev", "-m", "embed_pipeline.definitions"])
    return EXIT_OK


def cmd_init(args: argparse.Namespace) -> int:
    """A starter project for your own data: config.yaml, dagster.yaml, workspace.yaml, README.md."""
    from embed_pipeline.starter import init_project

    try:
        written = init_project(Path(args.dir), corpus=args.corpus, curated=args.curated, eval_set=args.eval,
                               search_logs=args.search_logs, base_model=args.base_model)
    except (FileExistsError, FileNotFoundError) as exc:
        say(f"init: {exc}")
        return EXIT_CONFIG
    except OSError as exc:  # a read-only file system, no permission, a disk that is full
        from embed_pipeline.console import storage_problem

        say(f"init: {storage_problem(exc, f'cannot write {args.dir}')}")
        return EXIT_CONFIG
    say(f"wrote {', '.join(p.name for p in written)} in {written[0].parent}; next: its README.md")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from embed_pipeline.demo import run_demo

    return run_demo(args.config, as_json=args.json, verbose=args.verbose)


COMMANDS = [
    ("run", cmd_run, "materialise the training graph (pairs -> negatives -> model -> index -> eval report) and print the report"),
    ("demo", cmd_demo, "walk the whole loop on the demo data: train, gate, promote, search, edit the corpus, re-embed, roll back"),
    ("promote", cmd_promote, "apply the promotion sensor's decision to the latest eval report now"),
    ("rollback", cmd_rollback, "serve the previous champion again (walks back one promotion per call)"),
    ("search", cmd_search, "query the served model and index; JSON lines out"),
    ("ui", cmd_ui, "start the Dagster UI (`dagster dev`) on this config's instance"),
    ("init", cmd_init, "write a starter project for your own data (config, dagster.yaml, workspace.yaml, README)"),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="embed-pipeline", description=__doc__.split("\n\n")[0],
                                     epilog="exit codes:\n" + __doc__.split("Exit codes:\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, help_text in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == "init":
            p.add_argument("dir", help="the project folder (created; existing files are never overwritten)")
            p.add_argument("--corpus", type=Path, help="corpus.jsonl (BEIR) or Parquet (_id, title, text)")
            p.add_argument("--curated", type=Path, help="training pairs: a table (query, passage_id) or a BEIR folder")
            p.add_argument("--eval", type=Path, help="held-out set: a table or a BEIR folder")
            p.add_argument("--search-logs", type=Path, help="click logs (Parquet)")
            p.add_argument("--base-model", default="BAAI/bge-small-en-v1.5", help="hub id, local folder or pkg:<module>")
            p.add_argument("--verbose", action="store_true", help="a failure prints its Python traceback")
            p.set_defaults(func=func)
            continue
        p.add_argument("--config", help="pipeline YAML (default: the bundled demo, run in ./artifacts)")
        p.add_argument("--verbose", action="store_true", help="also Dagster's DEBUG events (inputs, outputs, step handoffs); "
                                                              "a failure prints its Python traceback")
        if name in ("run", "demo"):
            p.add_argument("--json", action="store_true", help="print the result as one JSON object on stdout")
        if name in ("run", "promote", "rollback", "search"):
            p.add_argument("--repair", choices=["history", "pointer"], default=None,
                           help="when the promotion records disagree and one is damaged (a torn served_history.jsonl "
                                "line, an unreadable served.json): trust the readable history, or the served pointer "
                                "(recorded in the history). Without it such a command refuses and changes nothing")
        if name == "rollback":
            p.add_argument("--reason", default="", help="why (kept in the promotion history and the UI)")
        if name == "search":
            p.add_argument("query", help="the query text")
            p.add_argument("--k", type=int, default=10, help="hits to return (default 10)")
            p.add_argument("--mode", choices=["dense", "hybrid", "lexical"], default=None,
                           help="default: what the served pointer names (the gate judged that mode)")
        p.set_defaults(func=func)
    args = parser.parse_args(argv)
    if not getattr(args, "verbose", False):
        quiet_libraries()
    verbose = getattr(args, "verbose", False)
    try:
        return args.func(args)
    except (ConfigError, InputError) as exc:
        say(f"{'config' if isinstance(exc, ConfigError) else 'input'} error: {' '.join(str(exc).split())}")
        return EXIT_CONFIG
    except StorageError as exc:
        say(f"storage error: {exc}")
        return EXIT_CONFIG
    except PromotionError as exc:  # damaged promotion records that disagree: nothing changed
        say(f"refused: {' '.join(str(exc).split())}")
        return EXIT_FAILED
    except RegistryError as exc:  # the registry failed mid-command (an unreachable store at start is a config error, exit 2)
        say(f"MLflow error: {' '.join(str(exc).split())}")
        return EXIT_FAILED
    except RunInterrupted as exc:  # SIGINT, SIGTERM or SIGHUP during a run: it was canceled cleanly
        say(str(exc))
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - the last resort: one line, the traceback only with --verbose
        if verbose:
            raise
        if (os_error := os_error_in(exc)) is not None:
            where = getattr(os_error, "filename", None) or "a file the pipeline writes"
            say(f"storage error: {storage_problem(os_error, str(where))}")
            return EXIT_CONFIG
        say(f"FAILED: {type(exc).__name__}: {' '.join(str(exc).split())[:500]} (rerun with --verbose for the traceback)")
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
