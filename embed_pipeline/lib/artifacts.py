"""Run-scoped, immutable artifacts and the small typed handles that name them.

Every asset writes its files under `<artifacts_dir>/assets/<asset>/<run id>/` and never into
another run's folder, so two runs launched at once (a nightly schedule and a person in the UI)
cannot overwrite each other, and a failed check never replaces the last good output. What flows
from one asset to the next is a handle: a frozen record naming exactly the bytes that run wrote.
Downstream assets read the handle they were given, never "the latest file".

Retention (`prune`) keeps the newest N run folders per asset and never deletes a folder that the
served pointer, the champion or a recent promotion (a rollback target) still needs; the other
folders a run writes follow from what it keeps (lib/retention.py).
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass, field
from pathlib import Path

ASSETS_FOLDER = "assets"


def run_folder(artifacts_dir: Path, asset: str, run_id: str) -> Path:
    """Where `asset` writes in run `run_id` (created on demand)."""
    folder = Path(artifacts_dir) / ASSETS_FOLDER / asset / run_id
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@dataclass(frozen=True)
class CorpusHandle:
    path: str  # Parquet: passage_id, title, text
    passages: int
    quarantine_path: str
    version: str  # content hash of the validated passages


@dataclass(frozen=True)
class PairsHandle:
    """A table of (query, passage) pairs and the files written beside it."""

    path: str
    pairs: int
    version: str = ""
    rows_in: int = 0
    quarantined: int = 0
    files: dict[str, str] = field(default_factory=dict)  # e.g. quarantine, skip_above, eval_split, leaks


@dataclass(frozen=True)
class NegativesHandle:
    path: str  # Parquet: query, passage_id, negatives, source, positive_text
    rows: int
    version: str
    base_model_fingerprint: str


@dataclass(frozen=True)
class ModelHandle:
    model_dir: str
    run_id: str  # the MLflow run
    name: str  # registered model name
    version: str  # registered model version
    dev_path: str = ""  # Parquet (query, passage_id): the dev rows training held out; "" from older versions


@dataclass(frozen=True)
class IndexHandle:
    path: str  # FAISS index folder
    type: str
    size: int
    model_fingerprint: str
    encoded: int
    reused: int
    lexical_path: str = ""  # the BM25 index of the same corpus snapshot ("" when dense only)


@dataclass(frozen=True)
class ReportHandle:
    path: str  # eval_report.json
    gate_passed: bool


HANDLE_TYPES = {cls.__name__: cls for cls in (CorpusHandle, PairsHandle, NegativesHandle, ModelHandle, IndexHandle, ReportHandle)}


def handle_to_json(handle) -> dict:
    return {"type": type(handle).__name__, "fields": dataclasses.asdict(handle)}


def handle_from_json(data: dict):
    cls = HANDLE_TYPES.get(data.get("type", ""))
    if cls is None:
        raise ValueError(f"unknown handle type {data.get('type')!r}: expected one of {sorted(HANDLE_TYPES)}")
    return cls(**data["fields"])


def prune(artifacts_dir: Path, keep: int, protected: set[Path], busy_runs: set[str] = frozenset()) -> list[Path]:
    """Delete all but the newest `keep` run folders of each asset; returns what was deleted.

    A folder is kept when any protected path lies inside it (the served model or index, the
    champion's model, a rollback target) or when its run is still in progress (`busy_runs`).
    Newest = most recently modified, so a run that is writing is never "old".
    """
    root = Path(artifacts_dir) / ASSETS_FOLDER
    protected = {Path(p).resolve() for p in protected}
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for asset in sorted(p for p in root.iterdir() if p.is_dir()):
        runs = sorted((p for p in asset.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
        for folder in runs[keep:]:
            resolved = folder.resolve()
            if folder.name in busy_runs or any(p == resolved or resolved in p.parents for p in protected):
                continue
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed
