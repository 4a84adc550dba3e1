"""`train_model` in N processes (DDP) through torchrun: the job folder, the launch, and each rank.

The parent (`train_distributed`) writes everything a rank needs to a job folder: the trainer's
columns (Parquet), the dev set, the training settings, the paths, and where to send metrics (MLflow
tracking URI + the run the parent opened). It then runs

    python -m torch.distributed.run --standalone --nproc_per_node N -m embed_pipeline.train_worker JOB

and every rank (`embed_pipeline/train_worker.py`, the process entry point) calls `train_rank`, which
calls `train_model` with `world_size=N` (Ray Train's workers call the same `train_rank`:
lib/ray_training.py). Rank 0 alone logs to MLflow
(per step, into the parent's run), saves the model and writes `result.json`; the parent reads it
back and does everything after training (registration included), so one MLflow run and one
registered version result. Backend: gloo on CPU, nccl on CUDA (one GPU per rank).

Progress: rank 0 prints each progress line to stdout behind `PROGRESS_MARKER`; the parent forwards
those to its `on_progress` as they arrive. Threads: each rank sets `available_cpus() // N` torch threads itself (`threads_per_process` in the job),
so 2 ranks on 2 cores run one thread each instead of four fighting over two; nothing travels
through the environment.

Failure: torchrun stops every rank when one fails, and every rank exits when the launching process
is gone (a SIGKILLed Dagster step must not leave ranks training into the checkpoint folder its
retry resumes from); the parent raises `RankFailedError` naming the
rank that failed (not one torchrun stopped because of it: see `_culprit`), its exit code, and its error text (the Python traceback torchrun's error
file records for an exception, else the rank's last stderr lines, e.g. after a SIGKILL). The job
folder (with every rank's logs under `logs/`) is kept on failure and deleted after success.
Checkpoints live in `checkpoint_dir` exactly as for one process, so a retry resumes from them.

`callbacks` are import paths (`package.module:factory`) of zero-argument functions returning a
`transformers.TrainerCallback`, built inside every rank: a callback object cannot cross a process
boundary, its import path can. The tests use this to kill one rank mid-training.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import importlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from embed_pipeline.lib.config import TrainingConfig
from embed_pipeline.lib.training import TrainResult, check_batch_split
from embed_pipeline.lib.training_data import DevSet

log = logging.getLogger(__name__)

PROGRESS_MARKER = "[embed-pipeline progress] "
WORKER_MODULE = "embed_pipeline.train_worker"  # each rank's entry point (reads torchrun's RANK / WORLD_SIZE)
STDERR_TAIL_LINES = 40


class RankFailedError(RuntimeError):
    """A training rank failed; `rank` is the first one that did (None when torchrun itself failed)."""

    def __init__(self, message: str, rank: int | None, exit_code: int | None):
        super().__init__(message)
        self.rank = rank
        self.exit_code = exit_code


@dataclasses.dataclass(frozen=True)
class MlflowTarget:
    """Where rank 0 logs per-step metrics: an open run of an existing experiment."""

    tracking_uri: str
    experiment: str
    artifact_location: str
    run_id: str


@dataclasses.dataclass(frozen=True)
class TrainingJob:
    """Everything `train_model` takes, in a form that crosses a process boundary (job.json)."""

    base_model: str
    settings: dict
    output_dir: str
    checkpoint_dir: str
    processes: int
    threads_per_process: int
    mlflow: MlflowTarget | None = None
    callbacks: tuple[str, ...] = ()
    launcher_pid: int = 0  # the process that started torchrun; ranks exit when it is gone (0: no watch)


def build_callbacks(paths: Sequence[str]) -> list:
    """Trainer callbacks from `module:factory` import paths (each factory takes no arguments)."""
    built = []
    for path in paths:
        module_name, _, name = path.partition(":")
        if not name:
            raise ValueError(f"callback {path!r}: expected 'package.module:factory'")
        built.append(getattr(importlib.import_module(module_name), name)())
    return built


def write_job(job_dir: Path, job: TrainingJob, columns: dict[str, list[str]], dev: DevSet | None) -> None:
    job_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(columns).to_parquet(job_dir / "columns.parquet", index=False)
    if dev is not None:
        body = {"queries": dev.queries, "corpus": dev.corpus, "relevant": {q: sorted(ids) for q, ids in dev.relevant.items()}}
        (job_dir / "dev.json").write_text(json.dumps(body), encoding="utf-8")
    (job_dir / "job.json").write_text(json.dumps(dataclasses.asdict(job), indent=2), encoding="utf-8")


def read_job(job_dir: Path) -> tuple[TrainingJob, dict[str, list[str]], DevSet | None]:
    body = json.loads((job_dir / "job.json").read_text(encoding="utf-8"))
    mlflow = MlflowTarget(**body.pop("mlflow")) if body.get("mlflow") else None
    job = TrainingJob(**{**body, "mlflow": mlflow, "callbacks": tuple(body["callbacks"])})
    frame = pd.read_parquet(job_dir / "columns.parquet")
    columns = {name: frame[name].tolist() for name in frame.columns}
    dev = None
    if (job_dir / "dev.json").is_file():
        raw = json.loads((job_dir / "dev.json").read_text(encoding="utf-8"))
        dev = DevSet(queries=raw["queries"], corpus=raw["corpus"], relevant={q: set(ids) for q, ids in raw["relevant"].items()})
    return job, columns, dev


def train_rank(job_dir: Path, rank: int, world_size: int, on_progress: Callable[[str], None] | None = None) -> TrainResult:
    """One rank of a distributed job, whatever launched it (torchrun here, Ray Train in lib/ray_training.py).

    The process group is already up and this rank's device chosen. Rebuilds the job from
    `job_dir`, adds the MLflow callback on rank 0, calls `train_model` with `world_size`, and on
    rank 0 writes `result.json` (atomically) for the launcher to read back. `on_progress` gets
    rank 0's progress lines (other ranks say nothing).
    """
    from embed_pipeline.lib.tracking import Tracker, mlflow_callback
    from embed_pipeline.lib.training import train_model

    job, columns, dev = read_job(job_dir)
    callbacks = build_callbacks(job.callbacks)
    if rank == 0 and job.mlflow is not None:
        target = job.mlflow
        tracker = Tracker(target.tracking_uri, target.artifact_location, target.experiment)
        callbacks.append(mlflow_callback(tracker, target.run_id))

    def say(line: str) -> None:
        if rank == 0 and on_progress is not None:
            on_progress(line)

    result = train_model(
        job.base_model, columns, TrainingConfig(**job.settings), Path(job.output_dir), Path(job.checkpoint_dir),
        dev=dev, callbacks=callbacks, on_progress=say, world_size=world_size, threads=job.threads_per_process,
    )
    if rank == 0:
        body = {**dataclasses.asdict(result), "model_dir": str(result.model_dir)}
        tmp = job_dir / "result.json.tmp"
        tmp.write_text(json.dumps(body), encoding="utf-8")
        tmp.replace(job_dir / "result.json")
    return result


def read_result(job_dir: Path) -> TrainResult:
    """Rank 0's `TrainResult`, as `train_rank` wrote it."""
    result = json.loads((job_dir / "result.json").read_text(encoding="utf-8"))
    return TrainResult(**{**result, "model_dir": Path(result["model_dir"])})


