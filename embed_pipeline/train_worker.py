"""One DDP training rank, started by torchrun for `lib.distributed_training.train_distributed`.

    python -m torch.distributed.run --standalone --nproc_per_node N -m embed_pipeline.train_worker JOB

A process entry point, so it (not `lib/`) reads the environment: torchrun's `RANK`, `LOCAL_RANK`
and `WORLD_SIZE`. Everything else comes from the job folder the parent wrote. Each rank sets its
own thread count (`threads_per_process`), so no thread setting has to travel through the
environment; tokenizers' own thread pool is turned off (the ranks already share the cores).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from embed_pipeline.lib.distributed_training import PROGRESS_MARKER, read_job, train_rank  # noqa: E402


def exit_when_gone(pid: int, interval_seconds: float = 2.0) -> None:
    """End this process (exit code 1) once process `pid` no longer exists; checked from a daemon thread."""

    def watch() -> None:
        while True:
            time.sleep(interval_seconds)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                print(f"the launching process {pid} is gone: this rank stops", file=sys.stderr, flush=True)
                os._exit(1)
            except PermissionError:  # exists, owned by someone else
                continue

    threading.Thread(target=watch, name="launcher-watch", daemon=True).start()


def main(job_dir: Path) -> None:
    """One rank: watch the launcher, pick this rank's GPU, and run `train_rank`."""
    import torch

    job, _, _ = read_job(job_dir)
    if job.launcher_pid:
        exit_when_gone(job.launcher_pid)
    rank, local_rank, world_size = (int(os.environ[name]) for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))  # set by torchrun
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)  # "cuda" below means this rank's GPU
    train_rank(job_dir, rank, world_size, on_progress=lambda line: print(PROGRESS_MARKER + line, flush=True))


if __name__ == "__main__":
    from torch.distributed.elastic.multiprocessing.errors import record

    record(main)(Path(sys.argv[1]))
