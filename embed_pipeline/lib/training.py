"""Fine-tuning with sentence-transformers' `SentenceTransformerTrainer`.

MultipleNegativesRankingLoss (InfoNCE): for each anchor, its positive must outscore every other
positive and negative in the batch. `scale` = 1 / temperature, so 20.0 means temperature 0.05.
In-batch negatives make the batch size a quality knob, and duplicates in a batch would act as
false negatives, hence `BatchSamplers.NO_DUPLICATES`. CachedMultipleNegativesRankingLoss
(GradCache) computes the same loss over the full batch while holding only `mini_batch_size` rows
of activations: the way to a large batch on small memory (gradient accumulation would split the
in-batch negatives too).

Crash safety: checkpoints are written every `checkpoint_steps` to a folder the caller keys by
(training data, config), not by the orchestrator's run id, so a retry finds the last complete
checkpoint and resumes from it (optimizer, scheduler, RNG and data order included).

Model selection: a dev split is carved from the *training* queries (never the eval set); the
trainer evaluates nDCG@10 on it at every checkpoint, keeps the best checkpoint, stops early when
it stops improving, and the best weights are what gets saved.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from embed_pipeline.lib.config import LOSS_TERMS, TrainingConfig
from embed_pipeline.lib.io import atomic_path

log = logging.getLogger(__name__)

DEV_METRIC = "eval_dev_cosine_ndcg@10"


@dataclass(frozen=True)
class TrainResult:
    model_dir: Path
    steps: int
    pairs: int
    train_seconds: float
    pairs_per_second: float  # training rows processed per second of optimisation (dev evaluation excluded)
    final_loss: float
    device: str
    resumed_from_step: int  # 0 when training started from the base model
    best_dev_ndcg_at_10: float | None
    dev_seconds: float
    bf16: bool  # trained under bf16 autocast (see TrainingConfig.precision)


@dataclass(frozen=True)
class DevSet:
    """A small retrieval task for checkpoint selection: queries, a passage pool, and the relevant ids."""

    queries: dict[str, str]
    corpus: dict[str, str]
    relevant: dict[str, set[str]]


def split_dev(triples: pd.DataFrame, share: float, max_queries: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, dev) rows split by query, so no dev query's wording is trained on.

    Dev queries are drawn (seeded) from real queries (`source` != 'synthetic' when the column is
    there): synthetic inverse-cloze queries are easy and would flatter every checkpoint.
    """
    queries = pd.Series(triples["query"].unique())
    if "source" in triples:
        synthetic = set(triples.loc[triples["source"] == "synthetic", "query"])
        real = queries[~queries.isin(synthetic)]
        queries = real if len(real) else queries
    wanted = min(int(round(share * triples["query"].nunique())), max_queries, len(queries))
    if wanted < 1:
        return triples.reset_index(drop=True), triples.iloc[0:0]
    dev_queries = set(queries.sample(n=wanted, random_state=seed))
    is_dev = triples["query"].isin(dev_queries)
    return triples[~is_dev].reset_index(drop=True), triples[is_dev].reset_index(drop=True)


def dev_set(dev: pd.DataFrame, passage_text: dict[str, str], max_passages: int, seed: int) -> DevSet:
    """Dev queries against their positives, their mined negatives and random fill up to `max_passages`.

    A pool, not the whole corpus: evaluating at every checkpoint must cost seconds. Mined
    negatives keep it hard; the random fill keeps it from being only hard.
    """
    queries = {f"q{i}": q for i, q in enumerate(dev["query"].unique())}
    qid = {q: k for k, q in queries.items()}
    relevant: dict[str, set[str]] = {}
    pool: list[str] = []
    for row in dev.itertuples(index=False):
        relevant.setdefault(qid[row.query], set()).add(row.passage_id)
        pool.append(row.passage_id)
        pool.extend(row.negatives)
    pool = list(dict.fromkeys(pool))
    in_pool = set(pool)
    rest = [p for p in passage_text if p not in in_pool]
    fill = max(0, max_passages - len(pool))
    if fill and rest:
        picked = np.random.default_rng(seed).choice(len(rest), size=min(fill, len(rest)), replace=False)
        pool += [rest[int(i)] for i in sorted(picked)]
    return DevSet(queries=queries, corpus={p: passage_text[p] for p in pool}, relevant=relevant)


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
    The mined negatives are sorted hardest first, so `num_negatives=1` trains on the hardest one
    that survived the margin.
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
        if len(all_ids) - len(positives[row.query]) < num_negatives:
            raise ValueError(f"the corpus has fewer than {num_negatives} passages that are not positives of {row.query!r}: "
                             "lower training.num_negatives")
        while len(negatives) < num_negatives:
            candidate = all_ids[int(rng.integers(len(all_ids)))]
            if candidate not in positives[row.query] and candidate not in negatives:
                negatives.append(candidate)
                padded += 1
        for i, nid in enumerate(negatives):
            columns[f"negative_{i + 1}"].append(passage_text[nid])
    return columns, padded


