"""Trainer-callback factories for the distributed-training tests, passed to `fine_tune(callbacks=...)`
by import path and built inside every torchrun rank or Ray Train worker (lib/distributed_training.py)."""

import json
import os
import sys
from pathlib import Path

from transformers import TrainerCallback


class _ExitRankAfterStep(TrainerCallback):
    """Rank `rank` dies with `os._exit(code)` at the end of step `step`: no Python traceback, no
    cleanup, as a process killed by the OOM killer or a segfault would."""

    def __init__(self, rank: int, step: int, code: int):
        self.rank, self.step, self.code = rank, step, code

    def on_step_end(self, args, state, control, **kwargs):
        import torch.distributed as dist

        if dist.is_initialized() and dist.get_rank() == self.rank and state.global_step >= self.step:
            os._exit(self.code)


def exit_rank_1_after_step_2() -> TrainerCallback:
    return _ExitRankAfterStep(rank=1, step=2, code=3)


class _RecordWorld(TrainerCallback):
    """Each rank writes what it trains with next to the checkpoint folder: rank, world size, batch split, threads,
    and at the end the steps it trained."""

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        import torch
        import torch.distributed as dist

        rank = dist.get_rank() if dist.is_initialized() else 0
        shard = train_dataloader.batch_sampler  # accelerate's BatchSamplerShard around the sentence-transformers sampler
        rows = shard.batch_size // shard.num_processes if shard.split_batches else shard.batch_size
        self.seen = {"rank": rank, "world_size": dist.get_world_size() if dist.is_initialized() else 1,
                     "backend": dist.get_backend() if dist.is_initialized() else None, "sampler_batch": shard.batch_size,
                     "rows_per_rank": rows, "torch_threads": torch.get_num_threads(), "ray_node_id": _ray_node_id()}
        self._write(args)

    def on_train_end(self, args, state, control, **kwargs):
        self.seen["steps_trained"] = state.global_step  # this rank ran every optimizer step, not just started
        self._write(args)

    def _write(self, args):
        (Path(args.output_dir).parent / f"seen-rank{self.seen['rank']}.json").write_text(json.dumps(self.seen))


def _ray_node_id() -> str | None:
    """The Ray node this process runs on (a Ray Train worker), else None (a torchrun rank never imports ray)."""
    ray = sys.modules.get("ray")
    return ray.get_runtime_context().get_node_id() if ray is not None and ray.is_initialized() else None


def record_world() -> TrainerCallback:
    return _RecordWorld()


def exit_rank_1_after_step_3() -> TrainerCallback:
    return _ExitRankAfterStep(rank=1, step=3, code=3)
