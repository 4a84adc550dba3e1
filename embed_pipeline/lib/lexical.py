"""A BM25 index over a corpus snapshot (bm25s + PyStemmer), saved and loaded atomically.

BM25 is the baseline every retrieval team runs and the second half of hybrid retrieval. Text is
lowercased, split into word tokens of two or more characters, stripped of the language's
stopwords and reduced to Snowball stems, so "running shoes" matches "runner's shoe". Stemming is
not cosmetic: on BEIR SciFact, bm25s gives recall@10 0.819 / nDCG@10 0.686 with the English
Snowball stemmer and 0.774 / 0.662 without it.

Scores are Lucene-style BM25 (`bm25s`'s default, what Elasticsearch and Anserini compute) with
k1 = 1.5 (how fast repeated occurrences of a term saturate: the tenth "cell" in an abstract adds
little over the second) and b = 0.75 (how much a long passage is penalised relative to the mean
length; 0 = not at all, 1 = fully). These are the settings behind the reference figures above;
SciFact abstracts are one to two hundred words, the range the defaults were tuned on.

bm25s precomputes every (term, passage) score into a sparse matrix at build time, so a query is a
sum of a few sparse columns: no per-query idf or length work.

An index on disk is one folder: bm25s's own files (score matrix, vocabulary, parameters),
`ids.parquet` (row -> passage id) and `lexical.json` (analyzer settings, size, library version).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from embed_pipeline.lib.io import atomic_path, read_json, write_json

IDS_FILE = "ids.parquet"
META_FILE = "lexical.json"
DEFAULT_K1 = 1.5
DEFAULT_B = 0.75


def languages() -> list[str]:
    """The languages `analyze` can work in: a Snowball stemmer PyStemmer ships (its own list) for which
    bm25s also has a stopword list."""
    import Stemmer

    return [language for language in sorted(Stemmer.algorithms()) if _has_stopwords(language)]


def check_language(language: str) -> None:
    """Raise ValueError naming the choices when `analyze` cannot work in `language` (a config check at
    load: the alternative is a KeyError from the stemmer when the index is built, after training)."""
    import Stemmer

    if language not in Stemmer.algorithms() or not _has_stopwords(language):
        raise ValueError(f"no Snowball stemmer with bm25s stopwords for {language!r}; choose one of {', '.join(languages())}")


@functools.cache
def _has_stopwords(language: str) -> bool:
    """Whether bm25s has a stopword list for `language` (asked of bm25s itself: it raises ValueError
    for a name it lacks, and keeps no public list)."""
    import bm25s

    try:
        bm25s.tokenize(["probe"], stopwords=language, show_progress=False)
    except ValueError:
        return False
    return True


def _stemmer(language: str):
    import Stemmer

    return Stemmer.Stemmer(language)


def analyze(texts: list[str], language: str = "english", return_ids: bool = False):
    """Lowercased, stopword-free Snowball stems of each text (bm25s's tokenizer).

    With `return_ids`, bm25s's `Tokenized` (stem ids per text and the stem -> id vocabulary),
    which `bm25s.BM25.index` takes directly; otherwise one list of stem strings per text.
    """
    import bm25s

    return bm25s.tokenize(list(texts), stopwords=language, stemmer=_stemmer(language), return_ids=return_ids,
                          show_progress=False)


@dataclass
class LexicalIndex:
    """A BM25 index: `retriever` (a `bm25s.BM25`) plus the passage id of each of its rows."""

    retriever: object
    passage_ids: np.ndarray
    language: str

    @classmethod
    def build(cls, passage_ids: list[str], texts: list[str], language: str = "english",
              k1: float = DEFAULT_K1, b: float = DEFAULT_B) -> LexicalIndex:
        """Index `texts` (row i is passage `passage_ids[i]`) in `language` (a Snowball stemmer name,
        which bm25s also knows stopwords for: english, german, french, ...)."""
        import bm25s

        if len(passage_ids) != len(texts):
            raise ValueError(f"{len(passage_ids)} passage ids but {len(texts)} texts")
        if not passage_ids:
            raise ValueError("cannot build a lexical index over an empty corpus")
        retriever = bm25s.BM25(k1=k1, b=b)
        retriever.index(analyze(texts, language, return_ids=True), show_progress=False)
        return cls(retriever, np.asarray(passage_ids, dtype=object), language)

    @classmethod
    def build_stream(cls, batches, language: str = "english", k1: float = DEFAULT_K1,
                     b: float = DEFAULT_B) -> LexicalIndex:
        """The same index as `build`, from (passage ids, texts) batches, in memory the size of the index.

        `build` hands bm25s every document's token list at once (Python lists of ints: gigabytes
        at a million passages). Here, pass 1 analyses each batch and reduces it to its distinct
        (passage, stem, count) triples, numbered in one growing vocabulary, and spills them to a
        temporary file; only the document frequency of each stem and the length of each passage
        stay in memory. Pass 2 reads the batches back and writes each triple's Lucene BM25 weight
        straight into its place in bm25s's column-per-stem score matrix (allocated once, at its
        final size), as bm25s computes it: idf = ln(1 + (N - df + 0.5) / (df + 0.5)), tf part =
        tf / (tf + k1 (1 - b + b dl / avgdl)). Peak memory: the score matrix plus one batch.
        """
        import itertools
        import tempfile

        import bm25s

        vocab: dict[str, int] = {}
        df = np.zeros(0, dtype=np.int64)
        lengths, ids, spilled = [], [], []
        offset = 0
        with tempfile.TemporaryDirectory(prefix="bm25-build-") as scratch:
            for batch_ids, texts in batches:
                if not len(batch_ids):
                    continue
                tokens = analyze(texts, language, return_ids=True)
                local = np.empty(len(tokens.vocab), dtype=np.int64)
                for stem, local_id in tokens.vocab.items():
                    local[local_id] = vocab.setdefault(stem, len(vocab))
                lens = np.fromiter((len(doc) for doc in tokens.ids), dtype=np.int64, count=len(tokens.ids))
                flat = np.fromiter(itertools.chain.from_iterable(tokens.ids), dtype=np.int64, count=int(lens.sum()))
                pairs = (np.repeat(np.arange(offset, offset + len(lens), dtype=np.int64), lens) << 32) | local[flat]
                unique, tf = np.unique(pairs, return_counts=True)  # sorted by passage, then stem
                term = (unique & 0xFFFFFFFF).astype(np.int32)
                if len(vocab) > len(df):
                    df = np.concatenate([df, np.zeros(len(vocab) - len(df), np.int64)])
                df += np.bincount(term, minlength=len(df))
                path = Path(scratch) / f"{len(spilled):06d}.npz"
                np.savez(path, doc=(unique >> 32).astype(np.int32), term=term, tf=tf.astype(np.float32))
                spilled.append(path)
                lengths.append(lens.astype(np.float32))
                ids += list(batch_ids)
                offset += len(lens)
            if not ids:
                raise ValueError("cannot build a lexical index over an empty corpus")
            dl = np.concatenate(lengths)
            n_docs, n_vocab = len(dl), len(vocab)
            idf = np.log(1 + (n_docs - df + 0.5) / (df + 0.5)).astype(np.float32)
            norm = (k1 * (1 - b + b * dl / max(float(dl.mean()), 1e-9))).astype(np.float32)
            indptr = np.concatenate([[0], np.cumsum(df)]).astype(np.int64)
            data = np.empty(int(indptr[-1]), dtype=np.float32)
            indices = np.empty(int(indptr[-1]), dtype=np.int32)
            cursor = indptr[:-1].copy()  # where each stem's next passage goes
            for path in spilled:  # passages in increasing order, so each column ends up sorted
                with np.load(path) as part:
                    doc, term, tf = part["doc"], part["term"], part["tf"]
                order = np.argsort(term, kind="stable")
                term_sorted = term[order]
                stems, first, count = np.unique(term_sorted, return_index=True, return_counts=True)
                within = np.arange(len(term_sorted)) - np.repeat(first, count)
                where = cursor[term_sorted] + within
                data[where] = (idf[term] * tf / (tf + norm[doc]))[order]
                indices[where] = doc[order]
                cursor[stems] += count
        # bm25s's index() gives the empty token a column of its own (no passage has it): the same here.
        if vocab.setdefault("", len(vocab)) == n_vocab:
            indptr = np.append(indptr, indptr[-1])
        retriever = bm25s.BM25(k1=k1, b=b)
        retriever.scores = {"data": data, "indices": indices, "indptr": indptr, "num_docs": n_docs}
        retriever.vocab_dict = vocab
        retriever.unique_token_ids_set = set(vocab.values())
        retriever.nonoccurrence_array = None  # Lucene BM25 scores nothing for absent terms (BM25L/BM25+ would)
        return cls(retriever, np.asarray(ids, dtype=object), language)

    @property
    def size(self) -> int:
        return len(self.passage_ids)

    def search(self, queries: list[str], k: int) -> tuple[list[list[str]], np.ndarray]:
        """Top-k passage ids per query and their BM25 scores (float32, shape (queries, k)).

        `k` is clipped to the corpus size. Every query gets exactly k results, best first; when
        fewer than k passages share a term with the query, the rest are filled with score-0
        passages (lowest row first), and a query with no indexed term (empty, all stopwords,
        unseen words) gets k score-0 results rather than an error. Equal scores rank by row, so a
        saved and reloaded index returns the same list.
        """
        k = min(int(k), self.size)
        vocab = self.retriever.vocab_dict
        ids: list[list[str]] = []
        scores = np.zeros((len(queries), k), dtype=np.float32)
        for i, stems in enumerate(analyze(queries, self.language)):
            token_ids = [vocab[s] for s in stems if s and s in vocab]
            row_scores = (self.retriever.get_scores_from_ids(token_ids) if token_ids
                          else np.zeros(self.size, dtype=np.float32))
            top = np.argpartition(-row_scores, k - 1)[:k] if k < self.size else np.arange(self.size)
            top = top[np.lexsort((top, -row_scores[top]))]
            ids.append(self.passage_ids[top].tolist())
            scores[i] = row_scores[top]
        return ids, scores

    def save(self, folder: Path) -> Path:
        """Write the index folder atomically: into a hidden temporary sibling, read back, renamed.

        A crash mid-write leaves `folder` as it was (only a `.<name>.tmp-*` sibling behind), so a
        reader never loads a half-written index.
        """
        import bm25s

        folder = Path(folder)
        with atomic_path(folder) as tmp:
            tmp.mkdir(parents=True)
            self.retriever.save(str(tmp), show_progress=False)
            pd.DataFrame({"passage_id": self.passage_ids.astype(str)}).to_parquet(tmp / IDS_FILE, index=False)
            write_json({"size": self.size, "language": self.language, "stemmer": f"snowball-{self.language}",
                        "stopwords": self.language, "k1": self.retriever.k1, "b": self.retriever.b,
                        "method": self.retriever.method, "bm25s_version": bm25s.__version__}, tmp / META_FILE)
            LexicalIndex.load(tmp)
        return folder

    @classmethod
    def load(cls, folder: Path, mmap: bool = False) -> LexicalIndex:
        """Read an index folder written by `save`; `mmap` maps the score matrix instead of reading it
        (for corpora whose index should not be copied into every process's memory)."""
        import bm25s

        folder = Path(folder)
        meta = read_json(folder / META_FILE)
        retriever = bm25s.BM25.load(str(folder), mmap=mmap, show_progress=False)
        ids = pd.read_parquet(folder / IDS_FILE)["passage_id"].to_numpy(dtype=object)
        if len(ids) != retriever.scores["num_docs"] or len(ids) != meta["size"]:
            raise ValueError(f"{folder}: id map has {len(ids)} rows but the index holds "
                             f"{retriever.scores['num_docs']} passages (lexical.json says {meta['size']})")
        return cls(retriever, ids, meta["language"])