def checkpoint_key(data_version: str, settings: TrainingConfig, base_model_fingerprint: str) -> str:
    """A stable folder name for one training job: the same data, config and base model -> the same key.

    Keyed this way (not by the orchestrator's run id) so a retry after a crash finds the
    checkpoints of the attempt that crashed.
    """
    payload = json.dumps({"data": data_version, "base": base_model_fingerprint, "training": asdict(settings)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def last_complete_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The highest-step `checkpoint-N` folder whose trainer state was fully written, else None.

    A process killed while saving leaves a folder without `trainer_state.json` (written last);
    resuming from it would fail, so it is skipped.
    """
    done = [p for p in Path(checkpoint_dir).glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    done = [p for p in done if p.name.removeprefix("checkpoint-").isdigit()]
    return max(done, key=lambda p: int(p.name.removeprefix("checkpoint-")), default=None)


def train_model(
    base_model: str,
    columns: dict[str, list[str]],
    settings: TrainingConfig,
    output_dir: Path,
    checkpoint_dir: Path,
    dev: DevSet | None = None,
    callbacks: list | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train from `base_model` on `columns`, resuming from `checkpoint_dir` when it holds a checkpoint.

    Saves the model (the best dev checkpoint when `dev` is given) atomically to `output_dir`,
    with the base model's max sequence length restored, then deletes the checkpoints: a finished
    job has nothing to resume. One code path for both devices: CUDA gets bf16 autocast and TF32
    matmuls; a CPU gets bf16 autocast when it has native bf16 (`settings.precision: auto`), else fp32.
    """
    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
    from sentence_transformers.sentence_transformer.losses import (
        CachedMultipleNegativesRankingLoss,
        MultipleNegativesRankingLoss,
    )
    from transformers import EarlyStoppingCallback, set_seed

    from embed_pipeline.lib.encoding import load_model
    from embed_pipeline.lib.hardware import cpu_has_native_bf16, pick_device

    device = pick_device()
    on_cuda = device == "cuda"
    ampere = on_cuda and torch.cuda.get_device_capability()[0] >= 8  # bf16 and TF32 in hardware
    bf16 = settings.precision == "bf16" or (settings.precision == "auto" and (ampere if on_cuda else cpu_has_native_bf16()))
    set_seed(settings.seed)
    model = load_model(base_model, device=device)
    serving_length = model.max_seq_length
    model.max_seq_length = settings.max_seq_length
    attention_layers = set_attention_dropout(model, settings.attention_dropout) if settings.attention_dropout >= 0 else 0
    dataset = Dataset.from_dict(columns)
    loss_options = {"scale": settings.scale, "directions": LOSS_TERMS[settings.loss_terms]}
    if settings.hardness_strength > 0:
        # EmbeddingGemma's hardness weighting: the mined negatives' logits get + strength * sg(cos).
        loss_options.update(hardness_mode="hard_negatives", hardness_strength=settings.hardness_strength)
    if settings.loss == "cached_mnrl":
        loss = CachedMultipleNegativesRankingLoss(model, mini_batch_size=settings.mini_batch_size, **loss_options)
    else:
        loss = MultipleNegativesRankingLoss(model, **loss_options)
    evaluator = None
    if dev is not None and dev.queries:
        evaluator = InformationRetrievalEvaluator(
            dev.queries, dev.corpus, dev.relevant, name="dev", main_score_function="cosine",
            accuracy_at_k=[1, 10], precision_recall_at_k=[10], map_at_k=[10], batch_size=64, write_csv=False,
        )
    checkpoint_dir = Path(checkpoint_dir)
    resume = last_complete_checkpoint(checkpoint_dir)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(checkpoint_dir),
        num_train_epochs=settings.epochs,
        per_device_train_batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        warmup_steps=float(settings.warmup_ratio),  # a float < 1 is a ratio of the total steps (transformers v5)
        seed=settings.seed,
        data_seed=settings.seed,
        bf16=bf16,  # autocast; the weights and optimizer state stay fp32
        use_cpu=not on_cuda,
        tf32=ampere or None,
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        logging_steps=settings.logging_steps,
        save_strategy="steps",
        save_steps=settings.checkpoint_steps,
        save_total_limit=2,
        eval_strategy="steps" if evaluator else "no",
        eval_steps=settings.checkpoint_steps if evaluator else None,
        load_best_model_at_end=evaluator is not None,
        metric_for_best_model=DEV_METRIC if evaluator else None,
        greater_is_better=True,
        report_to="none",
        disable_tqdm=True,
    )
    timer = _timer()
    progress = _progress_log(on_progress or log.info)
    extra = [timer, progress]
    if evaluator and settings.early_stopping_patience > 0:
        extra.append(EarlyStoppingCallback(early_stopping_patience=settings.early_stopping_patience))
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=dataset, loss=loss, evaluator=evaluator, callbacks=(callbacks or []) + extra,
    )
    resumed_from = int(resume.name.removeprefix("checkpoint-")) if resume else 0
    progress.say(
        f"training on {len(dataset)} rows ({len(columns) - 2} negatives each), loss={settings.loss} ({settings.loss_terms}), device={device}, "
        f"bf16={bf16}, attention dropout {settings.attention_dropout if attention_layers else 'as in the base model'}, "
        f"torch threads={torch.get_num_threads()}, "
        + (f"resuming from {resume.name}" if resume else "from the base model")
    )
    output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    model.max_seq_length = serving_length
    with atomic_path(Path(output_dir)) as tmp:
        model.save(str(tmp))
    best = trainer.state.best_metric if evaluator else None
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    steps = int(output.global_step)
    rows_left = int(len(dataset) * settings.epochs) - resumed_from * settings.batch_size
    rows_seen = max(0, min((steps - resumed_from) * settings.batch_size, rows_left))
    train_seconds = max(timer.total - timer.in_eval, 1e-9)
    return TrainResult(
        model_dir=Path(output_dir),
        steps=steps,
        pairs=len(dataset),
        train_seconds=train_seconds,
        pairs_per_second=rows_seen / train_seconds,
        final_loss=float(output.training_loss),
        device=device,
        resumed_from_step=resumed_from,
        best_dev_ndcg_at_10=float(best) if best is not None else None,
        dev_seconds=timer.in_eval,
        bf16=bf16,
    )


