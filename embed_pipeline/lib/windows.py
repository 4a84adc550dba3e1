"""Long passages read whole: overlapping token windows, and a passage scored by its best window.

A model reads `max_seq_length` tokens and cuts the rest; in papers, manuals and contracts the cut
part is often where the evidence is (an abstract's conclusion comes last). With windows on
(`index.passage_windows`), a passage longer than the model's window becomes several overlapping
windows, each encoded as its own vector under the passage's id; a passage that fits is encoded
exactly as before (same text, same vector-store key). Ranking then keeps each passage once, at
its best window's score (MaxP): `best_per_passage` does that for every dense ranking (the eval's
exact index and the served FAISS index go through `LoadedIndex.search_ids`), so what the gate
judged is what serves.

Window and stride are counted in the model's own tokens: the window is what the model reads
(`max_seq_length` less its special tokens and the passage prompt) unless `index.window_tokens`
sets a smaller one, and consecutive windows start `index.window_stride` tokens apart (default
half a window, so every sentence is read whole by at least one window). Each window after the
first repeats the passage's title, so a window keeps its context.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from embed_pipeline.lib.corpus import passage_text

# Tokenize this many passages at a time (a fast tokenizer's batch call; memory stays bounded).
TOKENIZE_BATCH = 1024


@dataclass(frozen=True)
class WindowSpec:
    """`tokens` per window (the model's text budget) and `stride` tokens between window starts."""

    tokens: int
    stride: int

    def __post_init__(self):
        if self.tokens < 8 or not 1 <= self.stride <= self.tokens:
            raise ValueError(f"window of {self.tokens} tokens with stride {self.stride}: need tokens >= 8 and 1 <= stride <= tokens")

    def as_dict(self) -> dict:
        return {"tokens": self.tokens, "stride": self.stride}

    @property
    def tag(self) -> str:
        """A short name for folders of windowed vectors (`w254s127`)."""
        return f"w{self.tokens}s{self.stride}"


def windows_for(model, index_config, prompt: str = "") -> WindowSpec | None:
    """The window spec the config asks of `model` (`index.passage_windows`, `window_tokens`,
    `window_stride`), or None: windows off, or a model without a tokenizer and a bounded
    `max_seq_length` (a static embedding reads any length whole)."""
    if not index_config.passage_windows:
        return None
    tokenizer = getattr(model, "tokenizer", None)
    max_length = getattr(model, "max_seq_length", None)
    if tokenizer is None or not max_length or not hasattr(tokenizer, "num_special_tokens_to_add") or max_length > 100_000:
        return None
    return window_spec(model, prompt, index_config.window_tokens, index_config.window_stride)


def window_spec(model, prompt: str = "", tokens: int | None = None, stride: int | None = None) -> WindowSpec:
    """The window a model reads: its `max_seq_length` less the special tokens and `prompt`'s tokens
    (capped by `tokens` when set); `stride` defaults to half the window."""
    tokenizer = model.tokenizer
    specials = tokenizer.num_special_tokens_to_add(pair=False)
    prompt_tokens = len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) if prompt else 0
    budget = int(model.max_seq_length) - specials - prompt_tokens
    size = min(budget, tokens) if tokens else budget
    return WindowSpec(size, stride or max(1, size // 2))


@dataclass
class Windows:
    """Window texts and, per window, the row of the passage it came from (rows ascend)."""

    texts: list[str]
    owner: np.ndarray
    long_passages: int
    passages: int

    @property
    def ordinal(self) -> np.ndarray:
        """Per window, its place among its passage's windows (0 for the first)."""
        if not len(self.owner):
            return np.zeros(0, dtype=np.int64)
        starts = np.flatnonzero(np.r_[True, self.owner[1:] != self.owner[:-1]])
        return np.arange(len(self.owner)) - np.repeat(starts, np.diff(np.r_[starts, len(self.owner)]))

    @property
    def count(self) -> int:
        return len(self.texts)


def _offsets(tokenizer, texts: list[str]):
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, truncation=False, verbose=False)
    return encoded["offset_mapping"]


def _spans(offsets: list[tuple[int, int]], spec: WindowSpec, budget: int) -> Iterator[tuple[int, int]]:
    """Character spans of the windows over one text's token offsets, `budget` tokens each."""
    n = len(offsets)
    start = 0
    while True:
        end = min(start + budget, n)
        yield offsets[start][0], offsets[end - 1][1]
        if end >= n:
            return
        start += min(spec.stride, budget)


def split_windows(tokenizer, titles: list[str], texts: list[str], spec: WindowSpec) -> Windows:
    """The windows of each passage (title, text): one window, `passage_text(title, text)` itself,
    when it fits in `spec.tokens`; else windows of the text, each `passage_text(title, window)`,
    the title's tokens taken from the window's budget (unless the title would leave under half a
    window: then windows of the whole passage text, title in the first only)."""
    out: list[str] = []
    owner: list[int] = []
    long_passages = 0
    for begin in range(0, len(texts), TOKENIZE_BATCH):
        batch_titles = titles[begin:begin + TOKENIZE_BATCH]
        batch_texts = texts[begin:begin + TOKENIZE_BATCH]
        whole = [passage_text(t, x) for t, x in zip(batch_titles, batch_texts, strict=True)]
        whole_offsets = _offsets(tokenizer, whole)
        for i, (full, offsets) in enumerate(zip(whole, whole_offsets, strict=True)):
            row = begin + i
            if len(offsets) <= spec.tokens:
                out.append(full)
                owner.append(row)
                continue
            long_passages += 1
            title = batch_titles[i]
            # The body's tokens are the whole text's tokens after the title and its separator (one
            # tokenizer call per batch, not per passage): spans shifted to the body's characters.
            skip = len(full) - len(batch_texts[i])
            body_offsets = [(a - skip, b - skip) for a, b in offsets if a >= skip]
            budget = spec.tokens - (len(offsets) - len(body_offsets))
            if title and body_offsets and budget >= spec.tokens // 2:
                body = batch_texts[i]
                for a, b in _spans(body_offsets, spec, budget):
                    out.append(passage_text(title, body[a:b]))
                    owner.append(row)
            else:
                for a, b in _spans(offsets, spec, spec.tokens):
                    out.append(full[a:b])
                    owner.append(row)
    return Windows(out, np.asarray(owner, dtype=np.int64), long_passages, len(texts))


def best_per_passage(ids: list[str], scores, k: int) -> tuple[list[str], list[float]]:
    """The first `k` distinct ids of one ranked row (best first) with their scores: each passage
    once, at its best window's score."""
    seen: set[str] = set()
    kept_ids, kept_scores = [], []
    for passage_id, score in zip(ids, scores, strict=False):
        if passage_id in seen:
            continue
        seen.add(passage_id)
        kept_ids.append(passage_id)
        kept_scores.append(float(score))
        if len(kept_ids) == k:
            break
    return kept_ids, kept_scores


def max_pool(window_scores: np.ndarray, owner: np.ndarray, passages: int) -> np.ndarray:
    """Per passage, the best score of its windows: (queries, windows) -> (queries, passages).
    `owner` ascends (windows of one passage are adjacent), as `split_windows` writes them."""
    starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
    pooled = np.maximum.reduceat(window_scores, starts, axis=1)
    if len(starts) != passages:
        raise ValueError(f"{len(starts)} passages own windows but {passages} were split")
    return pooled


def with_window_texts(triples, dataset, tokenizer, spec: WindowSpec):
    """Training rows that read the window that matters: for each long passage among the positives
    and negatives of `triples` (mined with windows: `positive_window`, `negative_windows`), its
    best window's text as `positive_text` (unless the row brought its own) and in
    `negative_texts` ("" where the passage fits the window and is read whole anyway). Only the
    passages named by the rows are read from the dataset, by id."""
    import pandas as pd

    if "positive_window" not in triples:  # no passage was longer than the window: every text is read whole
        return triples
    ids = list(dict.fromkeys([*triples["passage_id"], *(n for row in triples["negatives"] for n in row)]))
    if not ids:
        return triples.assign(negative_texts=[[] for _ in range(len(triples))])
    passages = dataset.lookup(ids, ["title", "text"])
    split = split_windows(tokenizer, [str(t or "") for t in passages["title"]], [str(t or "") for t in passages["text"]], spec)
    windows: dict[str, list[str]] = {}
    for pid, text in zip(passages.index[split.owner], split.texts, strict=True):
        windows.setdefault(pid, []).append(text)

    def text_of(pid: str, ordinal: int) -> str:
        found = windows.get(pid, [])
        return found[min(int(ordinal), len(found) - 1)] if len(found) > 1 else ""

    own = triples["positive_text"] if "positive_text" in triples else pd.Series("", index=triples.index)
    own = own.where(own.map(lambda v: isinstance(v, str) and bool(v)), "")
    best_positive = [text_of(p, w) for p, w in zip(triples["passage_id"], triples["positive_window"], strict=True)]
    return triples.assign(
        positive_text=[mine or best for mine, best in zip(own, best_positive, strict=True)],
        negative_texts=[[text_of(n, w) for n, w in zip(negs, wins, strict=True)]
                        for negs, wins in zip(triples["negatives"], triples["negative_windows"], strict=True)])
