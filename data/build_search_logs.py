#!/usr/bin/env python3
"""Simulate code-search click logs -> data/search_logs.parquet (seeded, deterministic).

Input: data/corpus.jsonl and the log queries in data/queries_src/logs.txt
(``query => true target id``; these texts never repeat an eval query and no target is an
eval target).

Click model (all parameters are module constants below):

* Each log query gets SESSIONS_MIN..SESSIONS_MAX (2-6) sessions, spread over
  30 days from 2024-03-01 UTC.
* In ~25% of sessions the typed query is a surface variant of the canonical
  text (UPPER, Title Case, lower, doubled inner spaces, leading/trailing
  spaces), so consumers must normalise queries before grouping.
* The result page is the top 10 of a plain BM25 ranker (k1=1.2, b=0.75, over
  lower-cased ``[a-z0-9_]+`` tokens of title + text).  If the true target is
  not in the top 10 it is inserted at a uniformly random position 1-10 and the
  rest shift down.
* Position bias: a result at position p is examined with probability
  1 / p ** 0.7.  Given examination, the true target is clicked with
  probability 0.75 and any other result with probability 0.08.
* Dwell time for a click: lognormal with median 90 s (sigma 0.4) on the
  target, median 9 s (sigma 0.4) on other results.
* Pogo-stick sessions (15%): the user first clicks a non-target result in the
  top 4, comes back after 1.5-5 s, then clicks another result (the target with
  probability 0.7, else another non-target), after which the session ends.
* One row per (session, shown result): 10 impressions per session.  Rows that
  were not clicked have ``clicked=False`` and ``dwell_seconds=NaN``.  The
  timestamp of an unclicked row is the search time (+1 ms per position, so
  rows are strictly ordered); a clicked row carries the click time.  Rows are
  sorted by session and timestamp.

Run:  python data/build_search_logs.py
"""
from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

DATA = Path(__file__).resolve().parent
OUT = DATA / "search_logs.parquet"

SEED = 20240301
SESSIONS_MIN, SESSIONS_MAX = 2, 6
TOP_K = 10
BM25_K1, BM25_B = 1.2, 0.75
EXAM_EXPONENT = 0.7
P_CLICK_REL, P_CLICK_NONREL = 0.75, 0.08
DWELL_REL_MEDIAN, DWELL_NONREL_MEDIAN, DWELL_SIGMA = 90.0, 9.0, 0.4
P_POGO, POGO_DWELL = 0.15, (1.5, 5.0)
P_POGO_SECOND_IS_TARGET = 0.7
P_VARIANT = 0.25
START = pd.Timestamp("2024-03-01T00:00:00Z")
SPAN_SECONDS = 30 * 24 * 3600

TOKEN = re.compile(r"[a-z0-9_]+")


def tokenize(text: str) -> list[str]:
    return TOKEN.findall(text.lower())


class BM25:
    def __init__(self, docs: list[str], k1: float = BM25_K1, b: float = BM25_B):
        self.n = len(docs)
        self.k1, self.b = k1, b
        lengths = np.zeros(self.n)
        postings: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for i, doc in enumerate(docs):
            toks = tokenize(doc)
            lengths[i] = len(toks)
            for term, tf in Counter(toks).items():
                postings[term].append((i, tf))
        self.norm = k1 * (1 - b + b * lengths / lengths.mean())
        self.index = {t: (np.array([d for d, _ in p]), np.array([f for _, f in p], dtype=float))
                      for t, p in postings.items()}

    def top(self, query: str, k: int) -> list[int]:
        scores = np.zeros(self.n)
        for term in set(tokenize(query)):
            if term not in self.index:
                continue
            docs, tf = self.index[term]
            idf = math.log(1 + (self.n - len(docs) + 0.5) / (len(docs) + 0.5))
            scores[docs] += idf * tf * (self.k1 + 1) / (tf + self.norm[docs])
        order = np.lexsort((np.arange(self.n), -scores))  # score desc, then corpus order
        return [int(i) for i in order[:k]]


def read_log_queries() -> list[tuple[str, str]]:
    rows = []
    for line in (DATA / "queries_src" / "logs.txt").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            text, target = line.rsplit(" => ", 1)
            rows.append((text.strip(), target.split(",")[0].strip()))
    return rows


def variant(text: str, rng: np.random.Generator) -> str:
    kind = int(rng.integers(5))
    if kind == 0:
        return text.upper()
    if kind == 1:
        return text.title()
    if kind == 2:
        return text.lower() if text != text.lower() else text.capitalize()
    if kind == 3:
        return text.replace(" ", "  ", 1) if " " in text else text + " "
    return "  " + text + " "


