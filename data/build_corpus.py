#!/usr/bin/env python3
"""Build data/corpus.jsonl (code passages) and data/queries_src/docstrings.jsonl from the CPython 3.11 stdlib.

A passage is the source of one public function or method of a pure-Python stdlib module, with
its docstring removed: the task is to find code from a description of what it does, and the
description must not be sitting in the passage. Comments stay (real code has them).

* `_id` and `title`: the qualified name, `module.function` or `module.Class.method`
  (`shutil.copytree`, `pathlib.Path.glob`).
* `text`: the function's source (decorators included), dedented, docstring and blank lines
  removed, cut at the last line that fits in `MAX_CHARS`.
* Kept: names without a leading underscore, at module level or one class deep (definitions under
  a module- or class-level `if`/`try` count too; the first one of a name wins). Skipped: texts
  under `MIN_CHARS`, one-line definitions, and a text that repeats an earlier passage's.

The removed docstrings' first sentences go to `queries_src/docstrings.jsonl` (`{"_id", "summary"}`):
the raw material of the curated training pairs (build_queries.py decides which ones are used).

Sources are parsed with `ast`, never imported, so the output depends only on the files: it is
byte-identical across runs for one CPython 3.11 build. Run:  python data/build_corpus.py
"""
from __future__ import annotations

import argparse
import ast
import inspect
import json
import re
import sys
import sysconfig
import textwrap
from pathlib import Path

DATA = Path(__file__).resolve().parent
OUT = DATA / "corpus.jsonl"
DOCSTRINGS = DATA / "queries_src" / "docstrings.jsonl"

MIN_CHARS = 60      # shorter functions (mostly one-line properties) say nothing a query could find
MAX_CHARS = 1000    # about 256 MiniLM word pieces of Python: what the model reads of a passage

