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

Model selection: a dev split is carved from the *training* queries (never the eval set; whole
groups of near-duplicate queries and queries sharing a positive); the trainer evaluates nDCG@10
on it at every checkpoint against a pool of realistic distractors, and keeps, and stops early,
by lib/dev_selection.py's noise-aware rule: the kept checkpoint is the latest one not worse than
the best beyond the paired-bootstrap noise of the dev queries, and training stops only after
`early_stopping_patience` evaluations each worse beyond that noise. The kept weights are saved.

Several processes (DDP): `train_model` is also what each rank runs under torchrun
(lib/distributed_training.py launches it). With `world_size` N, the sampler still draws batches of
`batch_size` rows (free of duplicates, in the same seeded order as one process) and each rank
takes its `batch_size / N` slice (accelerate's `split_batches`); the loss gathers every rank's
embeddings (`gather_across_devices=True`), so each anchor sees the same `batch_size` in-batch
negatives it would in one process. An incomplete last batch is dropped (a rank would wait in the
gather for rows that never come). Rank 0 alone saves the model and deletes checkpoints.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from embed_pipeline.lib.config import LOSS_TERMS, TrainingConfig
from embed_pipeline.lib.dev_selection import CheckpointJudge, selection_score
from embed_pipeline.lib.io import atomic_path
from embed_pipeline.lib.training_data import DevSet

log = logging.getLogger(__name__)

DEV_METRIC = "eval_dev_cosine_ndcg@10"
SELECTION_METRIC = "eval_dev_kept_step"  # the step when a checkpoint is within noise of the best, else -1


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
    processes: int = 1  # DDP processes that trained together (1: a plain single-process run)
    merged_dev_ndcg_at_10: float | None = None  # the saved weight average's dev score (training.base_merge > 0)

    @property
    def precision(self) -> str:
        """The precision label shown in metadata and MLflow tags."""
        return "bf16 autocast" if self.bf16 else "fp32"


def last_complete_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The highest-step `checkpoint-N` folder whose trainer state was fully written, else None.

    A process killed while saving leaves a folder without `trainer_state.json` (written last);
    resuming from it would fail, so it is skipped.
    """
    done = [p for p in Path(checkpoint_dir).glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    done = [p for p in done if p.name.removeprefix("checkpoint-").isdigit()]
    return max(done, key=lambda p: int(p.name.removeprefix("checkpoint-")), default=None)


def check_batch_split(batch_size: int, processes: int) -> None:
    """Each of `processes` ranks takes an equal slice of every `batch_size`-row batch: it must divide evenly."""
    if batch_size % processes:
        raise ValueError(f"training.batch_size {batch_size} must be a multiple of training.processes {processes}: "
                         "each process takes an equal slice of every batch")


def train_model(
    base_model: str,
    columns: dict[str, list[str]],
    settings: TrainingConfig,
    output_dir: Path,
    checkpoint_dir: Path,
    dev: DevSet | None = None,
    callbacks: list | None = None,
    on_progress: Callable[[str], None] | None = None,
    *,
    world_size: int = 1,
    threads: int = 0,
) -> TrainResult:
    """Train from `base_model` on `columns`, resuming from `checkpoint_dir` when it holds a checkpoint.

    Saves the model (the best dev checkpoint when `dev` is given) atomically to `output_dir`,
    with the base model's max sequence length restored, then deletes the checkpoints: a finished
    job has nothing to resume. One code path for both devices: CUDA gets bf16 autocast and TF32
    matmuls; a CPU gets bf16 autocast when it has native bf16 (`settings.precision: auto`), else fp32.

    `world_size` > 1 only under torchrun (every rank calls this with the same arguments; see the
    module docstring); `threads` is torch's CPU thread count for this process (0 = every core it
    may use; a rank gets its share so ranks do not oversubscribe the cores).
    """
    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer.losses import (
        CachedMultipleNegativesRankingLoss,
        MultipleNegativesRankingLoss,
    )
    from transformers import EarlyStoppingCallback, PrinterCallback, set_seed

    from embed_pipeline.lib.encoding import load_model
    from embed_pipeline.lib.hardware import cpu_has_native_bf16, pick_device

    device = pick_device()
    on_cuda = device == "cuda"
    ampere = on_cuda and torch.cuda.get_device_capability()[0] >= 8  # bf16 and TF32 in hardware
    bf16 = settings.precision == "bf16" or (settings.precision == "auto" and (ampere if on_cuda else cpu_has_native_bf16()))
    set_seed(settings.seed)
    model = load_model(base_model, device=device, threads=threads)
    serving_length = model.max_seq_length
    model.max_seq_length = settings.max_seq_length
    attention_layers = set_attention_dropout(model, settings.attention_dropout) if settings.attention_dropout >= 0 else 0
    dataset = Dataset.from_dict(columns)
    loss_options = {"scale": settings.scale, "directions": LOSS_TERMS[settings.loss_terms]}
    if settings.hardness_strength > 0:
        # EmbeddingGemma's hardness weighting: the mined negatives' logits get + strength * sg(cos).
        loss_options.update(hardness_mode="hard_negatives", hardness_strength=settings.hardness_strength)
    if world_size > 1:
        loss_options["gather_across_devices"] = True  # in-batch negatives from every rank, with gradients
    check_batch_split(settings.batch_size, world_size)
    if settings.loss == "cached_mnrl":
        loss = CachedMultipleNegativesRankingLoss(model, mini_batch_size=settings.mini_batch_size, **loss_options)
    else:
        loss = MultipleNegativesRankingLoss(model, **loss_options)
    evaluator = None
    if dev is not None and dev.queries:
        evaluator = dev_evaluator(dev, CheckpointJudge(settings.dev_confidence, seed=settings.seed))
    checkpoint_dir = Path(checkpoint_dir)
    resume = last_complete_checkpoint(checkpoint_dir)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(checkpoint_dir),
        num_train_epochs=settings.epochs,
        per_device_train_batch_size=settings.batch_size,  # with N processes: the batch N slices are cut from
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
        metric_for_best_model=SELECTION_METRIC if evaluator else None,  # lib/dev_selection.py: noise-aware choice
        greater_is_better=True,
        report_to="none",
        disable_tqdm=True,
        dataloader_drop_last=world_size > 1,
        accelerator_config={"split_batches": world_size > 1},
        ddp_backend=("nccl" if on_cuda else "gloo") if world_size > 1 else None,
    )
    timer = _timer()
    progress = _progress_log(on_progress or log.info)
    extra = [timer, progress]
    if evaluator and settings.early_stopping_patience > 0:
        extra.append(EarlyStoppingCallback(early_stopping_patience=settings.early_stopping_patience))
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=dataset, loss=loss, evaluator=evaluator, callbacks=(callbacks or []) + extra,
    )
    # The trainer's own printer writes each raw log dict ({'loss': ...}); `progress` says the same in one line.
    trainer.remove_callback(PrinterCallback)
    resumed_from = int(resume.name.removeprefix("checkpoint-")) if resume else 0
    progress.say(
        f"training on {len(dataset)} rows ({len(columns) - 2} negatives each), loss={settings.loss} ({settings.loss_terms}), device={device}, "
        f"bf16={bf16}, attention dropout {settings.attention_dropout if attention_layers else 'as in the base model'}, "
        f"torch threads={torch.get_num_threads()}, "
        + (f"{world_size} processes x {settings.batch_size // world_size} rows of each {settings.batch_size}-row batch, "
           if world_size > 1 else "")
        + (f"resuming from {resume.name}" if resume else "from the base model")
    )
    output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    trainer.accelerator.wait_for_everyone()  # every rank has loaded the best checkpoint before it is deleted
    best = kept_dev_score(trainer.state) if evaluator else None
    merged_dev = None
    if trainer.is_world_process_zero():
        if settings.base_merge > 0:  # before the serving length is restored: scored like the checkpoints
            tensors = merge_with_base(model, load_model(base_model, device="cpu", threads=threads), settings.base_merge)
            merged_dev = float(evaluator.scores(model).mean()) if evaluator else None
            scores = f"; dev nDCG@10 {best:.4f} tuned, {merged_dev:.4f} averaged" if best is not None and merged_dev is not None else ""
            progress.say(f"averaged {tensors} weight tensors with the base model's ({settings.base_merge:.0%} base){scores}")
        model.max_seq_length = serving_length
        with atomic_path(Path(output_dir)) as tmp:
            model.save(str(tmp))
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
        processes=world_size,
        merged_dev_ndcg_at_10=merged_dev,
    )


def dev_evaluator(dev: DevSet, judge: CheckpointJudge):
    """The trainer's dev evaluator: nDCG@10, recall@10 and MRR@10 of the dev queries against the dev
    pool (cosine, exact), per query, judged by `judge` (lib/dev_selection.py).

    Returns `dev_cosine_ndcg@10` (what the progress line and MLflow show), `dev_cosine_recall@10`,
    `dev_cosine_mrr@10` and `dev_kept_step` (`selection_score`: what the trainer maximises to keep
    a checkpoint and to stop early). `scores(model)` gives the per-query nDCG@10 without judging
    (the weight-averaged model's dev score). Under DDP the trainer runs it on rank 0 and broadcasts
    the numbers, so every rank makes the same choice.
    """
    import numpy as np
    from sentence_transformers.base.evaluation.evaluator import BaseEvaluator

    from embed_pipeline.lib.metrics import mrr_at_k, ndcg_at_k, recall_at_k

    qids, pids = list(dev.queries), list(dev.corpus)

    class DevEvaluator(BaseEvaluator):
        def __init__(self):
            super().__init__()
            self.primary_metric = "dev_kept_step"
            self.judge = judge

        def rankings(self, model) -> list[list[str]]:
            queries = model.encode([dev.queries[q] for q in qids], batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
            passages = model.encode([dev.corpus[p] for p in pids], batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
            similarity = queries.astype(np.float32) @ passages.astype(np.float32).T
            top = np.argsort(-similarity, axis=1, kind="stable")[:, :10]
            return [[pids[j] for j in row] for row in top]

        def scores(self, model) -> np.ndarray:
            return np.array([ndcg_at_k(r, dev.relevant[q], 10) for q, r in zip(qids, self.rankings(model), strict=True)])

        def __call__(self, model, output_path=None, epoch=-1, steps=-1) -> dict[str, float]:
            ranked = dict(zip(qids, self.rankings(model), strict=True))
            ndcg = np.array([ndcg_at_k(ranked[q], dev.relevant[q], 10) for q in qids])
            verdict = self.judge.judge(int(steps), ndcg)
            return {"dev_cosine_ndcg@10": float(ndcg.mean()),
                    "dev_cosine_recall@10": float(np.mean([recall_at_k(ranked[q], dev.relevant[q], 10) for q in qids])),
                    "dev_cosine_mrr@10": float(np.mean([mrr_at_k(ranked[q], dev.relevant[q], 10) for q in qids])),
                    "dev_kept_step": float(selection_score(verdict))}

    return DevEvaluator()


def kept_dev_score(state) -> float | None:
    """The dev nDCG@10 of the checkpoint the trainer kept (`state.best_model_checkpoint`), from its log history."""
    if not state.best_model_checkpoint:
        return None
    step = int(str(state.best_model_checkpoint).rsplit("-", 1)[-1])
    return next((float(e[DEV_METRIC]) for e in reversed(state.log_history) if e.get("step") == step and DEV_METRIC in e), None)


def merge_with_base(model, base, base_share: float) -> int:
    """Replace every floating-point weight of `model` with `(1 - base_share) * tuned + base_share * base`.

    Weight-space averaging of a fine-tuned model with the model it started from (WiSE-FT, Wortsman
    et al. 2022; FlagEmbedding's LM-Cocktail): the tuned direction keeps most of its in-domain gain
    while the average keeps what the base model knew about queries unlike the training ones. On the
    bundled demo, where the training queries (docstrings, written questions) differ from the eval's
    search-box queries, a 0.5 average lifted recall@10 on every seed and narrowed the spread across
    seeds (data/README.md). Both models must share one architecture; integer buffers (position ids)
    are kept; tied weights (one tensor under two names) are averaged once. Returns the number of
    tensors averaged.
    """
    import torch

    base_weights = base.state_dict()
    tuned = model.state_dict()
    if tuned.keys() != base_weights.keys():
        raise ValueError(f"cannot average with the base model: their weights differ ({len(tuned)} vs {len(base_weights)} tensors)")
    merged, seen = 0, set()
    with torch.no_grad():
        for name, weight in tuned.items():
            other = base_weights[name]
            if other.shape != weight.shape:
                raise ValueError(f"cannot average with the base model: {name} is {tuple(weight.shape)} here, {tuple(other.shape)} there")
            if weight.is_floating_point() and weight.data_ptr() not in seen:  # a tied tensor is listed under each name: average it once
                seen.add(weight.data_ptr())
                weight.mul_(1 - base_share).add_(other.to(weight.device, weight.dtype), alpha=base_share)
                merged += 1
    return merged


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
