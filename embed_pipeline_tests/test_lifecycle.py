"""A week in the pipeline's life with the real `dagster-daemon` and `dagster-webserver` (tiny model).

Day 1 trains and the promotion sensor promotes; day 2 edits, adds and deletes passages and only
the touched shards are re-embedded; day 3's nightly schedule trains on click logs that contain
eval queries (dropped, judged against day 1's champion); two runs at once with different data
keep their own artifacts; a registry outage fails eval_report closed; a run killed with SIGKILL
mid-training is recovered and the next run resumes; two rollbacks walk back two promotions.
Each day asserts on the served pointer, the MLflow alias, the asset events and the index.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import yaml

from embed_pipeline.lib.config import load_config
from embed_pipeline.lib.indexing import load_index
from embed_pipeline.lib.promotion import read_served, served_history
from embed_pipeline.lib.tracking import Tracker
from embed_pipeline_tests.fixture_data import EVAL, click_logs, write_project

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SHARDS = 4
# The sensors that start follow-up work (a promotion, re-embedding, the served index) on their own.
FOLLOW_UP_SENSORS = ("promotion_sensor", "corpus_change_sensor", "served_index_sensor")
SLOW_TRAINING = {"epochs": 12, "batch_size": 4, "checkpoint_steps": 5, "logging_steps": 5, "dev_share": 0.0,
                 "early_stopping_patience": 0}
DEFS_MODULE = '''
from pathlib import Path

import dagster as dg
from embed_pipeline.definitions import build_defs
from embed_pipeline.defs.schedules import nightly_schedule

NIGHT = Path(__file__).with_name("night.flag")


def night_has_come(context) -> bool:
    """One tick fires per flag the test drops: "night" comes when the test says so."""
    if NIGHT.exists():
        NIGHT.unlink()
        return True
    return False


# The production definitions; the nightly schedule on a one-minute cron gated by the flag, and steps
# in the run worker's process (the multiprocess executor is tested apart).
defs = build_defs(dg.EnvVar("EMBED_PIPELINE_CONFIG"), schedule=nightly_schedule("* * * * *", should_execute=night_has_come),
                  executor=dg.in_process_executor)
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, predicate, timeout: float = 600.0, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to the process group the process leads (its code servers and runs too), then SIGKILL."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


class Deployment:
    """The webserver and the daemon on one instance, and the handful of things the test asks of them."""

    def __init__(self, tmp_path: Path, config: Path):
        self.tmp, self.config = tmp_path, config
        self.settings = load_config(config)
        home = tmp_path / "dagster_home"
        home.mkdir()
        instance_yaml = yaml.safe_load((PROJECT_ROOT / "dagster.yaml").read_text())
        instance_yaml["run_monitoring"].update(poll_interval_seconds=3, free_slots_after_run_end_seconds=1)
        (home / "dagster.yaml").write_text(yaml.safe_dump(instance_yaml))
        (tmp_path / "lifecycle_defs.py").write_text(DEFS_MODULE)
        workspace = tmp_path / "workspace.yaml"
        workspace.write_text(yaml.safe_dump({"load_from": [{"python_file": {
            "relative_path": str(tmp_path / "lifecycle_defs.py"), "working_directory": str(PROJECT_ROOT),
            "location_name": "embed_pipeline"}}]}))
        env = {**os.environ, "DAGSTER_HOME": str(home), "EMBED_PIPELINE_CONFIG": str(config), "HF_HUB_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "3"}
        self.port = free_port()
        self.logs = {name: open(tmp_path / f"{name}.log", "wb") for name in ("webserver", "daemon")}
        commands = {
            "webserver": [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(self.port), "-w", str(workspace)],
            "daemon": [str(BIN / "dagster-daemon"), "run", "-w", str(workspace)],
        }
        # Create the SQLite storages once here: three processes creating them at once race.
        self.instance = dg.DagsterInstance.from_config(str(home))
        self.instance.get_runs(limit=1)
        self.instance.get_dynamic_partitions("corpus_shards")
        self.processes = {name: subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=self.logs[name], stderr=subprocess.STDOUT,
                                                 start_new_session=True) for name, cmd in commands.items()}
        wait_for("the webserver", self._up)
        from dagster_graphql import DagsterGraphQLClient

        self.client = DagsterGraphQLClient("127.0.0.1", port_number=self.port)
        self.tracker = Tracker(self.settings.tracking_uri, self.settings.mlflow_artifacts_uri)

    def _up(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/server_info", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def close(self) -> None:
        for process in self.processes.values():
            stop(process)
        for handle in self.logs.values():
            handle.close()
        self.instance.dispose()

    # --- runs -------------------------------------------------------------------------------
    def launch(self, job: str = "training_job", config: Path | None = None, selection: list[str] | None = None,
               mlflow_uri: str | None = None) -> str:
        resources = {"pipeline": {"config": {"config_path": str(config or self.config)}}}
        if mlflow_uri:
            resources["mlflow"] = {"config": {"tracking_uri": mlflow_uri}}
        kwargs = {"asset_selection": [[k] for k in selection]} if selection else {}
        return self.client.submit_job_execution(job, run_config={"resources": resources}, **kwargs)

    def wait_run(self, run_id: str, status=dg.DagsterRunStatus.SUCCESS, timeout: float = 600.0):
        done = (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)
        run = wait_for(f"run {run_id}", lambda: (r := self.instance.get_run_by_id(run_id)) and r.status in done and r, timeout)
        assert run.status == status, f"run {run_id} ended {run.status}; see {self.tmp}/daemon.log"
        return run

    def runs(self, **tags) -> list[dg.DagsterRun]:
        return sorted(self.instance.get_runs(dg.RunsFilter(tags=tags)),
                      key=lambda r: self.instance.get_run_record_by_id(r.run_id).create_timestamp)

    def idle(self, timeout: float = 600.0) -> None:
        """Wait until no run is queued or running (sensor-triggered work included)."""
        busy = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
                dg.DagsterRunStatus.STARTED]
        wait_for("the deployment to go idle", lambda: not self.instance.get_runs(dg.RunsFilter(statuses=busy)), timeout, 2.0)

    def materialization(self, asset: str, run_id: str | None = None):
        event = self.instance.get_latest_materialization_event(dg.AssetKey(asset))
        assert event is not None and (run_id is None or event.run_id == run_id), (asset, run_id)
        return {k: getattr(v, "value", v) for k, v in event.asset_materialization.metadata.items()}

    def handle(self, asset: str, run_id: str) -> dict:
        records = self.instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
        (event,) = [r.event_log_entry for r in records if r.event_log_entry.asset_materialization.asset_key.path == [asset]]
        return event.asset_materialization.metadata["handle"].value["fields"]

    # --- serving ----------------------------------------------------------------------------
    def alias(self) -> str | None:
        version = self.tracker.alias_version(self.settings.registered_model_name)
        return None if version is None else str(version.version)

    def served(self) -> dict | None:
        return read_served(self.settings.artifacts_dir)

    def wait_promoted(self, version: str) -> dict:
        """Until `version` serves and its own index (re-embedded through the change sensor) is published."""
        wait_for(f"v{version} to be promoted", lambda: (p := self.served()) and p["model_version"] == version)

        def reindexed():
            last = served_history(self.settings.artifacts_dir)[-1]
            return last["action"] == "reindex" and str(last["model_version"]) == version

        wait_for(f"v{version}'s served index", reindexed)
        self.idle()
        assert self.alias() == version
        return self.served()

    def ticked_since(self, sensor: str, since: float) -> bool:
        """Whether the daemon finished a tick of `sensor` that started after `since` (it stores every tick)."""
        from dagster._core.scheduler.instigation import InstigatorType, TickStatus

        states = [s for s in self.instance.all_instigator_state(instigator_type=InstigatorType.SENSOR) if s.name == sensor]
        return any(tick.status != TickStatus.STARTED for state in states
                   for tick in self.instance.get_ticks(state.instigator_origin_id, state.selector_id, after=since, limit=5))

    def settle(self) -> None:
        """Idle, and still idle after every follow-up sensor has ticked on the idle deployment: sensor-triggered
        follow-ups (promotion, re-embedding) done, and the served model has its own index (the last history
        event re-indexed it)."""
        wait_for("the served model's own index", lambda: served_history(self.settings.artifacts_dir)[-1]["action"] == "reindex")
        history = None
        while history != len(served_history(self.settings.artifacts_dir)):
            history = len(served_history(self.settings.artifacts_dir))
            self.idle()
            idle_at = time.time()
            wait_for("a tick of every follow-up sensor after going idle",
                     lambda: all(self.ticked_since(sensor, idle_at) for sensor in FOLLOW_UP_SENSORS), 180, 0.5)
            self.idle()


def served_ids(pointer: dict) -> set[str]:
    return set(load_index(pointer["index_path"]).passage_ids)


def rewrite_corpus(config: Path, edit: dict[str, str], add: dict[str, str], delete: set[str]) -> None:
    corpus = config.parent / "corpus.jsonl"
    rows = [json.loads(line) for line in corpus.read_text().splitlines()]
    rows = [dict(r, text=edit.get(r["_id"], r["text"])) for r in rows if r["_id"] not in delete]
    rows += [{"_id": pid, "title": "", "text": text} for pid, text in add.items()]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))


def worker_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """The run worker process of `run_id`, from its RUN_START event."""
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_START):
        return entry.dagster_event.pid
    return None


@pytest.mark.slow
def test_a_week_in_the_life_of_the_pipeline(tmp_path, tiny_model_path, monkeypatch):
    config = write_project(tmp_path / "project", tiny_model_path, index={"shards": SHARDS})
    deployment = Deployment(tmp_path, config)
    artifacts = deployment.settings.artifacts_dir
    try:
        # Day 1: a training run; the promotion sensor promotes it; the served index is published.
        day1 = deployment.launch()
        deployment.wait_run(day1)
        report1 = json.loads(Path(deployment.handle("eval_report", day1)["path"]).read_text())
        assert report1["gate"]["passed"] and report1["models"]["champion"]["version"] is None
        served = deployment.wait_promoted("1")
        assert deployment.materialization("served_model")["action"] == "promote"
        assert served["retrieval"]["mode"] == "hybrid" and Path(served["lexical_path"]).is_dir()
        assert len(served_ids(served)) == 20

        # Day 2: one passage edited, one added, one deleted: only their shards are re-embedded, by the champion.
        before = {r.run_id for r in deployment.runs(**{"dagster/sensor_name": "corpus_change_sensor"})}
        rewrite_corpus(config, edit={"brake-rub": "Loosen both caliper bolts, hold the brake lever, retighten them."},
                       add={"chain-tool": "A chain tool pushes a rivet out to shorten a chain or remove a broken link."},
                       delete={"pedal-threads"})
        wait_for("the re-embedding runs", lambda: {r.run_id for r in deployment.runs(**{
            "dagster/sensor_name": "corpus_change_sensor"})} - before)
        deployment.idle()
        wait_for("the served index to reflect the edit", lambda: "chain-tool" in served_ids(deployment.served()))
        served = deployment.served()
        ids = served_ids(served)
        assert "pedal-threads" not in ids and {"brake-rub", "chain-tool"} <= ids and len(ids) == 20
        changed_runs = [r for r in deployment.runs(**{"dagster/sensor_name": "corpus_change_sensor"}) if r.run_id not in before]
        assert all(r.tags.get("dagster/partition") for r in changed_runs), "per shard, not everything"
        assert len(changed_runs) <= 3
        encoded = sum(e.event_log_entry.asset_materialization.metadata["passages_encoded"].value
                      for r in changed_runs for e in deployment.instance.get_records_for_run(
                          r.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records)
        assert encoded == 2, "the edited and the added passage, nothing else"
        assert served["model_version"] == "1" and deployment.alias() == "1"

        # Day 3: click logs now contain two eval queries; the nightly schedule's run drops those pairs
        # and judges its candidate against day 1's champion.
        leaked = [q for q, _, _ in EVAL[:2]]
        logs = click_logs()
        extra = [{"query": q, "passage_id": p, "position": 1, "clicked": True, "dwell_seconds": 90.0,
                  "session_id": f"night-{i}", "timestamp": pd.Timestamp("2026-12-03T01:00:00Z")}
                 for i, (q, p, _) in enumerate(EVAL[:2])]
        pd.concat([logs, pd.DataFrame(extra).astype(logs.dtypes.to_dict())], ignore_index=True).to_parquet(
            config.parent / "search_logs.parquet", index=False)
        (tmp_path / "night.flag").touch()
        (night,) = wait_for("the nightly run", lambda: deployment.runs(**{"dagster/schedule_name": "nightly_retraining"}), 150)
        deployment.wait_run(night.run_id)
        pairs = deployment.materialization("training_pairs", night.run_id)
        assert pairs["leaking_pairs_dropped"] >= 2 and "click" in pairs["leaking_pairs_per_source"]
        leaks = pd.read_parquet(deployment.handle("training_pairs", night.run_id)["files"]["leaks"])
        assert set(leaked) <= set(leaks["eval_query"])
        report3 = json.loads(Path(deployment.handle("eval_report", night.run_id)["path"]).read_text())
        assert report3["models"]["champion"]["version"] == "1" and report3["leakage"]["dropped_pairs"] >= 2
        deployment.wait_promoted("2")

        # Two runs at once, different data, one artifacts dir: each keeps its own files and report.
        smaller = tmp_path / "smaller"
        shutil.copytree(config.parent, smaller, ignore=shutil.ignore_patterns("artifacts"))
        small_config = smaller / "config.yaml"
        small_config.write_text(config.read_text().replace("artifacts_dir: artifacts", f"artifacts_dir: {artifacts}"))
        rewrite_corpus(small_config, {}, {}, {"hub-bearings", "bottom-bracket", "cassette-remove"})  # no eval or curated target
        pair = [deployment.launch(), deployment.launch(config=small_config)]
        for run_id in pair:
            deployment.wait_run(run_id)
        sizes = []
        for run_id in pair:
            handle = deployment.handle("eval_report", run_id)
            assert f"/assets/eval_report/{run_id}/" in handle["path"]
            report = json.loads(Path(handle["path"]).read_text())
            assert f"/assets/corpus_index/{run_id}/" in report["models"]["index"]["path"]
            sizes.append(report["models"]["index"]["size"])
        assert sizes == [20, 17]
        # The promotion sensor reads the newest report since its last tick: one or both candidates are promoted.
        wait_for("a candidate of the pair promoted", lambda: served_history(artifacts)[-1].get("model_version") in ("3", "4")
                 or any(e["action"] == "promote" and e["model_version"] in ("3", "4") for e in served_history(artifacts)))
        deployment.settle()
        champion = deployment.served()["model_version"]
        assert champion in ("3", "4") and deployment.alias() == champion

        # The registry is down during an evaluation: eval_report fails closed, nothing is promoted.
        history = len(served_history(artifacts))
        down = deployment.launch(selection=["eval_report"], mlflow_uri=f"http://127.0.0.1:{free_port()}")
        deployment.wait_run(down, dg.DagsterRunStatus.FAILURE)
        from embed_pipeline.console import root_cause

        (failure,) = deployment.instance.all_logs(down, of_type=dg.DagsterEventType.STEP_FAILURE)
        assert "cannot resolve the champion" in root_cause(failure.dagster_event.step_failure_data.error)
        deployment.settle()
        assert len(served_history(artifacts)) == history and deployment.alias() == champion
        after = deployment.launch(selection=["eval_report"])
        deployment.wait_run(after)
        deployment.settle()

        # A run killed with SIGKILL mid-training: run monitoring fails it and frees its slot, its MLflow
        # run ends KILLED, and the next run resumes from the dead one's last checkpoint.
        slow = config.parent / "slow.yaml"  # beside the project config: same data, same artifacts, slower training
        slow_settings = yaml.safe_load(config.read_text())
        slow_settings["training"].update(SLOW_TRAINING)
        slow.write_text(yaml.safe_dump(slow_settings))
        doomed = deployment.launch(config=slow)
        wait_for("a checkpoint", lambda: [p for p in (artifacts / "checkpoints").glob("*/checkpoint-*")
                                          if (p / "trainer_state.json").is_file()], 300, 0.3)
        os.kill(wait_for("the run worker", lambda: worker_pid(deployment.instance, doomed)), signal.SIGKILL)
        deployment.wait_run(doomed, dg.DagsterRunStatus.FAILURE, timeout=120)
        wait_for("the dead run's MLflow run to end KILLED", lambda: "KILLED" in {
            r.info.status for r in deployment.tracker.client.search_runs(
                [deployment.tracker.experiment_id], f"tags.dagster_run_id = '{doomed}'")}, 60)
        retry = deployment.launch(config=slow)
        deployment.wait_run(retry)
        assert deployment.materialization("embedding_model", retry)["resumed_from_step"] > 0
        deployment.settle()

        # Two rollbacks walk back two promotions, each a served_model materialisation.
        from embed_pipeline.cli import main

        stack = [e["model_version"] for e in served_history(artifacts) if e["action"] == "promote"]
        with monkeypatch.context() as env:  # the CLI reads the instance from DAGSTER_HOME; restored afterwards
            env.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
            assert main(["rollback", "--config", str(config), "--reason", "day 7 drill"]) == 0
            assert main(["rollback", "--config", str(config), "--reason", "day 7 drill"]) == 0
        expected = stack[-3]
        assert deployment.served()["model_version"] == expected and deployment.alias() == expected
        event = deployment.materialization("served_model")
        assert event["action"] == "rollback" and event["model_version"] == expected and event["reason"] == "day 7 drill"
    finally:
        deployment.close()
    assert all(p.returncode is not None for p in deployment.processes.values())
