"""Bad input, misuse and damaged state, replayed with the real CLI: never a hang, never a silent
loss, never a silent revert.

Every case asserts the exit code, the one line the user reads and, where rows are set aside, the
counts. The input cases fail at the input check (before any work), so they share one set of
fixture files; the damaged-state cases share one project that has run and promoted once.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import yaml

from embed_pipeline import cli
from embed_pipeline.lib.promotion import HISTORY_FILE, SERVED_FILE, promote, served_history
from embed_pipeline_tests.fixture_data import click_logs, write_project

BIN = Path(sys.executable).parent


def run_cli(capsys, *argv: str) -> tuple[int, list[str]]:
    """`embed-pipeline argv` in this process, on the instance its config names: (exit code, stderr lines)."""
    saved = {k: os.environ.pop(k, None) for k in ("DAGSTER_HOME",)}
    try:
        code = cli.main(list(argv))
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None)
            if value is not None:
                os.environ[key] = value
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Stack Trace" not in err, err[-3000:]
    return code, [line for line in err.splitlines() if line.strip()]


def last(lines: list[str]) -> str:
    return lines[-1].removeprefix("[embed-pipeline] ")


def variant(base: Path, name: str, **changes) -> Path:
    """A copy of the base config under `base/name.yaml` with `changes` (None removes a key); it
    reads the base project's files (absolute paths) and writes to its own artifacts folder."""
    config = yaml.safe_load((base / "config.yaml").read_text())
    for key in ("corpus", "search_logs"):
        config[key] = str(base / config[key])
    for key in ("curated_pairs", "eval"):
        config[key] = {k: str(base / v) for k, v in config[key].items()}
    config["artifacts_dir"] = str(base / "artifacts-inputs")
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        elif isinstance(value, dict) and isinstance(config.get(key), dict) and "pairs" not in value:
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    path = base / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_model_path) -> Path:
    """The fixture project's files, for configs that fail at the input check."""
    root = tmp_path_factory.mktemp("inputs") / "project"
    write_project(root, tiny_model_path)
    return root


def _logs(root: Path, name: str, frame: pd.DataFrame) -> str:
    path = root / name
    frame.to_parquet(path, index=False)
    return str(path)


INPUT_CASES = {
    "search logs that are not Parquet": (
        lambda r: {"search_logs": str(_write(r / "logs.parquet", "query,passage_id\nq,p\n"))}, "not a readable Parquet file"),
    "search logs with no rows": (lambda r: {"search_logs": _logs(r, "empty.parquet", click_logs().iloc[:0])}, "have no rows"),
    "every timestamp unparseable": (
        lambda r: {"search_logs": _logs(r, "badtime.parquet", click_logs().assign(timestamp="31/01/2026"))},
        "column `timestamp`: no value parses (row 1: '31/01/2026')"),
    "no click at all": (
        lambda r: {"search_logs": _logs(r, "noclick.parquet", click_logs().assign(clicked="N"))}, "no impression is a click"),
    "clicked in a word no rule reads": (
        lambda r: {"search_logs": _logs(r, "word.parquet", click_logs().assign(clicked="clicked!"))},
        "column `clicked`: no value parses"),
    "search logs path is a folder": (lambda r: {"search_logs": str(r / "eval")}, "is a folder"),
    "eval queries path is a folder": (lambda r: {"eval": {"queries": str(r / "eval")}}, "is a folder, expected a file"),
    "eval qrels path is a folder": (lambda r: {"eval": {"qrels": str(r / "eval" / "qrels")}}, "is a folder, expected a file"),
    "pairs file with no usable columns": (
        lambda r: {"curated_pairs": {"pairs": _logs(r, "pairs.parquet", pd.DataFrame({"a": [1], "b": [None]}))}},
        "a pairs table needs columns `query` and `passage_id`"),
    "a curated qrel naming an unknown passage": (
        lambda r: {"curated_pairs": {"qrels": str(_write(r / "curated_unknown.tsv", (r / "curated/qrels/test.tsv").read_text()
                                                         + "c0\tno-such-passage\t1\n"))}},
        "curated_pairs: 1 of 11 rows quarantined (9% > curation.max_quarantine_share 5%); first: curated_unknown.tsv "
        "line 12: unknown passage id"),
}


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", list(INPUT_CASES))
def test_unreadable_inputs_are_one_line_at_the_input_check(inputs, capsys, case):
    changes, expected = INPUT_CASES[case]
    config = variant(inputs, case.replace(" ", "_"), **changes(inputs))
    started = time.monotonic()
    code, lines = run_cli(capsys, "run", "--config", str(config))
    assert code == cli.EXIT_CONFIG and last(lines).startswith("input error: ") and expected in last(lines), lines
    assert time.monotonic() - started < 60  # at the input check, not after training


