"""`train_model` in N Ray Train workers across a cluster's nodes (`compute.engine: ray`).

The same job as the torchrun path (lib/distributed_training.py), launched by Ray instead: the
parent writes the job folder (columns, dev set, settings, paths, MLflow target) next to the
checkpoints under `artifacts_dir`, which every node sees (a shared filesystem in production;
docs/scaling.md), and runs Ray Train's `TorchTrainer` with `compute.train_workers` workers, each
holding `train_cpus_per_worker` CPUs and `train_gpus_per_worker` GPUs. Ray Train places the
workers on the cluster's nodes and sets up the process group (gloo on CPU, nccl when the workers
hold GPUs); every worker then calls `train_rank`, the function each torchrun rank calls, so the
batches (one duplicate-free batch of `batch_size` rows sliced per rank), the negatives gathered
across ranks, rank 0's MLflow logging into the parent's run, the model save and `result.json` are
the same code. Checkpoints go to the same `checkpoint_dir`, so a retry resumes from the last
complete one whichever engine wrote it (same world size).

Progress: rank 0's lines travel through a Ray queue (an actor holding no CPU) to the parent's
`on_progress` as they are written. Each worker writes `workers/rank-R.json` (its node id, node
address and pid) to the job folder when it starts: that is how a failure names the node, and how
the tests see where each rank ran.

Failure: Ray Train is told not to restart the group (`max_failures=0`): the step fails, raising
`WorkerFailedError` naming the rank, its node and its error, and its retry resumes from the
checkpoints. The job folder (with Ray Train's own files under `ray/`) is kept on failure and
deleted after success. Workers belong to the Ray job of the process that launched them: when
that process dies (a killed Dagster step), Ray ends them, so nothing keeps training into the
checkpoint folder a retry resumes from.

`import ray` happens inside functions only: Ray is an optional extra.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from embed_pipeline.lib.config import ComputeConfig, TrainingConfig
from embed_pipeline.lib.distributed_training import MlflowTarget, RankFailedError, TrainingJob, read_result, train_rank, write_job
from embed_pipeline.lib.training import TrainResult, check_batch_split
from embed_pipeline.lib.training_data import DevSet

log = logging.getLogger(__name__)

WORKERS_FOLDER = "workers"  # in the job folder: one rank-R.json per worker (node id, node address, pid)
_COLLECTIVE_ERRORS = ("connection closed by peer", "connection reset by peer", "gloo", "nccl")


class WorkerFailedError(RankFailedError):
    """A Ray Train worker failed: `rank`, and `node` (its node address) where it ran, when known."""

    def __init__(self, message: str, rank: int | None, node: str | None):
        super().__init__(message, rank, None)
        self.node = node


def train_on_ray(
    base_model: str,
    columns: dict[str, list[str]],
    settings: TrainingConfig,
    output_dir: Path,
    checkpoint_dir: Path,
    *,
    compute: ComputeConfig,
    job_dir: Path,
    dev: DevSet | None = None,
    mlflow: MlflowTarget | None = None,
    callbacks: Sequence[str] = (),
    on_progress: Callable[[str], None] | None = None,
) -> TrainResult:
    """`train_model` run by `compute.train_workers` Ray Train workers; returns rank 0's result.

    Needs a connected Ray client (`ray.init` done by the caller) and `job_dir`, `checkpoint_dir`
    and `output_dir` on storage every node reads and writes. Blocks until training ends. Raises
    `WorkerFailedError` when a worker fails; the run is then resumable from `checkpoint_dir`.
    """
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Queue

    workers = compute.train_workers
    check_batch_split(settings.batch_size, workers)
    on_gpu = compute.train_gpus_per_worker > 0
    job = TrainingJob(
        base_model=base_model, settings=dataclasses.asdict(settings), output_dir=str(output_dir),
        checkpoint_dir=str(checkpoint_dir), processes=workers,
        threads_per_process=max(1, int(compute.train_cpus_per_worker)), mlflow=mlflow, callbacks=tuple(callbacks),
    )
    if job_dir.exists():
        shutil.rmtree(job_dir)
    write_job(job_dir, job, columns, dev)
    progress = Queue(actor_options={"num_cpus": 0})
    resources = {"CPU": compute.train_cpus_per_worker} | ({"GPU": compute.train_gpus_per_worker} if on_gpu else {})
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"job_dir": str(job_dir), "progress": progress},
        torch_config=TorchConfig(backend="nccl" if on_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=on_gpu, resources_per_worker=resources),
        # No retries inside the step: a lost worker fails the step (its retry resumes from the
        # checkpoints), and workers the cluster cannot place fail it after Ray Train's start-up
        # timeout instead of being waited for forever.
        run_config=RunConfig(name=job_dir.name, storage_path=str(job_dir / "ray"),
                             failure_config=FailureConfig(max_failures=0, controller_failure_limit=0)),
    )
    forwarder = _Forwarder(progress, on_progress or log.info)
    forwarder.start()
    try:
        trainer.fit()
    except ray.train.TrainingFailedError as exc:
        raise _failure(exc, job_dir, workers, resources, ray.cluster_resources()) from None
    finally:
        forwarder.finish()
        progress.shutdown(force=True)
    result = read_result(job_dir)
    shutil.rmtree(job_dir, ignore_errors=True)
    return result


def worker_records(job_dir: Path) -> dict[int, dict]:
    """What each worker wrote when it started, by rank: node_id, node (address), pid."""
    records = {}
    for path in sorted((Path(job_dir) / WORKERS_FOLDER).glob("rank-*.json")):
        body = json.loads(path.read_text(encoding="utf-8"))
        records[body["rank"]] = body
    return records


def _worker_loop(config: dict) -> None:
    """One Ray Train worker: record where it runs, pick its GPU, and run `train_rank`."""
    import ray
    import ray.train
    import torch
    from ray.train.torch import get_device

    job_dir = Path(config["job_dir"])
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    record = {"rank": rank, "node_id": ray.get_runtime_context().get_node_id(), "node": ray.util.get_node_ip_address(),
              "pid": os.getpid()}
    (job_dir / WORKERS_FOLDER).mkdir(exist_ok=True)
    (job_dir / WORKERS_FOLDER / f"rank-{rank}.json").write_text(json.dumps(record), encoding="utf-8")
    device = get_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)  # "cuda" in train_model means this worker's GPU
    progress = config["progress"]
    train_rank(job_dir, rank, world_size, on_progress=progress.put)


class _Forwarder(threading.Thread):
    """Moves rank 0's progress lines from the Ray queue to `say` until told to finish (then drains it)."""

    def __init__(self, queue, say: Callable[[str], None]):
        super().__init__(name="ray-training-progress", daemon=True)
        self.queue, self.say = queue, say
        self._done = threading.Event()

    def run(self) -> None:
        from ray.util.queue import Empty

        while True:
            try:
                self.say(self.queue.get(block=True, timeout=0.5))
            except Empty:
                if self._done.is_set():
                    return

    def finish(self) -> None:
        self._done.set()
        self.join(timeout=30)


