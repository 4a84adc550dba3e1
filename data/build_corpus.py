#!/usr/bin/env python3
"""Build data/corpus.jsonl: a BEIR-style corpus from the Python 3.11 standard library.

Passages come from two sources, both part of CPython 3.11 (PSF-2.0):

* docstrings of public modules, functions, classes and methods of a curated
  list of well-documented stdlib modules (``_id`` = qualified name, e.g.
  ``json.dumps`` or ``collections.OrderedDict.move_to_end``);
* the language-reference topics shipped in ``pydoc_data.topics``, split into
  paragraph-sized passages (``_id`` = ``topic:<key>:<n>``).

The output is deterministic for a given Python 3.11 build: objects are visited
in sorted order, no reprs (memory addresses) are used, and the final file is
sorted by id.  Run from anywhere:  python data/build_corpus.py
"""
from __future__ import annotations

import importlib
import inspect
import json
import re
import sys
import warnings
from pathlib import Path

OUT = Path(__file__).resolve().parent / "corpus.jsonl"

MIN_CHARS = 60          # skip docstrings shorter than this
MAX_CHARS = 1500        # truncate docstrings at a sentence boundary below this
TOPIC_TARGET = 1200     # approximate cap for a topic passage
TOPIC_MIN = 300         # merge topic paragraphs until at least this long

MODULES = [
    "abc", "argparse", "array", "ast", "asyncio", "base64", "bisect", "builtins", "bz2", "calendar",
    "codecs", "collections", "collections.abc", "concurrent.futures",
    "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime",
    "decimal", "difflib", "doctest", "email", "email.message", "email.utils",
    "enum", "fnmatch", "fractions", "functools", "gettext", "glob", "gzip",
    "hashlib", "heapq", "hmac", "html", "http.client", "http.server", "inspect", "io",
    "ipaddress", "itertools", "json", "locale", "logging", "logging.handlers",
    "math", "mimetypes", "operator", "os", "os.path", "pathlib", "pickle",
    "platform", "pprint", "queue", "random", "re", "sched", "secrets",
    "select", "selectors", "shlex", "shutil", "signal", "smtplib", "socket", "sqlite3",
    "statistics", "string", "struct", "subprocess", "sys", "tarfile",
    "tempfile", "textwrap", "threading", "time", "timeit", "traceback",
    "types", "typing", "unicodedata", "unittest", "unittest.mock", "urllib.parse",
    "urllib.request", "uuid", "warnings", "weakref", "xml.etree.ElementTree", "zipfile", "zlib",
    "zoneinfo",
]

# Extra implementation modules whose objects a public module re-exports.
ALIASES = {
    "os": {"posix"},
    "os.path": {"posixpath", "genericpath"},
    "hashlib": {"_hashlib", "_blake2", "_sha3", "_md5", "_sha1", "_sha256", "_sha512"},
    "asyncio": {"_asyncio"},
    "time": {"time"},
}

SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def normalise(text: str) -> str:
    return " ".join(text.split())


def truncate(text: str, limit: int = MAX_CHARS) -> str:
    if len(text) <= limit:
        return text
    head = text[:limit]
    ends = [m.end() for m in SENTENCE_END.finditer(head)]
    if ends and ends[-1] >= limit // 3:
        return head[: ends[-1]].rstrip()
    cut = head.rfind(" ")
    return head[: cut if cut > 0 else limit].rstrip()


def clean_doc(doc) -> str | None:
    if not isinstance(doc, str):
        return None
    text = truncate(normalise(inspect.cleandoc(doc)))
    if len(text) < MIN_CHARS:
        return None
    return text


def owned(modname: str, module, name: str, obj) -> bool:
    """Is ``obj`` (found as ``module.name``) documented as part of ``modname``?"""
    if hasattr(module, "__all__"):
        return name in module.__all__
    owner = getattr(obj, "__module__", None)
    if not isinstance(owner, str):
        return False
    last = modname.rsplit(".", 1)[-1]
    ok = {modname, "_" + last, "_" + modname.replace(".", "_")} | ALIASES.get(modname, set())
    return owner in ok or owner.startswith(modname + ".")


def is_documentable(obj) -> bool:
    return inspect.isclass(obj) or inspect.isroutine(obj)


def class_members(cls):
    for name in sorted(vars(cls)):
        if name.startswith("_"):
            continue
        raw = vars(cls)[name]
        if isinstance(raw, (staticmethod, classmethod)):
            raw = raw.__func__
        if isinstance(raw, property) or inspect.isroutine(raw) or inspect.isdatadescriptor(raw):
            yield name, raw


