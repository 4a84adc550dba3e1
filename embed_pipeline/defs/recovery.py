"""Recovering from runs whose process died (kill -9, a closed terminal, the OOM killer).

A run executed in process by `embed-pipeline run` that is killed hard stays STARTED in the Dagster
instance and keeps its slot of the `gpu` pool, so the next run would wait for it forever. Dagster's
run monitoring handles this for runs the daemon launched; for CLI runs, the CLI tags each run with
its pid and host, and `recover_dead_runs` (run at every CLI start, and every few seconds by a run
waiting for the pool: embed_pipeline/run_watch.py) finds runs whose process is gone, marks them
failed with the reason, frees their pool slots and ends their MLflow runs as KILLED.
The next run then resumes training from the dead run's last checkpoint (keyed by data and config).
"""

import os
import socket
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from embed_pipeline.defs.resources import MlflowResource, PipelineResource

PID_TAG = "embed_pipeline/pid"
HOST_TAG = "embed_pipeline/host"
LIVE_STATUSES = [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.CANCELING,
                 dg.DagsterRunStatus.NOT_STARTED]


def process_tags() -> dict[str, str]:
    """Tags naming this process, put on every run the CLI executes in process."""
    return {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}


def process_alive(pid: int) -> bool:
    """Whether `pid` is a live process other than a zombie (a killed CLI's pid may linger as one)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    status = Path(f"/proc/{pid}/status")
    if status.exists():
        state = next((line for line in status.read_text().splitlines() if line.startswith("State:")), "")
        return "Z" not in state.split(":", 1)[-1].split()[:1]
    return True


@dataclass(frozen=True)
class RecoveredRun:
    run_id: str
    job_name: str
    pid: int
    mlflow_runs_killed: list[str]


def recover_dead_runs(instance: dg.DagsterInstance, close_mlflow_runs=None) -> list[RecoveredRun]:
    """Mark this host's CLI runs whose process is gone as failed, free their pool slots, close MLflow runs.

    `close_mlflow_runs(dagster_run_id) -> [mlflow run ids]` ends the MLflow runs left RUNNING.
    Runs of other hosts are left to their own host (or the daemon's run monitoring).
    """
    host = socket.gethostname()
    recovered = []
    for record in instance.get_run_records(dg.RunsFilter(statuses=LIVE_STATUSES)):
        run = record.dagster_run
        tags = run.tags
        if tags.get(HOST_TAG) != host or not tags.get(PID_TAG, "").isdigit():
            continue
        pid = int(tags[PID_TAG])
        if pid == os.getpid() or process_alive(pid):
            continue
        instance.report_run_failed(run, f"process {pid} on {host} is gone (killed: SIGKILL, OOM or a closed terminal); "
                                        "marked failed by embed-pipeline's recovery, pool slots freed")
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        killed = close_mlflow_runs(run.run_id) if close_mlflow_runs else []
        recovered.append(RecoveredRun(run.run_id, run.job_name, pid, killed))
    return recovered


def pool_holders(instance: dg.DagsterInstance, pool: str, run_id: str) -> tuple[list[str], list[str]]:
    """(steps of `run_id` waiting for `pool`, "run X step Y" holding its slots).

    A holder is a claimed slot, or a slot assigned to another run's pending step (a run that died
    while waiting is handed the slot when it frees up, and never starts the step).
    """
    info = instance.event_log_storage.get_concurrency_info(pool)
    waiting = [p.step_key for p in info.pending_steps if p.run_id == run_id and p.assigned_timestamp is None]
    held = [(c.run_id, c.step_key) for c in info.claimed_slots]
    held += [(p.run_id, p.step_key) for p in info.pending_steps if p.assigned_timestamp is not None]
    holders = [f"run {other[:8]} step {step}" for other, step in dict.fromkeys(held) if other != run_id]
    return waiting, holders


@dg.run_failure_sensor(name="orphaned_mlflow_runs_sensor", default_status=dg.DefaultSensorStatus.RUNNING)
def orphaned_mlflow_runs_sensor(context: dg.RunFailureSensorContext, pipeline: PipelineResource, mlflow: MlflowResource):
    """When a run fails (also when run monitoring marks a dead run failed), free its pool slots and end its
    MLflow runs still RUNNING as KILLED: a dead run's `gpu` slot must not block the next run."""
    from embed_pipeline.lib.tracking import close_orphaned_runs

    context.instance.event_log_storage.free_concurrency_slots_for_run(context.dagster_run.run_id)

    killed = close_orphaned_runs(mlflow.tracker(pipeline.config), context.dagster_run.run_id)
    if killed:
        context.log.info(f"ended {len(killed)} MLflow run(s) of failed run {context.dagster_run.run_id} as KILLED: {killed}")
