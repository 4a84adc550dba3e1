"""The forgetting guard: what a domain fine-tune cost the model on general-domain text.

A contrastive fine-tune on one domain can lose what the base model knew elsewhere (the reason
WiSE-FT and LM-Cocktail exist; `training.base_merge` is this project's remedy). The eval report
scores a general-domain reference set, named by `general_reference` in the config, for the base
model, the champion and the candidate, and the promotion gate refuses a candidate whose score
falls more than `gate.max_general_drop` below the base model's.

The reference set is in the STS Benchmark layout: a tab-separated file, one sentence pair a line,
columns genre, file, year, id, score (0-5: 0 unrelated, 5 the same meaning), sentence 1,
sentence 2 (further columns are ignored; no quoting: the STS files hold bare quote marks). The
score is the Spearman rank correlation between the gold scores and the cosine of the two
sentences' embeddings (sentence-transformers' `EmbeddingSimilarityEvaluator` main score):
rank-based, so a model whose cosines are all shifted or squeezed loses nothing, only a model that
orders the pairs differently from people does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

# (model ref, texts) -> L2-normalised vectors, one row per text.
EncodeTexts = Callable[[str, list[str]], np.ndarray]


class ReferenceSetError(ValueError):
    """The general-domain reference file is missing or not in the STS Benchmark layout."""


@dataclass(frozen=True)
class ReferenceSet:
    """Sentence pairs with gold similarity scores (0-5)."""

    path: str
    pairs: pd.DataFrame  # sentence1, sentence2, score


def read_sts(path: str | Path) -> ReferenceSet:
    """Read an STS Benchmark-layout file (module docstring); every line must parse, with a score in 0-5."""
    path = Path(path)
    if not path.is_file():
        raise ReferenceSetError(f"general_reference: {path} does not exist")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        cells = line.split("\t")
        try:
            score = float(cells[4])
        except (IndexError, ValueError):
            raise ReferenceSetError(f"{path}: line {number}: not `genre<TAB>file<TAB>year<TAB>id<TAB>score<TAB>"
                                    "sentence1<TAB>sentence2` (STS Benchmark layout)") from None
        if len(cells) < 7 or not cells[5].strip() or not cells[6].strip() or not 0 <= score <= 5:
            raise ReferenceSetError(f"{path}: line {number}: needs a score in 0-5 and two non-empty sentences")
        rows.append((cells[5].strip(), cells[6].strip(), score))
    if len(rows) < 10:
        raise ReferenceSetError(f"{path}: {len(rows)} pairs: a rank correlation needs at least 10")
    return ReferenceSet(str(path), pd.DataFrame(rows, columns=["sentence1", "sentence2", "score"]))


def spearman_of_cosine(first: np.ndarray, second: np.ndarray, gold) -> float:
    """Spearman correlation between the gold scores and the cosine of row-aligned L2-normalised vectors."""
    cosine = np.sum(np.asarray(first, dtype=np.float64) * np.asarray(second, dtype=np.float64), axis=1)
    return spearman(cosine, gold)


def spearman(a, b) -> float:
    """Spearman rank correlation (ties take their average rank): Pearson's r of the two rank vectors."""
    ranks_a = pd.Series(np.asarray(a, dtype=np.float64)).rank().to_numpy()
    ranks_b = pd.Series(np.asarray(b, dtype=np.float64)).rank().to_numpy()
    if ranks_a.std() == 0 or ranks_b.std() == 0:
        return 0.0
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])


def general_score(reference: ReferenceSet, model_ref: str, encode: EncodeTexts) -> float:
    """One model's Spearman of cosine on the reference set (each distinct sentence encoded once)."""
    sentences = list(dict.fromkeys([*reference.pairs["sentence1"], *reference.pairs["sentence2"]]))
    vectors = encode(model_ref, sentences)
    row = {s: i for i, s in enumerate(sentences)}
    first = vectors[[row[s] for s in reference.pairs["sentence1"]]]
    second = vectors[[row[s] for s in reference.pairs["sentence2"]]]
    return round(spearman_of_cosine(first, second, reference.pairs["score"]), 6)


def encode_sentences(config, model_ref: str, texts: list[str]) -> np.ndarray:
    """`texts` encoded by `model_ref` as the pipeline encodes (`config`: a `PipelineConfig`; its batch
    size, threads, precision, and the query prompt on both sides: STS pairs are symmetric, and
    E5-style models ask for their query prefix on symmetric tasks)."""
    from embed_pipeline.lib.encoding import encode, load_model

    model = load_model(model_ref, threads=config.index.encode_threads)
    return encode(model, texts, config.encode_batch_size, config.query_prompt, progress=False,
                  precision=config.index.encode_precision)


def general_block(reference: ReferenceSet | None, models: dict[str, str | None], encode: EncodeTexts) -> dict:
    """The eval report's `general` entry: the reference set's name and size, and the base model's,
    champion's and candidate's scores (`models` maps those three names to model refs; a champion of
    None is the base model standing in). Without a reference set: `available: false` and why."""
    if reference is None:
        return {"available": False, "reason": "no general_reference in the config: the forgetting guard is off"}
    scores: dict[str, float] = {}
    for name in ("base", "champion", "candidate"):
        ref = models.get(name)
        scores[name] = scores["base"] if ref is None and name == "champion" else general_score(reference, ref, encode)
    return {"available": True, "set": reference.path, "pairs": int(len(reference.pairs)), "metric": "spearman_cosine",
            **scores, "candidate_minus_base": round(scores["candidate"] - scores["base"], 6)}
