"""The GPU path in one short run: bf16 training on the demo pairs, then bf16 encoding of N passages.

Prepared for the `device` machine (one prepared script, one call). It uses the pipeline's own lib
functions, so what it proves is the code the assets run:
  1. mine hard negatives for the demo's curated pairs with the base model (`lib.negatives`);
  2. `lib.training.train_model` for about `--steps` optimisation steps with the config's training
     settings (precision auto: bf16 autocast + TF32 on CUDA, bf16 on CPUs with AMX or AVX512-BF16, else fp32), no dev
     split, no early stopping, one checkpoint at the end only (saves would count in the timing);
  3. `lib.embedding.encode` of `--passages` passages (the demo corpus repeated with a numbered
     suffix, so every text is distinct) with the trained model.
Prints one JSON object: device, steps/s, pairs/s, passages/s, peak GPU memory of each phase.
`--processes N` trains step 2 through `lib.distributed_training.train_distributed` instead: torchrun
with N ranks (nccl on CUDA, one GPU per rank; N = 1 checks the launcher on a one-GPU machine), the
batch split N ways with gathered in-batch negatives; the training peak memory is then not measured.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/gpu_check.py                         # GPU: 300 steps, 50k passages
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/gpu_check.py --steps 4 --passages 256  # CPU smoke run
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/gpu_check.py --processes 2            # DDP: 2 GPUs (or 2 CPU ranks)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from embed_pipeline.lib.config import load_config  # noqa: E402
from embed_pipeline.lib.distributed_training import train_distributed  # noqa: E402
from embed_pipeline.lib.corpus import load_corpus, passage_texts  # noqa: E402
from embed_pipeline.lib.encoding import encode, load_model  # noqa: E402
from embed_pipeline.lib.hardware import pick_device  # noqa: E402
from embed_pipeline.lib.negatives import mine_hard_negatives  # noqa: E402
from embed_pipeline.lib.labelled import load_labelled_pairs  # noqa: E402
from embed_pipeline.lib.training import train_model  # noqa: E402
from embed_pipeline.lib.training_data import training_columns  # noqa: E402


def gpu_peak_gib() -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


def reset_gpu_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=None, help="pipeline config (default: the demo's)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--passages", type=int, default=50_000)
    parser.add_argument("--encode-batch", type=int, default=256)
    parser.add_argument("--processes", type=int, default=0, help="train through torchrun with this many ranks (0: in process)")
    args = parser.parse_args()

    config = load_config(args.config)
    if config.curated_pairs is None:
        raise SystemExit(f"{args.config or 'the demo config'} names no curated_pairs: gpu_check trains on them")
    device = pick_device()
    passages = load_corpus(config.corpus).passages
    ids, texts = list(passages["passage_id"]), passage_texts(passages)
    text_of = dict(zip(ids, texts, strict=True))
    curated = load_labelled_pairs(config.curated_pairs, set(ids)).pairs

    base = load_model(config.resolved_base_model, device=device)
    start = time.perf_counter()
    corpus_vectors = encode(base, texts, batch_size=args.encode_batch, progress=False)
    queries = list(dict.fromkeys(curated["query"]))
    query_vectors = encode(base, queries, batch_size=args.encode_batch, progress=False)
    mined = mine_hard_negatives(curated.assign(source="curated")[["query", "passage_id", "source"]], queries,
                                query_vectors, ids, corpus_vectors, config.mining)
    mining_s = time.perf_counter() - start
    del base

    settings = config.training
    columns, _ = training_columns(mined.triples, text_of, settings.num_negatives, settings.seed)
    wanted = args.steps * settings.batch_size  # rows for exactly --steps steps
    if wanted <= len(columns["anchor"]):  # one epoch over the first `wanted` rows (the config allows no less than 1 epoch)
        columns = {name: values[:wanted] for name, values in columns.items()}
    rows = len(columns["anchor"])
    epochs = max(1.0, wanted / rows)
    settings = dataclasses.replace(settings, epochs=epochs, dev_share=0.0, early_stopping_patience=0,
                                   checkpoint_steps=args.steps + 1)
    reset_gpu_peak()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        if args.processes:
            settings = dataclasses.replace(settings, processes=args.processes)
            result = train_distributed(config.resolved_base_model, columns, settings, Path(scratch) / "model", Path(scratch) / "ckpt",
                                       processes=args.processes, job_dir=Path(scratch) / "job",
                                       on_progress=lambda line: print(line, flush=True))
            train_peak = None  # the ranks' memory, not this process's
        else:
            result = train_model(config.resolved_base_model, columns, settings, Path(scratch) / "model",
                                 Path(scratch) / "ckpt", on_progress=lambda line: print(line, flush=True))
            train_peak = gpu_peak_gib()
        model = load_model(str(result.model_dir), device=device)

    corpus = [f"{texts[i % len(texts)]} [{i}]" for i in range(args.passages)]
    encode(model, corpus[: args.encode_batch], batch_size=args.encode_batch, progress=False)  # warm-up
    reset_gpu_peak()
    start = time.perf_counter()
    vectors = encode(model, corpus, batch_size=args.encode_batch, progress=False)
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
    encode_s = time.perf_counter() - start

    import torch

    print(json.dumps({
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "bf16": result.bf16,
        "base_model": config.base_model,
        "training_rows": rows,
        "negatives_per_row": settings.num_negatives,
        "batch_size": settings.batch_size,
        "processes": result.processes,
        "max_seq_length": settings.max_seq_length,
        "mining_s": round(mining_s, 2),
        "steps": result.steps,
        "train_s": round(result.train_seconds, 2),
        "steps_per_s": round(result.steps / result.train_seconds, 2),
        "pairs_per_s": round(result.pairs_per_second, 1),
        "final_loss": round(result.final_loss, 4),
        "train_peak_gpu_gib": train_peak,
        "passages": len(vectors),
        "encode_s": round(encode_s, 2),
        "passages_per_s": round(len(vectors) / encode_s, 1),
        "encode_peak_gpu_gib": gpu_peak_gib(),
    }, indent=2))


if __name__ == "__main__":
    main()
