"""`fine_tune` with `training.processes: 2`: two real torchrun ranks (gloo on this CPU) on the tiny model,
a real MLflow store under tmp_path; and a rank that dies mid-training."""

import json
import subprocess
import sys

import mlflow
import pandas as pd
import pytest

from embed_pipeline.lib.config import load_config
from embed_pipeline.lib.distributed_training import RankFailedError, _failure
from embed_pipeline.lib.fine_tune import fine_tune
from embed_pipeline.lib.tracking import Tracker
from embed_pipeline_tests.fixture_data import CURATED, PASSAGES, write_project

NEGATIVES = {"chain-lube": "chain-clean", "chain-wear": "chain-lube", "chain-clean": "chain-lube", "tire-puncture": "tubeless-setup",
             "tire-pressure": "tubeless-setup", "brake-bleed": "brake-pads", "brake-rub": "brake-pads",
             "derailleur-index": "derailleur-limit", "derailleur-limit": "derailleur-index", "wheel-true": "hub-bearings"}
PASSAGE_FRAME = pd.DataFrame([(pid, t, x) for pid, (t, x) in PASSAGES.items()], columns=["passage_id", "title", "text"])
TRIPLES = pd.DataFrame([(q, p, [NEGATIVES[p]], "curated") for q, p in CURATED], columns=["query", "passage_id", "negatives", "source"])
TRAINING = {"processes": 2, "batch_size": 4, "max_seq_length": 32, "logging_steps": 1, "learning_rate": 1e-3,
            "early_stopping_patience": 0}


def train(config, checkpoint_root, model_dir, lines, callbacks=()):
    return fine_tune(
        PASSAGE_FRAME, TRIPLES, config, Tracker(config.tracking_uri, config.mlflow_artifacts_uri),
        model_dir=model_dir, checkpoint_root=checkpoint_root, data_versions={"training_pairs": "p1", "hard_negatives": "n1"},
        base_fingerprint="fp", tags={"dagster_run_id": "test"}, on_progress=lines.append, callbacks=callbacks,
    )


@pytest.mark.slow
def test_two_processes_train_one_model_into_one_run_and_one_version(tmp_path, tiny_model_path):
    from sentence_transformers import SentenceTransformer

    training = {**TRAINING, "epochs": 4, "checkpoint_steps": 2, "dev_share": 0.3, "dev_max_passages": 12}
    config = load_config(write_project(tmp_path / "project", tiny_model_path, training=training))
    lines = []

    model = train(config, tmp_path / "ckpt", tmp_path / "model", lines, callbacks=["embed_pipeline_tests.lib.rank_faults:record_world"])

    seen = [json.loads((tmp_path / "ckpt" / f"seen-rank{r}.json").read_text()) for r in (0, 1)]
    assert [s["rank"] for s in seen] == [0, 1]
    # one duplicate-free batch of 4 drawn as in one process, 2 rows of it per rank
    assert all(s["world_size"] == 2 and s["backend"] == "gloo" and s["sampler_batch"] == 4 and s["rows_per_rank"] == 2
               for s in seen), seen
    assert all(s["torch_threads"] == max(1, seen[0]["torch_threads"]) for s in seen)
    result = model.training
    assert result.processes == 2 and result.steps == 4  # 7 training rows: 1 full batch of 4 per epoch (the rest dropped) x 4 epochs
    assert any("2 processes x 2 rows of each 4-row batch" in line for line in lines), lines
    loss_lines = [line.split(",")[0] for line in lines if line.startswith("step ") and "loss" in line]
    assert loss_lines[:4] == [f"step {i}/4" for i in range(1, 5)], "rank 0's progress streams back, once per step"

    client = mlflow.tracking.MlflowClient(config.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("embed-pipeline").experiment_id])
    assert [(r.info.run_id, r.info.status) for r in runs] == [(model.mlflow_run_id, "FINISHED")]
    run = runs[0]
    assert run.data.params["training.processes"] == "2" and run.data.tags["processes"] == "2"
    loss = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted(m.step for m in loss) == [1, 2, 3, 4], "rank 0 alone logs, once per step"
    dev = client.get_metric_history(run.info.run_id, "dev/dev_cosine_ndcg_at_10")
    assert sorted(m.step for m in dev) == [2, 4]
    assert run.data.metrics["best_dev_ndcg_at_10"] == pytest.approx(max(m.value for m in dev))
    versions = client.search_model_versions(f"name='{config.registered_model_name}'")
    assert [(str(v.version), v.run_id) for v in versions] == [(model.version, run.info.run_id)]

    trained = SentenceTransformer(str(model.model_dir), device="cpu")
    base = SentenceTransformer(tiny_model_path, device="cpu")
    assert trained.max_seq_length == base.max_seq_length
    changed = [(a - b).abs().max().item() for a, b in zip(trained.parameters(), base.parameters(), strict=True)]
    assert max(changed) > 0, "the weights must have moved"
    assert not any((tmp_path / "ckpt").glob("*/checkpoint-*")), "a finished job keeps no checkpoints"
    assert not list((tmp_path / "ckpt").glob("*.job-*")), "a finished job folder is deleted"


