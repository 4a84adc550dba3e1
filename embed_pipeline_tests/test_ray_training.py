"""Training on a real two-node Ray cluster (embed_pipeline_tests/ray_cluster.py: loopback only, one CPU
per node) with a real MLflow tracking server in the cluster's namespace, against the torchrun path."""

import contextlib
import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from embed_pipeline.lib.metrics import METRICS
from embed_pipeline_tests.ray_cluster import require_cluster, run_scenario

SCENARIOS = "embed_pipeline_tests.test_ray_training"
# A cold worker process per node answers the shared-storage probe; on a busy 2-core CI machine
# that can take longer than the 30 s default.
RAY_COMPUTE = {"engine": "ray", "train_workers": 2, "connect_timeout_seconds": 120}


@contextlib.contextmanager
def mlflow_server(root: Path):
    """`mlflow server` on a free loopback port (SQLite store, artifacts served), stopped on exit; yields its URI.

    Ready when it prints uvicorn's "Uvicorn running on" line (read as it comes, no polling); the rest
    of its output goes to `root/server.log`.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    root.mkdir(parents=True, exist_ok=True)
    command = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
               "--serve-artifacts", "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1",
               "--port", str(port), "--workers", "1"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = open(root / "server.log", "w")  # noqa: SIM115 - closed by the copying thread when the server's output ends
    try:
        for line in server.stdout:
            log.write(line)
            if "Uvicorn running on" in line:
                break
        else:
            log.close()
            raise RuntimeError(f"mlflow server exited ({server.wait()}) before serving: {(root / 'server.log').read_text()[-2000:]}")
        log.flush()
        threading.Thread(target=_copy_rest, args=(server.stdout, log), daemon=True).start()
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


def _copy_rest(stream, log) -> None:
    with log:
        for line in stream:
            log.write(line)


def ray_and_torchrun_train_alike(cluster, root: str, model_path: str) -> dict:
    """Scenario: the same fine_tune (data, seed, batch) on 2 Ray Train workers and on 2 torchrun ranks.

    The Ray job's first attempt loses rank 1 after step 3 (os._exit: no traceback, as an OOM kill);
    the retry resumes from the step-2 checkpoint and finishes.
    """
    import time

    import mlflow
    import ray

    from embed_pipeline.lib.config import load_config
    from embed_pipeline.lib.ray_training import WorkerFailedError, worker_records
    from embed_pipeline_tests.fixture_data import write_project
    from embed_pipeline_tests.lib.test_distributed_training import TRAINING, train

    root = Path(root)
    training = {**TRAINING, "epochs": 4, "checkpoint_steps": 2, "dev_share": 0.3, "dev_max_passages": 12}
    record = "embed_pipeline_tests.lib.rank_faults:record_world"
    seconds = {}
    ray.init(address=cluster.address)
    started = time.perf_counter()
    with mlflow_server(root / "mlflow") as uri:
        seconds["mlflow_server_start"] = time.perf_counter() - started
        client = mlflow.tracking.MlflowClient(uri)
        out = {"nodes": sorted(n["NodeID"] for n in ray.nodes() if n["Alive"]), "seconds": seconds}
        ray_training = {k: v for k, v in training.items() if k != "processes"}
        arms = {"ray": {"compute": {**RAY_COMPUTE, "ray_address": cluster.address}, "training": ray_training},
                "torchrun": {"training": training}}
        for engine, overrides in arms.items():
            config = load_config(write_project(root / engine / "project", model_path, mlflow_tracking_uri=uri, **overrides))
            ckpt, lines, arm = root / engine / "ckpt", [], {}
            if engine == "ray":
                started = time.perf_counter()
                try:
                    train(config, ckpt, root / engine / "model", [],
                          callbacks=[record, "embed_pipeline_tests.lib.rank_faults:exit_rank_1_after_step_3"])
                except WorkerFailedError as failed:
                    job = next(ckpt.glob("*.job-*"))
                    arm["failure"] = {"message": str(failed), "rank": failed.rank, "node": failed.node, "job": job.name,
                                      "node_ids": {str(r): w["node_id"] for r, w in worker_records(job).items()}}
                seconds["ray_failed_attempt"] = time.perf_counter() - started
            started = time.perf_counter()
            model = train(config, ckpt, root / engine / "model", lines, callbacks=[record])
            seconds[engine] = time.perf_counter() - started
            runs = client.search_runs([client.get_experiment_by_name("embed-pipeline").experiment_id])
            out[engine] = {
                **arm,
                "dev_ndcg": model.training.best_dev_ndcg_at_10, "steps": model.training.steps,
                "resumed_from_step": model.training.resumed_from_step, "processes": model.training.processes,
                "loss": {m.step: m.value for m in client.get_metric_history(model.mlflow_run_id, "train/loss")},
                "runs": sorted(r.info.status for r in runs),
                "ranks": [json.loads((ckpt / f"seen-rank{r}.json").read_text()) for r in (0, 1)],
                "progress": [line for line in lines if line.startswith("step ")],
                "job_folders_left": [p.name for p in ckpt.glob("*.job-*")],
            }
    return out


@pytest.mark.slow
def test_two_ray_train_workers_on_two_nodes_train_like_two_torchrun_ranks(tmp_path, tiny_model_path):
    require_cluster()

    out = run_scenario(f"{SCENARIOS}:ray_and_torchrun_train_alike", {"root": str(tmp_path), "model_path": tiny_model_path},
                       tmp_path / "cluster", timeout=900)

    ray, torchrun = out["ray"], out["torchrun"]
    print(json.dumps({"seconds": out["seconds"], "dev_ndcg": {"ray": ray["dev_ndcg"], "torchrun": torchrun["dev_ndcg"]},
                      "loss": {"ray": ray["loss"], "torchrun": torchrun["loss"]}}))
    # the first attempt: rank 1 named, with the node it ran on
    failure = ray["failure"]
    assert failure["rank"] == 1 and failure["node"] == "127.0.0.1"
    assert f"training worker rank 1 of 2 on node 127.0.0.1 (node id {failure['node_ids']['1'][:12]})" in failure["message"]
    assert "its process died" in failure["message"] and failure["job"] in failure["message"]
    assert sorted(failure["node_ids"].values()) == out["nodes"], "one worker on each node"
    # the retry resumed from the step-2 checkpoint and trained steps 3 and 4 on both nodes, each rank its slice
    assert ray["resumed_from_step"] == 2 and ray["steps"] == torchrun["steps"] == 4
    assert ray["runs"] == ["FAILED", "FINISHED"] and sorted(ray["loss"]) == ["3", "4"], "rank 0 logged each step it ran"
    assert sorted(seen["ray_node_id"] for seen in ray["ranks"]) == out["nodes"]
    for rank, (on_ray, on_torchrun) in enumerate(zip(ray["ranks"], torchrun["ranks"], strict=True)):
        expected = {"rank": rank, "world_size": 2, "backend": "gloo", "sampler_batch": 4, "rows_per_rank": 2, "steps_trained": 4}
        assert on_ray == {**on_ray, **expected} and on_torchrun == {**on_torchrun, **expected}
    assert ray["job_folders_left"] == [failure["job"]], "the failed attempt's job folder is kept, the finished one's deleted"
    # Same batches, seed and gathered negatives: the two engines differ only in floating-point
    # rounding (thread counts, reduction order). The losses of the steps both ran must agree to
    # rounding; the dev nDCG@10 (3 dev queries, 12 passages) within 0.02: room for one rounding-made
    # swap of adjacent ranks at rank 4 or deeper in one query (1/log2(5) - 1/log2(6) = 0.044, / 3),
    # not for a model trained on other batches.
    for step in ("3", "4"):
        assert ray["loss"][step] == pytest.approx(torchrun["loss"][step], rel=1e-3), step
    assert ray["dev_ndcg"] == pytest.approx(torchrun["dev_ndcg"], abs=0.02)


def pipeline_runs_on_ray(cluster, root: str, model_path: str) -> dict:
    """Scenario: `embed-pipeline run` on the fixture project with `compute.engine: ray`, as a user runs it
    (training on Ray Train, the corpus encodes on Ray Data)."""
    import os
    import time

    import dagster as dg
    import mlflow
    import ray
    from ray.util.state import list_actors

    from embed_pipeline_tests.fixture_data import write_project

    root = Path(root)
    (root / "dagster_home").mkdir(parents=True)
    with mlflow_server(root / "mlflow") as uri:
        config = write_project(root / "project", model_path, mlflow_tracking_uri=uri,
                               compute={**RAY_COMPUTE, "ray_address": cluster.address})
        started = time.perf_counter()
        done = subprocess.run([str(Path(sys.executable).parent / "embed-pipeline"), "run", "--config", str(config), "--json"],
                              capture_output=True, text=True, env={**os.environ, "DAGSTER_HOME": str(root / "dagster_home")})
        seconds = time.perf_counter() - started
        if done.returncode not in (0, 3):
            raise RuntimeError(f"embed-pipeline run exited {done.returncode}:\n{done.stderr[-4000:]}")
        report = json.loads(done.stdout)
        client = mlflow.tracking.MlflowClient(uri)
        mlflow.set_tracking_uri(uri)  # for models:/ URIs (this scenario runs in a process of its own)
        run = client.get_run(report["models"]["candidate"]["run_id"])
        ray.init(address=cluster.address)
        workers = list_actors(filters=[("class_name", "=", "RayTrainWorker")], detail=True)
        encoders = [a for a in list_actors(detail=True, limit=10_000) if "EncodeActor" in a.class_name or "StoreWriterActor" in a.class_name]
        os.environ["DAGSTER_HOME"] = str(root / "dagster_home")
        materialized = dg.DagsterInstance.get().get_latest_materialization_event(dg.AssetKey("embedding_model"))
        return {
            "model_metadata": {k: getattr(v, "value", v) for k, v in materialized.asset_materialization.metadata.items()
                               if k in ("processes", "ray_dashboard")},
            "encode_actor_nodes": sorted({a.node_id for a in encoders}),
            "exit_code": done.returncode, "seconds": seconds, "gate": report["gate"], "candidate": report["candidate"],
            "run": {"status": run.info.status, "engine": run.data.params["compute.engine"], "processes": run.data.tags["processes"],
                    "loss_steps": sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss"))},
            "version_run": client.get_model_version(report["models"]["candidate"]["name"], report["models"]["candidate"]["version"]).run_id,
            "flavors": sorted(mlflow.models.get_model_info(
                f"models:/{report['models']['candidate']['name']}/{report['models']['candidate']['version']}").flavors),
            "train_worker_nodes": sorted(a.node_id for a in workers),
            "nodes": sorted(n["NodeID"] for n in ray.nodes() if n["Alive"]),
            "output": done.stderr,
        }


@pytest.mark.slow
def test_embed_pipeline_run_trains_on_the_ray_cluster_end_to_end(tmp_path, tiny_model_path):
    require_cluster()

    out = run_scenario(f"{SCENARIOS}:pipeline_runs_on_ray", {"root": str(tmp_path), "model_path": tiny_model_path},
                       tmp_path / "cluster", timeout=900)

    print(json.dumps({k: out[k] for k in ("exit_code", "seconds", "gate", "candidate")}))
    assert out["exit_code"] == (0 if out["gate"]["passed"] else 3), "exit code follows the gate's verdict"
    assert out["gate"]["passed"], out["gate"]  # the fixture's gate is permissive: the run promotes
    assert set(out["candidate"]) == set(METRICS)
    steps = out["run"].pop("loss_steps")
    assert steps and steps == list(range(1, len(steps) + 1)), "rank 0 logged every step into the step's run"
    assert out["run"] == {"status": "FINISHED", "engine": "ray", "processes": "2"}
    assert out["version_run"] is not None
    assert "sentence_transformers" in out["flavors"] and "python_function" in out["flavors"], "registered as an MLflow model"
    assert out["train_worker_nodes"] == out["nodes"], "the two training workers ran one on each node"
    assert "promotion gate: PASSED" in out["output"]
    assert out["model_metadata"]["processes"] == 2 and out["model_metadata"]["ray_dashboard"].startswith("http://127.0.0.1:")
    assert out["encode_actor_nodes"], "the corpus encodes went through Ray Data's actors too"


def test_a_worker_that_raised_is_named_not_the_one_left_waiting_in_the_gather(tmp_path):
    ray_train = pytest.importorskip("ray.train")
    from embed_pipeline.lib.ray_training import WORKERS_FOLDER, _failure

    (tmp_path / WORKERS_FOLDER).mkdir()
    for rank, node in enumerate(["10.0.0.7", "10.0.0.8"]):
        (tmp_path / WORKERS_FOLDER / f"rank-{rank}.json").write_text(
            json.dumps({"rank": rank, "node_id": f"{rank}" * 40, "node": node, "pid": 100 + rank}))
    gloo = RuntimeError("[gloo/transport/tcp/pair.cc:537] Read error [10.0.0.8]:50398: Connection reset by peer.")
    error = ray_train.WorkerGroupError("2 workers failed", {0: gloo, 1: ValueError("no such column 'negative_1'\nmore")})

    failed = _failure(error, tmp_path, 2, {"CPU": 1.0}, {"CPU": 2.0})

    assert (failed.rank, failed.node) == (1, "10.0.0.8")
    assert str(failed).startswith(f"training worker rank 1 of 2 on node 10.0.0.8 (node id {'1' * 12}) failed: "
                                  "ValueError: no such column 'negative_1'; rank 0 failed after it (job folder kept: ")


def test_workers_the_cluster_cannot_place_say_what_was_asked_and_what_there_is(tmp_path):
    pytest.importorskip("ray.train")
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError
    from ray.train.v2.api.exceptions import ControllerError

    from embed_pipeline.lib.ray_training import _failure

    failed = _failure(ControllerError(WorkerGroupStartupTimeoutError(4)), tmp_path, 4, {"CPU": 1.0, "GPU": 1.0},
                      {"CPU": 2.0})

    assert failed.rank is None
    assert str(failed).startswith("Ray Train could not run 4 training workers of 1 CPU, 1 GPU each (the cluster has "
                                  "2 CPU, 0 GPU in all): WorkerGroupStartupTimeoutError: The worker group startup "
                                  "timed out after 60.0 seconds waiting for 4 workers (job folder kept: ")