CONFIG_CASES = {
    "duplicate key": ("training:\n  epochs: 1\n  epochs: 3\n", "duplicate key 'epochs' on line 6 (first on line 5)"),
    "more negatives trained than mined": ("training:\n  num_negatives: 4\nmining:\n  num_negatives: 2\n",
                                          "training.num_negatives 4 > mining.num_negatives 2"),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_config_mistakes_are_config_errors(inputs, capsys, case):
    text, expected = CONFIG_CASES[case]
    config = inputs / f"{case.replace(' ', '_')}.yaml"
    config.write_text("corpus: corpus.jsonl\nartifacts_dir: artifacts-config\n"
                      f"eval: {{queries: eval/queries.jsonl, qrels: eval/qrels/test.tsv}}\n{text}")
    code, lines = run_cli(capsys, "run", "--config", str(config))
    assert code == cli.EXIT_CONFIG and last(lines).startswith("config error: ") and expected in last(lines), lines


def test_a_hub_base_model_not_in_the_offline_cache_fails_at_start_naming_it(inputs, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = variant(inputs, "hub_model", base_model="no-such-org/no-such-model")
    code, lines = run_cli(capsys, "run", "--config", str(config))
    assert code == cli.EXIT_CONFIG and "base_model 'no-such-org/no-such-model' is not in the local Hugging Face cache" in last(lines)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("command", [["run"], ["promote"], ["rollback"], ["search", "chain oil"]])
def test_an_http_tracking_server_that_is_down_is_one_line_in_seconds(inputs, capsys, command):
    uri = f"http://127.0.0.1:{_free_port()}"
    config = variant(inputs, "http_down", mlflow_tracking_uri=uri)
    started = time.monotonic()
    code, lines = run_cli(capsys, *command, "--config", str(config))
    assert time.monotonic() - started < 15
    assert code == cli.EXIT_CONFIG and f"cannot reach the MLflow tracking server at {uri}" in last(lines), lines


def test_an_artifacts_dir_under_a_regular_file_is_one_line(inputs, capsys):
    blocker = _write(inputs / "not-a-folder", "x")
    config = variant(inputs, "under_file", artifacts_dir=str(blocker / "artifacts"))
    code, lines = run_cli(capsys, "search", "chain oil", "--config", str(config))
    assert code == cli.EXIT_CONFIG and "a part of that path is a regular file" in last(lines), lines


def test_init_under_a_regular_file_is_one_line(inputs, capsys):
    blocker = _write(inputs / "init-blocker", "x")
    code, lines = run_cli(capsys, "init", str(blocker / "project"))
    assert code == cli.EXIT_CONFIG and last(lines).startswith("init: ") and "regular file" in last(lines), lines


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_artifacts_dir_and_init_there_are_one_line(inputs, capsys, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    config = variant(inputs, "read_only", artifacts_dir=str(locked / "artifacts"))
    code, lines = run_cli(capsys, "search", "chain oil", "--config", str(config))
    assert code == cli.EXIT_CONFIG and "permission denied" in last(lines), lines
    code, lines = run_cli(capsys, "init", str(locked / "project"))
    assert code == cli.EXIT_CONFIG and last(lines).startswith("init: ") and "permission denied" in last(lines), lines


def test_storage_problems_name_their_cause():
    from embed_pipeline.console import storage_problem

    full = OSError(errno.ENOSPC, "No space left on device")
    assert storage_problem(full, "artifacts_dir /a") == "artifacts_dir /a: no space left on device"
    assert storage_problem(OSError(errno.EROFS, "Read-only file system"), "x") == "x: read-only file system"
    assert storage_problem(Exception("(sqlite3.OperationalError) database or disk is full"), "x").endswith("no space left on device")


@pytest.mark.parametrize(("argv", "expected"), [(["--k", "-1"], "--k must be at least 1 (got -1)"),
                                                (["--k", "0"], "--k must be at least 1 (got 0)")])
def test_search_refuses_k_below_one(capsys, argv, expected):
    code, lines = run_cli(capsys, "search", "chain oil", *argv)
    assert code == cli.EXIT_CONFIG and last(lines) == f"usage error: {expected}"


@pytest.mark.parametrize("query", ["", "   "])
def test_search_refuses_an_empty_query(capsys, query):
    code, lines = run_cli(capsys, "search", query)
    assert code == cli.EXIT_CONFIG and last(lines) == "usage error: the query is empty; give the text to search for"


def test_two_commands_on_a_new_artifacts_folder_wait_for_each_others_setup(inputs, tmp_path):
    config = variant(inputs, "race", artifacts_dir=str(tmp_path / "fresh"))
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    procs = [subprocess.Popen([str(BIN / "embed-pipeline"), "search", "chain oil", "--config", str(config)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outcomes = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    for code, err in outcomes:  # both set up; neither is a "config error" from the other's half-made tables
        assert code == cli.EXIT_FAILED and "no model is served yet" in err.strip().splitlines()[-1], err


# ---------------------------------------------------------------------------------------------
# One project that ran and promoted: messy-but-readable inputs, then damage to what serves.


def _messy_project(root: Path, model: str) -> Path:
    """Clicks stored as 1.0/0.0, 3 of 18 timestamps day-first, eval rows that cannot be used."""
    config = write_project(root, model)
    logs = click_logs()
    logs["clicked"] = logs["clicked"].astype(float)
    logs["timestamp"] = [t.strftime("%d/%m/%Y %H:%M") if i % 6 == 5 else t.isoformat() for i, t in enumerate(logs["timestamp"])]
    logs.to_parquet(root / "search_logs.parquet", index=False)
    queries = root / "eval" / "queries.jsonl"
    queries.write_text(queries.read_text() + json.dumps({"_id": "e0", "text": "a second text for e0"}) + "\n")
    qrels = root / "eval" / "qrels" / "test.tsv"
    qrels.write_text(qrels.read_text() + "e0\tno-such-passage\t1\nzz\tchain-lube\t1\ne1\tchain-wear\tx\nbroken\n")
    return config


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model_path):
    """(config, run output lines): the messy project run once (exit 0) and its candidate promoted as v1."""
    root = tmp_path_factory.mktemp("served") / "project"
    config = _messy_project(root, tiny_model_path)
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    run = subprocess.run([str(BIN / "embed-pipeline"), "run", "--config", str(config)], env=env, capture_output=True, text=True)
    assert run.returncode == cli.EXIT_OK, run.stderr[-4000:]
    promoted = subprocess.run([str(BIN / "embed-pipeline"), "promote", "--config", str(config)], env=env,
                              capture_output=True, text=True)
    assert promoted.returncode == cli.EXIT_OK, promoted.stderr[-4000:]
    return config, run.stderr.splitlines()


def test_messy_inputs_are_parsed_by_the_rules_and_every_row_set_aside_is_counted_with_a_reason(served):
    config, lines = served
    checked = next(line for line in lines if "inputs checked:" in line)
    # 1.0/0.0 clicks count (9 clicks); 3 day-first timestamps quarantined, named with their row
    assert "search logs 18 impressions, 9 clicks" in checked, checked
    assert "(3 quarantined; first: row 6: timestamp '01/01/2026 10:01' is not ISO 8601 or epoch seconds)" in checked, checked
    assert "eval 12 pairs (5 quarantined; first: queries.jsonl line 13: duplicate query id 'e0' (first on line 1))" in checked
    said = [line for line in lines if "quarantined" in line and "eval row" in line]
    assert said and "quarantined 5 eval row(s)" in said[0], lines[-30:]
    artifacts = Path(yaml.safe_load(config.read_text())["artifacts_dir"])
    artifacts = artifacts if artifacts.is_absolute() else config.parent / artifacts
    (logs_q,) = artifacts.glob("assets/search_log_pairs/*/search_logs_quarantine.parquet")
    assert len(pd.read_parquet(logs_q)) == 3
    (eval_q,) = artifacts.glob("assets/eval_report/*/eval_quarantine.parquet")
    reasons = sorted(pd.read_parquet(eval_q)["reason"])
    assert reasons == sorted(["duplicate query id 'e0' (first on line 1)", "unknown passage id", "unknown query id",
                              "non-numeric score 'x'", "malformed qrels line: needs query-id<TAB>corpus-id[<TAB>score]"])
    instance = dg.DagsterInstance.from_config(str(artifacts / "dagster_home"))
    meta = instance.get_latest_materialization_event(dg.AssetKey("search_log_pairs")).asset_materialization.metadata
    assert meta["quarantined"].value == 3 and meta["impressions_read"].value == 18
    (report,) = artifacts.glob("assets/eval_report/*/eval_report.json")
    counted = json.loads(report.read_text())["quarantine"]
    assert counted["eval"]["rows"] == 5 and counted["search_logs"] == {"rows": 3, "path": str(logs_q)}


def _state(config: Path):
    from embed_pipeline.lib.config import load_config
    from embed_pipeline.lib.tracking import Tracker

    settings = load_config(config)
    return settings, Tracker(settings.tracking_uri, settings.mlflow_artifacts_uri)


def test_damaged_promotion_records_never_silently_revert_what_serves(served, capsys):
    config, _ = served
    settings, tracker = _state(config)
    folder = settings.artifacts_dir
    v1 = json.loads((folder / SERVED_FILE).read_text())
    # A second champion, v2: the same weights registered again, with a model folder of its own.
    v2_dir = Path(v1["model_dir"]).parent.parent / "v2-model"
    shutil.copytree(v1["model_dir"], v2_dir)
    version = tracker.register_model(v1["model_name"], v1["mlflow_run_id"], "model", tags={})
    promote(folder, {**v1, "model_version": version, "model_dir": str(v2_dir)}, "test", "second", tracker.set_alias)
    assert version == "2"
    history = folder / HISTORY_FILE
    intact_history, intact_pointer = history.read_bytes(), (folder / SERVED_FILE).read_bytes()

    # 1. The history loses its last 150 bytes (the v2 event torn): promote and search refuse, nothing moves.
    history.write_bytes(intact_history[:-150])
    for argv in (["promote"], ["search", "chain oil"], ["rollback"]):
        code, lines = run_cli(capsys, *argv, "--config", str(config))
        assert code == cli.EXIT_FAILED, lines
        assert last(lines).startswith(f"refused: promotion records disagree and one is damaged: {history} says v1 "
                                      "(its last line is torn"), lines
        assert f"{folder / SERVED_FILE} says v2; registry alias 'champion' says v2" in last(lines)
    assert (folder / SERVED_FILE).read_bytes() == intact_pointer and str(tracker.alias_version(v1["model_name"]).version) == "2"
    # told whom to trust, it repairs: the pointer's v2 is recorded in the history again
    code, lines = run_cli(capsys, "search", "chain oil", "--repair", "pointer", "--config", str(config))
    assert code == cli.EXIT_OK and any("recorded v2 from served.json" in line for line in lines), lines
    assert [e["action"] for e in served_history(folder)] == ["promote", "repair"]

    # 2. A truncated served.json is rewritten from the history (the alias agrees); a deleted one too.
    (folder / SERVED_FILE).write_bytes(intact_pointer[:40])
    code, lines = run_cli(capsys, "search", "chain oil", "--config", str(config))
    assert code == cli.EXIT_OK and any("served pointer rewritten to v2" in line and "unreadable" in line for line in lines)
    (folder / SERVED_FILE).unlink()
    code, lines = run_cli(capsys, "search", "chain oil", "--k", "3", "--config", str(config))
    assert code == cli.EXIT_OK and last(lines).startswith("3 hit(s) from v2, ranked "), lines

    # 3. A missing model folder or index at search: one line, exit 2.
    index = Path(json.loads((folder / SERVED_FILE).read_text())["index_path"])
    index.rename(index.with_name("aside"))
    try:
        code, lines = run_cli(capsys, "search", "chain oil", "--config", str(config))
        assert code == cli.EXIT_CONFIG and last(lines) == f"v2 serves, but its index {index} is missing: restore it, " \
                                                          "or `embed-pipeline rollback`"
    finally:
        index.with_name("aside").rename(index)

    # 4. Rollback onto v1 whose model folder is gone: refused before anything moves.
    aside = Path(v1["model_dir"]).with_name("aside")
    Path(v1["model_dir"]).rename(aside)
    try:
        code, lines = run_cli(capsys, "rollback", "--config", str(config))
        assert code == cli.EXIT_FAILED and last(lines) == (f"refused: cannot roll back to v1: its model folder {v1['model_dir']} "
                                                           "is gone; nothing changed (v2 still serves)"), lines
        assert json.loads((folder / SERVED_FILE).read_text())["model_version"] == "2"
    finally:
        aside.rename(v1["model_dir"])

    # 5. Rolled back to v1, there is nothing before it: one line, no stack trace.
    assert run_cli(capsys, "rollback", "--config", str(config))[0] == cli.EXIT_OK
    code, lines = run_cli(capsys, "rollback", "--config", str(config))
    assert code == cli.EXIT_CONFIG and last(lines) == "nothing to roll back to: v1 is the first promoted model"


def test_a_run_that_died_after_registering_is_found_with_its_model(served):
    from embed_pipeline.lib.fine_tune import registered_by_dead_run

    config, _ = served
    settings, tracker = _state(config)
    (v1,) = [v for v in tracker.client.search_model_versions(f"name = '{settings.registered_model_name}'") if str(v.version) == "1"]
    key = v1.tags["checkpoint_key"]
    found = registered_by_dead_run(tracker, settings.registered_model_name, key, died=lambda run_id: True)
    assert found is not None and str(found[0].version) == "1" and found[2] == v1.tags["dagster_run_id"]
    assert registered_by_dead_run(tracker, settings.registered_model_name, key, died=lambda run_id: False) is None
    assert registered_by_dead_run(tracker, settings.registered_model_name, "other-key", died=lambda run_id: True) is None