def _failure(exc: Exception, job_dir: Path, workers: int, per_worker: dict, cluster: dict) -> WorkerFailedError:
    """The error naming the worker that failed: its rank, its node, and what happened to it.

    Without a failed worker (Ray Train's controller failed, e.g. the workers could not be placed):
    what was asked for, what the cluster has, and Ray's reason.
    """
    failures = getattr(exc, "worker_failures", None) or {}
    if not failures:
        cause = getattr(exc, "controller_failure", exc)
        reason = _describe(cause).split(". ")[0]
        total = {name: cluster.get(name, 0) for name in per_worker}
        return WorkerFailedError(f"Ray Train could not run {workers} training workers of {_resources(per_worker)} each "
                                 f"(the cluster has {_resources(total)} in all): {reason} (job folder kept: {job_dir})",
                                 None, None)
    # When one worker dies, the others fail in the gather or all-reduce waiting for it: blame the
    # first failure that is not such a communication error.
    ranks = sorted(failures)
    rank = next((r for r in ranks if not any(s in str(failures[r]).lower() for s in _COLLECTIVE_ERRORS)), ranks[0])
    error = failures[rank]
    record = worker_records(job_dir).get(rank, {})
    reported = re.search(r"node_ip='([^']+)'", str(error))
    node = record.get("node") or (reported.group(1) if reported else None)
    where = f"node {node}" + (f" (node id {record['node_id'][:12]})" if record else "") if node else "an unknown node"
    others = f"; rank {', '.join(str(r) for r in ranks if r != rank)} failed after it" if len(ranks) > 1 else ""
    return WorkerFailedError(
        f"training worker rank {rank} of {workers} on {where} failed: {_describe(error)}{others} (job folder kept: {job_dir})",
        rank, node)


def _describe(error: Exception) -> str:
    """One line on what happened: a dead worker's exit detail (and its log file), else the exception's type and message."""
    text = str(error)
    died = re.search(r"Worker exit detail: (.*?)(?: Some common causes|$)", text, re.S)
    log_file = re.search(r"log_file_path='([^']+)'", text)
    where_logged = f" (its log on that node: {log_file.group(1)})" if log_file else ""
    if died:
        return f"its process died: {' '.join(died.group(1).split())}{where_logged}"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"{type(error).__name__}: {first}{where_logged}" if first else type(error).__name__


def _resources(amounts: dict) -> str:
    return ", ".join(f"{amount:g} {name}" for name, amount in amounts.items())