def train_distributed(
    base_model: str,
    columns: dict[str, list[str]],
    settings: TrainingConfig,
    output_dir: Path,
    checkpoint_dir: Path,
    *,
    processes: int,
    job_dir: Path,
    dev: DevSet | None = None,
    mlflow: MlflowTarget | None = None,
    callbacks: Sequence[str] = (),
    on_progress: Callable[[str], None] | None = None,
) -> TrainResult:
    """`train_model` run by `processes` ranks under torchrun; returns rank 0's result.

    Blocks until every rank has exited. Raises `RankFailedError` when any rank fails; the run is
    then resumable from `checkpoint_dir` like a single-process one.
    """
    from embed_pipeline.lib.hardware import available_cpus, pick_device

    check_batch_split(settings.batch_size, processes)
    if pick_device() == "cuda":
        import torch

        if processes > torch.cuda.device_count():
            raise ValueError(f"training.processes {processes} > {torch.cuda.device_count()} visible GPUs (nccl needs one GPU per rank)")
    threads = max(1, available_cpus() // processes)
    job = TrainingJob(
        base_model=base_model, settings=dataclasses.asdict(settings), output_dir=str(output_dir),
        checkpoint_dir=str(checkpoint_dir), processes=processes, threads_per_process=threads, mlflow=mlflow,
        callbacks=tuple(callbacks), launcher_pid=os.getpid(),
    )
    if job_dir.exists():
        shutil.rmtree(job_dir)
    write_job(job_dir, job, columns, dev)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
        f"--log-dir={job_dir / 'logs'}", "--tee=3", "-m", WORKER_MODULE, str(job_dir),
    ]
    say = on_progress or log.info
    stderr_tail: collections.deque[str] = collections.deque(maxlen=400)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)  # its own process group: stopping the step stops every rank
    reader = threading.Thread(target=lambda: stderr_tail.extend(process.stderr), daemon=True)
    reader.start()
    try:
        for line in process.stdout:
            _, marker, text = line.rstrip("\n").partition(PROGRESS_MARKER)
            if marker:
                say(text)
            else:
                log.debug("%s", line.rstrip("\n"))
        code = process.wait()
    except BaseException:
        _stop(process)
        raise
    reader.join(timeout=10)
    if code != 0:
        raise _failure(code, "".join(stderr_tail), job_dir, processes)
    result = read_result(job_dir)
    shutil.rmtree(job_dir, ignore_errors=True)
    return result