# Module family -> modules. The family is the eval segment of a query whose target is in it.
FAMILIES = {
    "files": ["os", "posixpath", "genericpath", "shutil", "pathlib", "tempfile", "glob", "fnmatch",
              "filecmp", "fileinput", "linecache", "zipfile", "tarfile", "gzip", "bz2", "lzma",
              "zipapp", "shelve"],
    "formats": ["json", "json.encoder", "json.decoder", "csv", "configparser", "pickle", "base64",
                "plistlib", "tomllib._parser", "quopri", "xml.etree.ElementTree",
                "uuid", "secrets", "hmac", "hashlib"],
    "text": ["textwrap", "difflib", "string", "shlex", "html", "html.parser", "re", "gettext",
             "locale", "tokenize", "reprlib", "pprint"],
    "network": ["urllib.parse", "urllib.request", "http.client", "http.cookies", "http.cookiejar",
                "http.server", "email.utils", "email.message", "email.headerregistry", "smtplib",
                "ftplib", "poplib", "ipaddress", "mimetypes", "socket", "socketserver",
                "selectors", "ssl", "xmlrpc.client", "wsgiref.util", "wsgiref.headers", "webbrowser"],
    "concurrency": ["threading", "queue", "concurrent.futures._base", "concurrent.futures.thread",
                    "concurrent.futures.process", "asyncio.tasks", "asyncio.queues", "asyncio.locks",
                    "asyncio.streams", "asyncio.base_events", "asyncio.events", "asyncio.runners",
                    "asyncio.timeouts", "asyncio.subprocess", "subprocess", "sched",
                    "multiprocessing.pool", "multiprocessing.managers"],
    "data": ["collections", "functools", "heapq", "bisect", "copy", "dataclasses", "enum", "contextlib",
             "weakref", "operator", "graphlib", "statistics", "fractions", "random", "datetime",
             "calendar", "zoneinfo._zoneinfo", "typing", "types"],
    "devtools": ["unittest.case", "unittest.mock", "doctest", "traceback", "timeit", "inspect",
                 "warnings", "logging", "logging.handlers", "argparse", "getopt", "cmd",
                 "ast", "dis", "pstats", "tracemalloc", "platform", "sysconfig", "pkgutil",
                 "importlib.util", "importlib.metadata", "runpy", "compileall", "py_compile", "getpass"],
}

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(`'\"])")
_SIGNATURE = re.compile(r"^[\w.]+\(.*\)(\s*->.*)?$")  # "copytree(src, dst) -> str" lines of C-style docstrings


def module_path(stdlib: Path, module: str) -> Path:
    path = stdlib / (module.replace(".", "/") + ".py")
    return path if path.is_file() else stdlib / module.replace(".", "/") / "__init__.py"


def definitions(body: list[ast.stmt], prefix: str, depth: int = 0):
    """(qualified name, node) for public functions here and in public classes one level down,
    looking inside `if`/`try` blocks (platform-specific definitions)."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if not node.name.startswith("_"):
                yield f"{prefix}{node.name}", node
        elif isinstance(node, ast.ClassDef):
            if depth == 0 and not node.name.startswith("_"):
                yield from definitions(node.body, f"{prefix}{node.name}.", depth + 1)
        elif isinstance(node, ast.If):
            yield from definitions(node.body + node.orelse, prefix, depth)
        elif isinstance(node, ast.Try):
            handlers = [stmt for h in node.handlers for stmt in h.body]
            yield from definitions(node.body + handlers + node.orelse + node.finalbody, prefix, depth)


def summary(doc: str) -> str:
    """The first sentence of a docstring's first prose paragraph, whitespace collapsed."""
    for paragraph in re.split(r"\n\s*\n", inspect.cleandoc(doc)):
        lines = [ln for ln in paragraph.strip().splitlines() if not _SIGNATURE.match(ln.strip())]
        text = " ".join(" ".join(lines).split())
        if text:
            return _SENTENCE_END.split(text, maxsplit=1)[0]
    return ""


def passage(source_lines: list[str], node: ast.FunctionDef | ast.AsyncFunctionDef) -> str | None:
    """The function's code without its docstring and blank lines, dedented and cut at MAX_CHARS."""
    first = min([d.lineno for d in node.decorator_list] + [node.lineno])
    drop: set[int] = set()
    if ast.get_docstring(node, clean=False) is not None:
        doc = node.body[0]
        if doc.lineno == node.lineno:  # `def f(): "doc"` on one line
            return None
        drop = set(range(doc.lineno, doc.end_lineno + 1))
    lines = [source_lines[i - 1].rstrip() for i in range(first, node.end_lineno + 1) if i not in drop]
    lines = textwrap.dedent("\n".join(ln for ln in lines if ln.strip())).splitlines()
    if len(lines) < 2:
        return None
    kept, size = [], 0
    for line in lines:
        if size + len(line) + 1 > MAX_CHARS:
            break
        kept.append(line)
        size += len(line) + 1
    text = "\n".join(kept)
    return text if len(text) >= MIN_CHARS and len(kept) >= 2 else None


def build(stdlib: Path) -> tuple[list[dict], list[dict]]:
    rows: dict[str, str] = {}
    docs: dict[str, str] = {}
    seen_text: set[str] = set()
    for family in FAMILIES.values():
        for module in family:
            path = module_path(stdlib, module)
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source, filename=str(path))
            lines = source.splitlines()
            for qual, node in definitions(tree.body, f"{module}."):
                if qual in rows:
                    continue
                text = passage(lines, node)
                if text is None or text in seen_text:
                    continue
                rows[qual] = text
                seen_text.add(text)
                doc = ast.get_docstring(node)
                if doc:
                    docs[qual] = summary(doc)
    corpus = [{"_id": i, "title": i, "text": rows[i]} for i in sorted(rows)]
    summaries = [{"_id": i, "summary": docs[i]} for i in sorted(docs) if docs[i]]
    return corpus, summaries


def family_of(passage_id: str) -> str:
    """The family (eval segment) of a passage id: the family of its longest module prefix."""
    best = max(((m, f) for f, mods in FAMILIES.items() for m in mods if passage_id.startswith(m + ".")),
               key=lambda mf: len(mf[0]), default=None)
    if best is None:
        raise ValueError(f"no family for {passage_id}")
    return best[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stdlib", type=Path, default=Path(sysconfig.get_paths()["stdlib"]),
                        help="the CPython 3.11 Lib folder (default: this interpreter's)")
    args = parser.parse_args()
    if sys.version_info[:2] != (3, 11) and args.stdlib == Path(sysconfig.get_paths()["stdlib"]):
        print(f"warning: built for the Python 3.11 stdlib, this is {sys.version.split()[0]}", file=sys.stderr)
    corpus, summaries = build(args.stdlib)
    with OUT.open("w", encoding="utf-8") as fh:
        for row in corpus:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    DOCSTRINGS.parent.mkdir(exist_ok=True)
    with DOCSTRINGS.open("w", encoding="utf-8") as fh:
        for row in summaries:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    per_family = {f: sum(family_of(r["_id"]) == f for r in corpus) for f in FAMILIES}
    print(f"wrote {len(corpus)} passages to {OUT} ({OUT.stat().st_size / 1e6:.2f} MB); per family {per_family}")
    print(f"wrote {len(summaries)} docstring summaries to {DOCSTRINGS}")


if __name__ == "__main__":
    main()