def api_passages():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for modname in MODULES:
            module = importlib.import_module(modname)
            doc = clean_doc(module.__doc__)
            if doc:
                yield modname, modname, doc
            seen_classes = set()
            for name in sorted(dir(module)):
                if name.startswith("_"):
                    continue
                try:
                    obj = getattr(module, name)
                except Exception:
                    continue
                if not is_documentable(obj) or not owned(modname, module, name, obj):
                    continue
                if (inspect.isclass(obj) and obj.__name__ != name
                        and getattr(module, obj.__name__, None) is obj):
                    continue  # alias of a class exported under its own name
                qual = f"{modname}.{name}"
                doc = clean_doc(getattr(obj, "__doc__", None))
                if doc:
                    yield qual, qual, doc
                if inspect.isclass(obj) and id(obj) not in seen_classes:
                    seen_classes.add(id(obj))
                    for mname, member in class_members(obj):
                        mdoc = clean_doc(getattr(member, "__doc__", None))
                        if mdoc:
                            mq = f"{qual}.{mname}"
                            yield mq, mq, mdoc


HEADING_RULE = re.compile(r"^\s*([*=\-~^#])\1{2,}\s*$")


def split_long(par: str, limit: int = TOPIC_TARGET) -> list[str]:
    out = []
    while len(par) > limit:
        piece = truncate(par, limit)
        out.append(piece)
        par = par[len(piece):].strip()
    if par:
        out.append(par)
    return out


def topic_passages():
    """Chunk the pydoc topics.  Several topics are aggregates of others (e.g.
    ``compound`` repeats ``if``/``for``/``try``/``with``/``function``), so
    paragraphs are de-duplicated across topics first, visiting the shortest
    (most specific) topics first; the aggregate keeps only what is unique to it.
    """
    from pydoc_data.topics import topics

    seen_pars: set[str] = set()
    out = []
    for key in sorted(topics, key=lambda k: (len(topics[k]), k)):
        raw = topics[key]
        lines = raw.strip("\n").splitlines()
        title = key
        if len(lines) > 1 and HEADING_RULE.match(lines[1]):
            title = lines[0].strip()
        lines = [ln for ln in lines if not HEADING_RULE.match(ln)]
        paragraphs = [normalise(p) for p in re.split(r"\n\s*\n", "\n".join(lines))]
        paragraphs = [p for p in paragraphs if p]
        if paragraphs and paragraphs[0] == title:
            paragraphs = paragraphs[1:]
        unique = []
        for p in paragraphs:
            if len(p) >= 40 and p in seen_pars:
                continue
            seen_pars.add(p)
            unique.append(p)
        pieces: list[str] = []
        for p in unique:
            pieces.extend(split_long(p))
        chunks: list[str] = []
        buf = ""
        for p in pieces:
            if not buf:
                buf = p
            elif len(buf) < TOPIC_MIN or len(buf) + 1 + len(p) <= TOPIC_TARGET:
                if len(buf) + 1 + len(p) <= MAX_CHARS:
                    buf = f"{buf} {p}"
                else:
                    chunks.append(buf)
                    buf = p
            else:
                chunks.append(buf)
                buf = p
        if buf:
            chunks.append(buf)
        n = 0
        for chunk in chunks:
            if len(chunk) >= MIN_CHARS:
                n += 1
                out.append((f"topic:{key}:{n}", title, chunk))
    return out


def sort_key(doc_id: str):
    if doc_id.startswith("topic:"):
        _, key, n = doc_id.split(":")
        return (1, key, int(n))
    return (0, doc_id, 0)


def main() -> None:
    if sys.version_info[:2] != (3, 11):
        print(f"warning: built for Python 3.11, running {sys.version.split()[0]}", file=sys.stderr)
    records = {}
    for doc_id, title, text in list(api_passages()) + list(topic_passages()):
        records.setdefault(doc_id, (title, text))
    # Duplicate texts: keep the shallowest id (``unicodedata.category`` over
    # ``unicodedata.UCD.category``), ties broken by the sort order.
    keep = {}
    for doc_id in sorted(records, key=lambda i: (i.count("."), sort_key(i))):
        keep.setdefault(records[doc_id][1], doc_id)
    kept = set(keep.values())
    rows = [{"_id": i, "title": records[i][0], "text": records[i][1]}
            for i in sorted(kept, key=sort_key)]
    with OUT.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    n_topic = sum(r["_id"].startswith("topic:") for r in rows)
    print(f"wrote {len(rows)} passages ({len(rows) - n_topic} api, {n_topic} topic) "
          f"to {OUT} ({OUT.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
