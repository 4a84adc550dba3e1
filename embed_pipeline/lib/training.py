"""Fine-tuning with sentence-transformers' `SentenceTransformerTrainer`.

MultipleNegativesRankingLoss (InfoNCE): for each anchor, its positive must outscore every other
positive and negative in the batch. `scale` = 1 / temperature, so 20.0 means temperature 0.05.
In-batch negatives make the batch size a quality knob, and duplicates in a batch would act as
false negatives, hence `BatchSamplers.NO_DUPLICATES`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from embed_pipeline.lib.config import TrainingConfig
from embed_pipeline.lib.io import atomic_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    model_dir: Path
    steps: int
    pairs: int
    train_seconds: float
    pairs_per_second: float
    final_loss: float
    device: str


def training_columns(
    triples: pd.DataFrame,
    passage_text: dict[str, str],
    num_negatives: int,
    seed: int,
) -> tuple[dict[str, list[str]], int]:
    """Columns anchor, positive, negative_1..n for the trainer, plus how many negatives were padded.

    MNRL needs the same number of negatives on every row. A row with fewer mined negatives is
    topped up with random corpus passages (seeded) that are not positives of its query: a random
    passage is a weak but valid negative, and dropping the row would lose its positive.
    """
    rng = np.random.default_rng(seed)
    all_ids = list(passage_text)
    positives = triples.groupby("query")["passage_id"].agg(set).to_dict()
    columns: dict[str, list[str]] = {"anchor": [], "positive": []}
    columns.update({f"negative_{i + 1}": [] for i in range(num_negatives)})
    padded = 0
    for row in triples.itertuples(index=False):
        columns["anchor"].append(row.query)
        override = getattr(row, "positive_text", "") or ""
        columns["positive"].append(override if isinstance(override, str) and override else passage_text[row.passage_id])
        negatives = list(row.negatives)[:num_negatives]
        while len(negatives) < num_negatives:
            candidate = all_ids[int(rng.integers(len(all_ids)))]
            if candidate not in positives[row.query] and candidate not in negatives:
                negatives.append(candidate)
                padded += 1
        for i, nid in enumerate(negatives):
            columns[f"negative_{i + 1}"].append(passage_text[nid])
    return columns, padded


def train_model(
    base_model: str,
    columns: dict[str, list[str]],
    settings: TrainingConfig,
    output_dir: Path,
    checkpoint_dir: Path,
    callbacks: list | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train from `base_model` on `columns` and save the model atomically to `output_dir`."""
    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from embed_pipeline.lib.embedding import load_model, pick_device

    device = pick_device()
    on_cuda = device == "cuda"
    model = load_model(base_model, device=device, max_seq_length=settings.max_seq_length)
    dataset = Dataset.from_dict(columns)
    loss = MultipleNegativesRankingLoss(model, scale=settings.scale)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(checkpoint_dir),
        num_train_epochs=settings.epochs,
        per_device_train_batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        warmup_ratio=settings.warmup_ratio,
        seed=settings.seed,
        data_seed=settings.seed,
        bf16=on_cuda,
        tf32=on_cuda or None,
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        logging_steps=settings.logging_steps,
        save_strategy="no",
        report_to="none",
        disable_tqdm=False,
    )
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=loss, callbacks=callbacks or [])
    if on_progress:
        on_progress(f"training on {len(dataset)} rows, device={device}, torch threads={torch.get_num_threads()}")
    start = time.perf_counter()
    output = trainer.train()
    seconds = time.perf_counter() - start
    with atomic_path(Path(output_dir)) as tmp:
        model.save(str(tmp))
    pairs_seen = int(len(dataset) * settings.epochs)
    return TrainResult(
        model_dir=Path(output_dir),
        steps=int(output.global_step),
        pairs=len(dataset),
        train_seconds=seconds,
        pairs_per_second=pairs_seen / seconds if seconds else 0.0,
        final_loss=float(output.training_loss),
        device=device,
    )


def mlflow_callback(tracker, run_id: str):
    """A Trainer callback that sends every logged value (loss, learning rate, grad norm) to MLflow per step."""
    from transformers import TrainerCallback

    class _MlflowCallback(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            numeric = {k: v for k, v in (logs or {}).items() if isinstance(v, (int, float))}
            if numeric:
                tracker.log_metrics(run_id, {f"train/{k}": v for k, v in numeric.items()}, step=state.global_step)

    return _MlflowCallback()


def library_versions() -> dict[str, str]:
    """Versions of the libraries that decide a model's numbers, for MLflow tags."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "sentence-transformers", "transformers", "faiss-cpu", "faiss-gpu", "dagster", "mlflow"):
        try:
            out[f"version.{name}"] = version(name)
        except PackageNotFoundError:
            continue
    return out
