"""Seconds per training step on this machine: precision x attention dropout x sequence length (not a test).

Times forward + backward + AdamW step of the base model in training mode (dropout active, as in
the trainer) on a batch of 32 rows: a 24-token query plus one passage per text column, every
passage padded to the length under test. Rows:
  (a)-like  query + 1 passage at 256 tokens, fp32, the model's own attention dropout (the recipe);
  (b)       query + positive + 1 hard negative at 128 / 256 tokens, each combination of
            fp32 / bf16 autocast and attention dropout (the model's 0.1 / 0, see
            `lib.training.set_attention_dropout`).
bf16 rows run only where `lib.hardware.cpu_has_native_bf16()` (or with `--force-bf16`) (or on a bf16-capable GPU; there
the "fp32" rows use TF32 matmuls, as `load_model` enables them). Median of --repeats steps after
one warm-up step.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/train_step_speed.py [--repeats 3]
    # the demo's shape (query + positive, 64 tokens), bf16 forced on a CPU without AMX:
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/train_step_speed.py --lengths 64 --negatives 0 --force-bf16
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from embed_pipeline.lib.config import DEMO_CONFIG, load_config  # noqa: E402
from embed_pipeline.lib.encoding import load_model  # noqa: E402
from embed_pipeline.lib.hardware import cpu_has_native_bf16, pick_device  # noqa: E402
from embed_pipeline.lib.training import set_attention_dropout  # noqa: E402

ROWS = 32


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 256], help="tokens per passage for the (b) rows")
    parser.add_argument("--negatives", type=int, default=1, help="hard negatives per (b) row (0: query + positive)")
    parser.add_argument("--force-bf16", action="store_true",
                        help="time bf16 rows even where `auto` would not train in bf16 (e.g. AVX512-BF16 without AMX)")
    args = parser.parse_args()
    device = pick_device()
    config = load_config(DEMO_CONFIG)  # only for the base model

    def batch(model, length: int) -> dict:
        model.max_seq_length = length
        features = model.preprocess(["word " * (2 * length)] * ROWS)
        return {k: v.to(device) for k, v in features.items() if isinstance(v, torch.Tensor)}

    def seconds_per_step(passages: int, length: int, bf16: bool, attention_dropout: float | None) -> float:
        model = load_model(config.resolved_base_model, device=device)
        if attention_dropout is not None:
            set_attention_dropout(model, attention_dropout)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-7)
        columns = [batch(model, 24)] + [batch(model, length)] * passages
        autocast = torch.autocast(device, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        times = []
        for _ in range(args.repeats + 1):
            start = time.perf_counter()
            with autocast:
                loss = sum(model(c)["sentence_embedding"].float().pow(2).mean() for c in columns)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        return statistics.median(times[1:])

    can_bf16 = args.force_bf16 or (torch.cuda.is_bf16_supported() if device == "cuda" else cpu_has_native_bf16())
    print(f"device {device}, torch threads {torch.get_num_threads()}, native bf16 {can_bf16}, {ROWS} rows per step")
    print("| rows | tokens per passage | precision | attention dropout | s/step | rows/s |")
    print("|---|---:|---|---|---:|---:|")
    cases = [("(a)-like: query + passage", 1, 256, False, None)]
    label = "(b): query + positive" + " + negative" * args.negatives
    for length in args.lengths:
        for bf16 in ([False, True] if can_bf16 else [False]):
            for dropout in (None, 0.0):
                cases.append((label, 1 + args.negatives, length, bf16, dropout))
    for label, passages, length, bf16, dropout in cases:
        seconds = seconds_per_step(passages, length, bf16, dropout)
        shown_dropout = "model's own" if dropout is None else dropout
        print(f"| {label} | {length} | {'bf16' if bf16 else 'fp32'} | {shown_dropout} "
              f"| {seconds:.2f} | {ROWS / seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