@pytest.mark.slow
def test_a_rank_that_dies_fails_the_step_naming_it_and_the_retry_resumes(tmp_path, tiny_model_path):
    training = {**TRAINING, "epochs": 3, "checkpoint_steps": 1, "dev_share": 0.0}
    config = load_config(write_project(tmp_path / "project", tiny_model_path, training=training))
    client = mlflow.tracking.MlflowClient(config.tracking_uri)

    with pytest.raises(RankFailedError) as failed:
        train(config, tmp_path / "ckpt", tmp_path / "model", [], callbacks=["embed_pipeline_tests.lib.rank_faults:exit_rank_1_after_step_2"])

    assert failed.value.rank == 1 and failed.value.exit_code == 3
    assert "training rank 1 of 2 failed (exit code 3)" in str(failed.value)
    assert not (tmp_path / "model").exists()
    experiment = client.get_experiment_by_name("embed-pipeline").experiment_id
    assert [r.info.status for r in client.search_runs([experiment])] == ["FAILED"]
    assert not client.search_model_versions(f"name='{config.registered_model_name}'")

    lines = []
    model = train(config, tmp_path / "ckpt", tmp_path / "model", lines)

    assert model.training.resumed_from_step >= 1, lines
    assert model.training.steps == 6  # 10 rows: 2 full batches of 4 per epoch x 3 epochs
    assert sorted(r.info.status for r in client.search_runs([experiment])) == ["FAILED", "FINISHED"]
    assert [v.run_id for v in client.search_model_versions(f"name='{config.registered_model_name}'")] == [model.mlflow_run_id]


@pytest.mark.slow
def test_a_rank_exits_when_the_process_that_launched_it_is_gone():
    launcher = subprocess.Popen([sys.executable, "-c", "pass"])
    launcher.wait()  # reaped: its pid no longer exists, as after a SIGKILLed Dagster step
    rank = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom embed_pipeline.train_worker import exit_when_gone\n"
                               f"exit_when_gone({launcher.pid}, interval_seconds=0.1)\ntime.sleep(60)\nsys.exit(5)"],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        assert rank.wait(timeout=45) == 1
    finally:
        rank.kill()
    assert f"the launching process {launcher.pid} is gone" in rank.stderr.read()


# torchrun's report when rank 1 died on its own and torchrun then stopped rank 0 with SIGTERM within
# the same second: its "first observed failure" (smallest whole-second timestamp, ties to the lower
# rank) names rank 0. Seen in CI on 2026-12-03.
SAME_SECOND_REPORT = """\
============================================================
embed_pipeline.train_worker FAILED
------------------------------------------------------------
Failures:
[1]:
  time      : 2026-12-03_16:25:06
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : 3 (pid: 4242)
  error_file: <N/A>
  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-12-03_16:25:06
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 4241)
  error_file: <N/A>
  traceback : Signal 15 (SIGTERM) received by PID 4241
============================================================
"""


def test_the_rank_torchrun_stopped_is_not_blamed_for_the_rank_that_died(tmp_path):
    failed = _failure(1, "W1203 some warning\n" + SAME_SECOND_REPORT, tmp_path, 2)

    assert (failed.rank, failed.exit_code) == (1, 3)
    assert "training rank 1 of 2 failed (exit code 3)" in str(failed)


def test_a_rank_killed_by_sigterm_alone_is_still_named(tmp_path):
    alone = SAME_SECOND_REPORT.replace("[1]:", "").replace("rank      : 1 (local_rank: 1)", "").replace("exitcode  : 3 (pid: 4242)", "")
    alone = alone.split("Failures:")[0] + "Failures:\n  <NO_OTHER_FAILURES>\n" + "-" * 60 + "\nRoot Cause" + alone.split("Root Cause")[1]

    failed = _failure(1, alone, tmp_path, 2)

    assert (failed.rank, failed.exit_code) == (0, -15)
    assert "killed by SIGTERM" in str(failed)
