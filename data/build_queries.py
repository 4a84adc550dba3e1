#!/usr/bin/env python3
"""Build the BEIR query/qrels files from the hand-written sources and validate them.

Sources (one query a line, ``query text => corpus_id[, corpus_id]``; ``#`` comments):
  data/queries_src/curated.txt  -> data/curated/queries.jsonl, data/curated/qrels/train.tsv
  data/queries_src/eval.txt     -> data/eval/queries.jsonl,    data/eval/qrels/test.tsv
  data/queries_src/logs.txt     -> read by data/build_search_logs.py only

Checks (the script exits non-zero if any fails): every qrel id exists in
data/corpus.jsonl; no query text repeats within or across sets after lowercasing
and whitespace normalisation; no eval query is a near-duplicate (token Jaccard
>= 0.8) of a curated or log query; minimum counts (curated >= 220, eval >= 170,
logs >= 100).  Run:  python data/build_queries.py
"""
from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

DATA = Path(__file__).resolve().parent
SRC = DATA / "queries_src"
MINIMUMS = {"curated": 220, "eval": 170, "logs": 100}

# Module family of a passage id -> eval segment.
SEGMENTS = {
    "filesystem": ["os", "os.path", "pathlib", "shutil", "glob", "fnmatch", "tempfile",
                   "io", "zipfile", "tarfile", "gzip", "bz2", "zlib"],
    "text": ["re", "string", "textwrap", "difflib", "unicodedata", "codecs", "builtins.str",
             "locale", "gettext", "html", "shlex"],
    "data-structures": ["collections", "collections.abc", "itertools", "functools", "heapq",
                        "bisect", "array", "copy", "operator", "builtins.dict",
                        "builtins.list", "builtins.set", "builtins.frozenset",
                        "weakref", "dataclasses", "enum", "pprint"],
    "numeric": ["math", "statistics", "random", "decimal", "fractions", "builtins.int",
                "builtins.float", "builtins.round", "builtins.complex"],
    "serialization": ["json", "csv", "pickle", "sqlite3", "configparser", "struct",
                      "base64", "xml.etree.ElementTree", "builtins.bytes", "builtins.bytearray",
                      "hashlib", "hmac", "secrets", "uuid"],
    "concurrency": ["threading", "asyncio", "concurrent.futures", "queue", "subprocess",
                    "sched"],
    "networking": ["socket", "select", "selectors", "urllib.parse", "urllib.request",
                   "http.client", "http.server", "ipaddress", "smtplib", "email",
                   "email.message", "email.utils", "mimetypes"],
    "datetime": ["datetime", "time", "calendar", "zoneinfo"],
    "testing-debugging": ["unittest", "unittest.mock", "doctest", "traceback", "timeit",
                          "inspect", "warnings", "logging", "logging.handlers", "ast", "pdb"],
    "system": ["sys", "signal", "platform", "argparse", "os.environ"],
    "language": ["builtins", "types", "typing", "abc"],
}
_PREFIXES = sorted(((p, seg) for seg, ps in SEGMENTS.items() for p in ps),
                   key=lambda x: -len(x[0]))


def segment_of(doc_id: str) -> str:
    if doc_id.startswith("topic:"):
        return "language"
    for prefix, seg in _PREFIXES:
        if doc_id == prefix or doc_id.startswith(prefix + "."):
            return seg
    raise ValueError(f"no segment for {doc_id}")


def norm(text: str) -> str:
    return " ".join(text.lower().split())


def tokens(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9_]+", text.lower()))


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


def load_sets() -> dict[str, list[tuple[str, list[str]]]]:
    return {name: read_source(name) for name in ("curated", "eval", "logs")}


def validate(sets, corpus_ids: set[str]) -> list[str]:
    errors = []
    for name, rows in sets.items():
        if len(rows) < MINIMUMS[name]:
            errors.append(f"{name}: {len(rows)} queries < {MINIMUMS[name]}")
        for text, ids in rows:
            for i in ids:
                if i not in corpus_ids:
                    errors.append(f"{name}: unknown corpus id {i!r} for query {text!r}")
    seen: dict[str, str] = {}
    for name, rows in sets.items():
        for text, _ in rows:
            key = norm(text)
            if key in seen:
                errors.append(f"duplicate query text {text!r} in {name} and {seen[key]}")
            seen[key] = name
    other = [(t, tokens(t)) for n in ("curated", "logs") for t, _ in sets[n]]
    for text, _ in sets["eval"]:
        toks = tokens(text)
        for o, otoks in other:
            jac = len(toks & otoks) / max(1, len(toks | otoks))
            if jac >= 0.8:
                errors.append(f"eval query {text!r} near-duplicates {o!r} (jaccard {jac:.2f})")
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
                obj["metadata"] = {"segment": segment_of(ids[0])}
            fq.write(json.dumps(obj, ensure_ascii=False) + "\n")
            for i in ids:
                fr.write(f"{qid}\t{i}\t1\n")


def main() -> None:
    corpus_ids = {json.loads(line)["_id"] for line in (DATA / "corpus.jsonl").open(encoding="utf-8")}
    sets = load_sets()
    errors = validate(sets, corpus_ids)
    if errors:
        print("\n".join(errors), file=sys.stderr)
        raise SystemExit(f"{len(errors)} validation error(s)")
    write_beir(sets["curated"], "c", DATA / "curated", "train.tsv", with_segment=False)
    write_beir(sets["eval"], "e", DATA / "eval", "test.tsv", with_segment=True)
    eval_targets = {i for _, ids in sets["eval"] for i in ids}
    cur_targets = {i for _, ids in sets["curated"] for i in ids}
    segs = Counter(segment_of(ids[0]) for _, ids in sets["eval"])
    print(f"curated: {len(sets['curated'])} queries, {len(cur_targets)} distinct passages")
    print(f"eval: {len(sets['eval'])} queries, {len(eval_targets)} distinct passages, "
          f"{len(eval_targets - cur_targets)} not targeted by curated; segments {dict(sorted(segs.items()))}")
    print(f"logs: {len(sets['logs'])} queries (used by build_search_logs.py)")
    print("validation OK")


if __name__ == "__main__":
    main()
