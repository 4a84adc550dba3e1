#!/usr/bin/env python3
"""Build the BEIR query/qrels files of the code-search demo and validate them.

Sources:
  queries_src/eval.txt         hand-written eval queries, `query => corpus_id[, corpus_id]`
                               -> eval/queries.jsonl (`metadata.segment`), eval/qrels/test.tsv
  queries_src/logs.txt         hand-written search-box queries with their true target, read
                               only by build_search_logs.py (the click simulator)
  queries_src/questions.txt    hand-written training questions, same format
  queries_src/docstrings.jsonl the docstring summaries build_corpus.py removed from the code
                               -> curated/queries.jsonl, curated/qrels/train.tsv (questions first)

Curated pairs are the hand-written questions plus what a team has for free: each documented
function's docstring summary is a query for its (docstring-free) code. A summary shared by several functions is one query with all
of them as positives. Left out, each counted: summaries under `MIN_WORDS` words, and every
summary whose functions include an eval target (so no eval target is ever a training target).

Checks (exit non-zero on any failure): every qrel id is in corpus.jsonl; no eval target is a
curated or log target; no query text repeats across the sets (lowercased, whitespace collapsed);
no eval query has a word-bigram Jaccard >= 0.8 with a curated or log query (the pipeline's
`leakage` rule: `\\w+` tokens of the lowercased text, a query of one or two words is its own
single shingle); minimum sizes (curated >= 1000, eval >= 200, logs >= 100).
Run:  python data/build_queries.py
"""
from __future__ import annotations

import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

from build_corpus import family_of

DATA = Path(__file__).resolve().parent
SRC = DATA / "queries_src"
MIN_WORDS = 3
MAX_CHARS = 300
NEAR_DUPLICATE = 0.8
MINIMUMS = {"curated": 1000, "eval": 200, "logs": 100}
_WORD = re.compile(r"\w+")


def norm(text: str) -> str:
    return " ".join(text.lower().split())


def shingles(text: str) -> frozenset[str]:
    words = _WORD.findall(norm(text))
    if len(words) <= 2:
        return frozenset([" ".join(words)]) if words else frozenset()
    return frozenset(" ".join(words[i:i + 2]) for i in range(len(words) - 1))


def read_source(name: str) -> list[tuple[str, list[str]]]:
    rows = []
    for lineno, line in enumerate((SRC / f"{name}.txt").read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if " => " not in line:
            raise SystemExit(f"{name}.txt:{lineno}: missing ' => '")
        text, ids = line.rsplit(" => ", 1)
        rows.append((text.strip(), [i.strip() for i in ids.split(",") if i.strip()]))
    return rows


def shorten(text: str, limit: int = MAX_CHARS) -> str:
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0]


def curated_from_docstrings(eval_targets: set[str]) -> tuple[list[tuple[str, list[str]]], Counter]:
    by_text: dict[str, list[str]] = defaultdict(list)
    for line in (SRC / "docstrings.jsonl").open(encoding="utf-8"):
        row = json.loads(line)
        by_text[shorten(row["summary"])].append(row["_id"])
    dropped: Counter = Counter()
    rows = []
    for text, ids in sorted(by_text.items(), key=lambda kv: kv[1][0]):
        if len(text.split()) < MIN_WORDS:
            dropped["too short"] += 1
        elif eval_targets.intersection(ids):
            dropped["describes an eval target"] += 1
        else:
            rows.append((text, sorted(ids)))
    return rows, dropped


def validate(sets: dict[str, list[tuple[str, list[str]]]], corpus_ids: set[str]) -> list[str]:
    errors = []
    for name, rows in sets.items():
        if len(rows) < MINIMUMS[name]:
            errors.append(f"{name}: {len(rows)} queries < {MINIMUMS[name]}")
        errors += [f"{name}: unknown corpus id {i!r} for query {text!r}"
                   for text, ids in rows for i in ids if i not in corpus_ids]
    eval_targets = {i for _, ids in sets["eval"] for i in ids}
    for name in ("curated", "logs"):
        errors += [f"{name} query {text!r} targets eval passage {i}"
                   for text, ids in sets[name] for i in ids if i in eval_targets]
    seen: dict[str, str] = {}
    for name, rows in sets.items():
        for text, _ in rows:
            if norm(text) in seen:
                errors.append(f"query text {text!r} repeats (in {name} and {seen[norm(text)]})")
            seen[norm(text)] = name
    index: dict[str, list[int]] = defaultdict(list)
    train = [t for n in ("curated", "logs") for t, _ in sets[n]]
    train_shingles = [shingles(t) for t in train]
    for j, s in enumerate(train_shingles):
        for g in s:
            index[g].append(j)
    for text, _ in sets["eval"]:
        s = shingles(text)
        for j in sorted({j for g in s for j in index[g]}):
            jac = len(s & train_shingles[j]) / len(s | train_shingles[j])
            if jac >= NEAR_DUPLICATE:
                errors.append(f"eval query {text!r} near-duplicates training query {train[j]!r} (jaccard {jac:.2f})")
    return errors


def write_beir(rows, prefix: str, out_dir: Path, qrels_name: str, with_segment: bool) -> None:
    (out_dir / "qrels").mkdir(parents=True, exist_ok=True)
    with (out_dir / "queries.jsonl").open("w", encoding="utf-8") as fq, \
            (out_dir / "qrels" / qrels_name).open("w", encoding="utf-8") as fr:
        fr.write("query-id\tcorpus-id\tscore\n")
        for n, (text, ids) in enumerate(rows, 1):
            qid = f"{prefix}{n:04d}"
            obj = {"_id": qid, "text": text}
            if with_segment:
                obj["metadata"] = {"segment": family_of(ids[0])}
            fq.write(json.dumps(obj, ensure_ascii=False) + "\n")
            for i in ids:
                fr.write(f"{qid}\t{i}\t1\n")


def main() -> None:
    corpus_ids = {json.loads(line)["_id"] for line in (DATA / "corpus.jsonl").open(encoding="utf-8")}
    sets = {"eval": read_source("eval"), "logs": read_source("logs")}
    eval_targets = {i for _, ids in sets["eval"] for i in ids}
    questions = read_source("questions")
    docstrings, dropped = curated_from_docstrings(eval_targets)
    asked = {norm(t) for t, _ in questions}
    dropped["same text as a question"] = sum(norm(t) in asked for t, _ in docstrings)
    sets["curated"] = questions + [(t, ids) for t, ids in docstrings if norm(t) not in asked]
    errors = validate(sets, corpus_ids)
    if errors:
        print("\n".join(errors), file=sys.stderr)
        raise SystemExit(f"{len(errors)} validation error(s)")
    write_beir(sets["curated"], "c", DATA / "curated", "train.tsv", with_segment=False)
    write_beir(sets["eval"], "e", DATA / "eval", "test.tsv", with_segment=True)
    segments = Counter(family_of(ids[0]) for _, ids in sets["eval"])
    curated_targets = {i for _, ids in sets["curated"] for i in ids}
    print(f"curated: {len(sets['curated'])} queries ({len(questions)} hand-written questions) over {len(curated_targets)} passages; "
          f"docstring summaries left out: {dict(dropped)}")
    print(f"eval: {len(sets['eval'])} queries over {len(eval_targets)} passages; segments {dict(sorted(segments.items()))}")
    print(f"logs: {len(sets['logs'])} queries (read by build_search_logs.py)")
    print("validation OK")


if __name__ == "__main__":
    main()