def _stop(process: subprocess.Popen) -> None:
    """Stop torchrun and its ranks (SIGTERM to the group, SIGKILL after 30 s)."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _failure(code: int, stderr: str, job_dir: Path, processes: int) -> RankFailedError:
    """The error for a failed launch, from torchrun's failure report and the rank's own logs."""
    starts = list(re.finditer(r"^Failures:\s*$", stderr, re.M))
    root = _culprit(stderr[starts[-1].end():] if starts else stderr)
    rank_match = re.search(r"^\s*rank\s*:\s*(\d+)\s*\(local_rank:\s*(\d+)\)", root, re.M)
    exit_match = re.search(r"^\s*exitcode\s*:\s*(-?\d+)", root, re.M)
    if rank_match is None:
        tail = "\n".join(stderr.strip().splitlines()[-STDERR_TAIL_LINES:])
        return RankFailedError(f"torchrun failed (exit code {code}) before naming a rank; its stderr ends:\n{tail}\n"
                               f"(job folder kept: {job_dir})", None, code)
    rank, local_rank = int(rank_match.group(1)), int(rank_match.group(2))
    exit_code = int(exit_match.group(1)) if exit_match else None
    how = f"exit code {exit_code}"
    if exit_code is not None and exit_code < 0:
        with contextlib.suppress(ValueError):
            how = f"killed by {signal.Signals(-exit_code).name}"
    if "error_file: <N/A>" in root:  # no Python traceback (killed, os._exit, a crash in C): show the rank's stderr
        logs = sorted((job_dir / "logs").glob(f"*/attempt_*/{local_rank}/stderr.log"), key=lambda path: path.stat().st_mtime)
        lines = [line for line in logs[-1].read_text(errors="replace").splitlines() if line.strip()] if logs else []
        detail = ("no Python traceback; its last stderr lines:\n" + "\n".join(lines[-STDERR_TAIL_LINES:])) if lines \
            else "no Python traceback and no stderr output"
    else:
        detail = "\n".join(line for line in root.strip().splitlines() if not line.startswith("[")).strip()
    return RankFailedError(f"training rank {rank} of {processes} failed ({how}): {detail}\n(job folder kept: {job_dir})",
                           rank, exit_code)


def _culprit(report: str) -> str:
    """The failure block that names the rank that really failed.

    torchrun's "Root Cause (first observed failure)" is the failure with the smallest timestamp, in
    whole seconds; a failure without an error file gets the time torchrun noticed it. When one rank
    dies, torchrun stops the others with SIGTERM, and those can land in the same second and be named
    the root cause. So: the root cause unless it was SIGTERM'd while another rank failed otherwise
    (then the first such block in report order). Not caught: a surviving rank that failed with its
    own exception (e.g. gloo's "connection closed by peer") before torchrun stopped it.
    """
    others, _, root = report.partition("Root Cause (first observed failure):")
    root = re.split(r"^={20,}\s*$", root, maxsplit=1, flags=re.M)[0]  # the report's border, at column 0
    others = re.split(r"^-{20,}\s*$", others, maxsplit=1, flags=re.M)[0]  # the section line (tracebacks are indented)
    blocks = [root] + [block for block in re.split(r"^\[\d+\]:\s*$", others, flags=re.M)[1:] if "rank" in block]
    stopped = re.compile(rf"^\s*exitcode\s*:\s*-{int(signal.SIGTERM)}\b", re.M)
    return next((block for block in blocks if not stopped.search(block)), root)