def main() -> None:
    corpus = [json.loads(line) for line in (DATA / "corpus.jsonl").open(encoding="utf-8")]
    ids = [d["_id"] for d in corpus]
    pos_of = {d: i for i, d in enumerate(ids)}
    bm25 = BM25([f"{d['title']} {d['text']}" for d in corpus])
    rng = np.random.default_rng(SEED)
    queries = read_log_queries()

    records = []
    session_no = 0
    stats = Counter()
    for text, target in queries:
        if target not in pos_of:
            raise SystemExit(f"unknown target {target!r} for log query {text!r}")
        shown = [ids[i] for i in bm25.top(text, TOP_K)]
        if target not in shown:
            stats["target_inserted"] += 1
            shown.insert(int(rng.integers(TOP_K)), target)
            shown = shown[:TOP_K]
        for _ in range(int(rng.integers(SESSIONS_MIN, SESSIONS_MAX + 1))):
            session_no += 1
            sid = f"s{session_no:05d}"
            typed = variant(text, rng) if rng.random() < P_VARIANT else text
            stats["variant_sessions"] += typed != text
            t0 = START + pd.Timedelta(milliseconds=int(rng.integers(SPAN_SECONDS * 1000)))
            clicks: dict[int, tuple[float, float]] = {}  # position -> (click offset s, dwell s)
            now = 0.0
            nonrel = [p for p in range(1, TOP_K + 1) if shown[p - 1] != target]
            if rng.random() < P_POGO:
                stats["pogo_sessions"] += 1
                first = int(rng.choice([p for p in nonrel if p <= 4]))
                now += float(rng.uniform(1.0, 4.0))
                dwell = float(rng.uniform(*POGO_DWELL))
                clicks[first] = (now, dwell)
                now += dwell
                if rng.random() < P_POGO_SECOND_IS_TARGET:
                    second = shown.index(target) + 1
                else:
                    second = int(rng.choice([p for p in nonrel if p != first]))
                rel = shown[second - 1] == target
                now += float(rng.uniform(1.0, 4.0))
                med = DWELL_REL_MEDIAN if rel else DWELL_NONREL_MEDIAN
                clicks[second] = (now, float(rng.lognormal(math.log(med), DWELL_SIGMA)))
            else:
                for p in range(1, TOP_K + 1):
                    examined = rng.random() < 1.0 / p ** EXAM_EXPONENT
                    rel = shown[p - 1] == target
                    if examined and rng.random() < (P_CLICK_REL if rel else P_CLICK_NONREL):
                        now += float(rng.uniform(1.0, 4.0))
                        med = DWELL_REL_MEDIAN if rel else DWELL_NONREL_MEDIAN
                        dwell = float(rng.lognormal(math.log(med), DWELL_SIGMA))
                        clicks[p] = (now, dwell)
                        now += dwell
            for p, pid in enumerate(shown, 1):
                if p in clicks:
                    offset, dwell = clicks[p]
                    ts, clicked = t0 + pd.Timedelta(milliseconds=round(offset * 1000)), True
                else:
                    ts, clicked, dwell = t0 + pd.Timedelta(milliseconds=p), False, float("nan")
                records.append((typed, pid, p, clicked, round(dwell, 3), sid, ts))

    df = pd.DataFrame(records, columns=["query", "passage_id", "position", "clicked",
                                        "dwell_seconds", "session_id", "timestamp"])
    df["position"] = df["position"].astype("int64")
    df["timestamp"] = pd.to_datetime(df["timestamp"], utc=True)
    df = df.sort_values(["session_id", "timestamp", "position"], kind="mergesort").reset_index(drop=True)
    df.to_parquet(OUT, index=False)

    clicks = df[df.clicked]
    print(f"wrote {len(df)} impressions, {df.session_id.nunique()} sessions, "
          f"{len(queries)} log queries ({df['query'].nunique()} distinct typed strings) to {OUT}")
    print(f"clicks {len(clicks)} (CTR {len(clicks) / len(df):.3f}); sessions with a variant query "
          f"{stats['variant_sessions']}; pogo-stick sessions {stats['pogo_sessions']}; "
          f"queries where BM25 missed the target {stats['target_inserted']}")
    ctr = df.groupby("position").clicked.mean().round(3).to_dict()
    print(f"CTR by position: {ctr}")


if __name__ == "__main__":
    main()