def set_attention_dropout(model, p: float) -> int:
    """Set the dropout on attention probabilities of every self-attention layer to `p` (training only).

    Why: with attention dropout on, PyTorch's scaled-dot-product attention on CPU leaves its fused
    kernel for the unfused path; measured on all-MiniLM-L6-v2 (batch 32, 256 tokens, 2 cores) a
    training step takes 2.4x longer with the base model's 0.1 than with 0 (benchmarks/README.md).
    The hidden-state dropout stays as the model has it. Covers BERT-style layers (an `nn.Dropout`
    named `dropout` in a `*SelfAttention` module) and layers holding a float `attention_dropout`;
    the saved config is untouched, and at inference dropout is off anyway. Returns the number of
    layers changed (0: an architecture this does not know, left as it is).
    """
    import torch

    changed = 0
    for module in model.modules():
        name = type(module).__name__
        if name.endswith("SelfAttention") and isinstance(getattr(module, "dropout", None), torch.nn.Dropout):
            module.dropout.p = p
            changed += 1
        elif "Attention" in name and isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = p
            changed += 1
    return changed


def _timer():
    """A callback timing training and the dev evaluations within it, so pairs/s can exclude evaluation.

    It also makes the final step evaluate and save when a dev set is in use, so the best-checkpoint
    choice includes the finished model even when `checkpoint_steps` does not divide the step count.
    """
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        def __init__(self):
            self.total = self.in_eval = 0.0
            self._start = self._eval_start = None

        def on_train_begin(self, args, state, control, **kwargs):
            self._start = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            self.total = time.perf_counter() - self._start

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= state.max_steps and args.eval_strategy != "no":
                control.should_evaluate = control.should_save = True  # the last step is a candidate too
            if control.should_evaluate:
                self._eval_start = time.perf_counter()

        def on_evaluate(self, args, state, control, **kwargs):
            if self._eval_start is not None:
                self.in_eval += time.perf_counter() - self._eval_start
                self._eval_start = None

    return Timer()


def _progress_log(say: Callable[[str], None]):
    """A callback writing one readable line per logging step (step/max, loss, dev nDCG@10, eta)."""
    from transformers import TrainerCallback

    class ProgressLog(TrainerCallback):
        def __init__(self):
            self.say = say
            self._start = None
            self._first_step = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self._start = time.perf_counter()
            self._first_step = state.global_step

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            done = state.global_step - self._first_step
            parts = [f"step {state.global_step}/{state.max_steps}"]
            if "loss" in logs:
                parts.append(f"loss {logs['loss']:.4f}")
            if DEV_METRIC in logs:
                parts.append(f"dev nDCG@10 {logs[DEV_METRIC]:.4f}")
            if done:
                per_step = (time.perf_counter() - self._start) / done
                parts.append(f"{per_step:.1f} s/step, eta {per_step * (state.max_steps - state.global_step):.0f} s")
            self.say(", ".join(parts))

    return ProgressLog()


def mlflow_callback(tracker, run_id: str):
    """A Trainer callback that sends every logged value to MLflow per step.

    Training values (loss, learning rate, grad norm) go under `train/`, dev evaluation values
    (`eval_dev_cosine_ndcg@10`, ...) under `dev/`; the tracker sanitises '@'.
    """

    from transformers import TrainerCallback

    class _MlflowCallback(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            numeric = {k: v for k, v in (logs or {}).items() if isinstance(v, (int, float))}
            named = {(f"dev/{k.removeprefix('eval_')}" if k.startswith("eval_") else f"train/{k}"): v for k, v in numeric.items()}
            if named:
                tracker.log_metrics(run_id, named, step=state.global_step)

    return _MlflowCallback()


def library_versions() -> dict[str, str]:
    """Versions of the libraries that decide a model's numbers, for MLflow tags."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "sentence-transformers", "transformers", "datasets", "accelerate", "faiss-cpu", "faiss-gpu",
                 "dagster", "mlflow", "numpy"):
        try:
            out[f"version.{name}"] = version(name)
        except PackageNotFoundError:
            continue
    return out
