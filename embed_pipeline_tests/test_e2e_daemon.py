"""The real thing: dagster-webserver and dagster-daemon as processes, a run launched over GraphQL,
and the corpus change sensor re-embedding only the shard whose passage changed."""

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
import pytest
import yaml

from embed_pipeline.lib.corpus import shard_key, shard_of
from embed_pipeline_tests.fixture_data import write_project

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SHARDS = 4
SENSOR_TAG = "dagster/sensor_name"
PARTITION_TAG = "dagster/partition"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, predicate, timeout: float = 150.0, every: float = 1.0):
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


def sensor_runs(instance) -> list:
    return sorted(instance.get_runs(filters=dg.RunsFilter(tags={SENSOR_TAG: "corpus_change_sensor"})),
                  key=lambda r: instance.get_run_record_by_id(r.run_id).create_timestamp)


def finished(instance, run_id: str):
    run = instance.get_run_by_id(run_id)
    if run.status in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED):
        raise AssertionError(f"run {run_id} ended {run.status}")
    return run if run.status == dg.DagsterRunStatus.SUCCESS else None


@pytest.mark.slow
def test_daemon_runs_job_over_graphql_and_sensor_reembeds_only_the_changed_shard(tmp_path, tiny_model_path):
    from dagster_graphql import DagsterGraphQLClient, DagsterGraphQLClientError

    config = write_project(tmp_path / "project", tiny_model_path, index={"shards": SHARDS})
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(yaml.safe_dump({"load_from": [{"python_module": {
        "module_name": "embed_pipeline.definitions", "working_directory": str(PROJECT_ROOT)}}]}))
    env = {**os.environ, "DAGSTER_HOME": str(home), "EMBED_PIPELINE_CONFIG": str(config),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    port = free_port()
    logs = {name: open(tmp_path / f"{name}.log", "wb") for name in ("webserver", "daemon")}
    commands = {
        "webserver": [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port), "-w", str(workspace)],
        "daemon": [str(BIN / "dagster-daemon"), "run", "-w", str(workspace)],
    }
    # Create the SQLite storages once here: three processes creating them at once race.
    instance = dg.DagsterInstance.from_config(str(home))
    instance.get_runs(limit=1)
    instance.get_dynamic_partitions("corpus_shards")
    # Own session = own process group: SIGTERM reaches the process and the code servers it starts.
    processes = {name: subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=logs[name], stderr=subprocess.STDOUT,
                                        start_new_session=True) for name, cmd in commands.items()}
    try:
        def webserver_up():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2) as response:
                    return response.status == 200
            except OSError:
                return False

        wait_for("the webserver", webserver_up)
        # First tick: every shard becomes a partition and one run embeds them all.
        (baseline,) = wait_for("the sensor's first run", lambda: sensor_runs(instance))
        wait_for("the first re-embedding run", lambda: finished(instance, baseline.run_id))
        assert sorted(instance.get_dynamic_partitions("corpus_shards")) == [shard_key(i, SHARDS) for i in range(SHARDS)]

        client = DagsterGraphQLClient("127.0.0.1", port_number=port)
        shard = shard_key(shard_of("brake-rub", SHARDS), SHARDS)
        launched = client.submit_job_execution("reembed_job", tags={PARTITION_TAG: shard})

        def graphql_success():
            try:
                status = client.get_run_status(launched)
            except DagsterGraphQLClientError:
                return False
            assert status not in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED), status
            return status == dg.DagsterRunStatus.SUCCESS

        wait_for("the GraphQL-launched run", graphql_success)
        relaunch = instance.get_records_for_run(launched, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
        assert relaunch[0].event_log_entry.asset_materialization.metadata["passages_encoded"].value == 0

        corpus = config.parent / "corpus.jsonl"
        rows = [json.loads(line) for line in corpus.read_text().splitlines()]
        for row in rows:
            if row["_id"] == "brake-rub":
                row["text"] = "Loosen both caliper bolts, hold the brake lever, and retighten them to centre the caliper."
        corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))

        runs = wait_for("a run for the changed shard", lambda: sensor_runs(instance)[1:])
        assert [r.tags.get(PARTITION_TAG) for r in runs] == [shard], "only the changed shard is re-embedded"
        wait_for("the changed shard's run", lambda: finished(instance, runs[0].run_id))
        event = instance.get_latest_materialization_event(dg.AssetKey("corpus_embeddings"))
        assert event.run_id == runs[0].run_id
        assert event.asset_materialization.metadata["passages_encoded"].value == 1
    finally:
        for process in processes.values():
            stop(process)
        for handle in logs.values():
            handle.close()
        instance.dispose()
    assert all(p.returncode is not None for p in processes.values())
