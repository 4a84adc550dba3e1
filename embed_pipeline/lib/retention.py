"""Retention over every folder the pipeline writes, so the disk stops growing after a few runs.

What a run writes under `artifacts_dir`, and when it may go:
- `assets/<asset>/<run id>/`: all but the newest `keep` per asset (`artifacts.prune`), never a
  protected path (served pointer, champion, rollback targets) nor a run in progress;
- `runs/<run id>/` (the run's config snapshot) and the Dagster handles of that run: when the run
  is not kept. A run is kept while any of its asset folders is, while it is in progress, while
  it is among the newest `keep` snapshots, or while it holds an asset's latest materialisation
  (`pinned`: an asset not selected in a later run loads that handle);
- `embedding_cache/<space>/` and `embeddings/<fingerprint>/` (per-shard vectors): when no kept
  model has that fingerprint. The fingerprints of kept models are read from what kept runs wrote
  (index folders record their model's fingerprint, handles the base model's), so the base model's
  entries, used by every run, stay as long as any kept run used it;
- `checkpoints/`: a finished job deletes its own; what a failed or killed job left is kept for a
  retry of the same job (same data and settings resume from it), up to the newest `keep` folders.
- the MLflow run's logged copy of a model (`mlruns/.../artifacts/model`, `prune_logged_models`):
  once retention deleted the version's own model folder, when the copy lies in the pipeline's
  local artifact store under `artifacts_dir` (a remote artifact store keeps its own policy). The
  registered version and its run (params, metrics, tags) stay, tagged as pruned.
A folder changed since the oldest run in progress started (`busy_since`) is never removed: that
run may be writing it, or about to read it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

from embed_pipeline.lib.artifacts import ASSETS_FOLDER, prune
from embed_pipeline.lib.encoding import CACHE_META

RUNS_FOLDER = "runs"
CACHE_FOLDER = "embedding_cache"
SHARDS_FOLDER = "embeddings"
CHECKPOINTS_FOLDER = "checkpoints"
DATASETS_FOLDER = "corpus"  # lib/corpus.py: one folder per corpus dataset (source stamp x shard count)
INDEX_META = "index.json"  # lib/indexing.py writes it into every dense index folder (META_FILE)
FINGERPRINT_FIELDS = ("model_fingerprint", "base_model_fingerprint")


@dataclass(frozen=True)
class RetentionResult:
    """What one pass deleted, by kind, and the model fingerprints whose vectors it kept."""

    removed: dict[str, list[Path]] = field(default_factory=dict)
    kept_fingerprints: frozenset[str] = frozenset()

    @property
    def count(self) -> int:
        return sum(len(paths) for paths in self.removed.values())

    def summary(self) -> str:
        return ", ".join(f"{len(paths)} {kind}" for kind, paths in self.removed.items() if paths) or "nothing"


def apply_retention_plan(
    artifacts_dir: Path,
    keep: int,
    protected: set[Path],
    busy_runs: set[str] = frozenset(),
    busy_since: float | None = None,
    handles_dir: Path | None = None,
    pinned_runs: set[str] = frozenset(),
) -> RetentionResult:
    """Delete what no kept run, served model or run in progress needs; returns what went.

    `protected`: paths the served pointer, the champion and the rollback targets name.
    `busy_runs`: ids of runs in progress; `busy_since`: when the oldest of them was created (epoch
    seconds; None when none is). `handles_dir`: the Dagster instance's `handles/` folder (one
    sub-folder per run). `pinned_runs`: runs holding an asset's latest materialisation.
    """
    root = Path(artifacts_dir)
    removed: dict[str, list[Path]] = {"asset folders": prune(root, keep, protected, busy_runs)}
    kept_runs = _kept_runs(root, keep, busy_runs, pinned_runs)
    fresh = (lambda path: _changed_since(path, busy_since)) if busy_since is not None else (lambda path: False)

    removed["run snapshots"] = _remove(p for p in _subfolders(root / RUNS_FOLDER) if p.name not in kept_runs and not fresh(p))
    if handles_dir is not None:
        removed["handle folders"] = _remove(p for p in _subfolders(Path(handles_dir)) if p.name not in kept_runs)

    fingerprints = kept_fingerprints(root, protected, handles_dir, kept_runs)
    removed["shard embedding folders"] = _remove(
        p for p in _subfolders(root / SHARDS_FOLDER) if p.name not in fingerprints and not fresh(p))
    removed["embedding cache spaces"] = _remove(
        p for p in _subfolders(root / CACHE_FOLDER) if _space_fingerprint(p) not in fingerprints and not fresh(p))
    datasets = kept_datasets(root, protected, handles_dir, kept_runs, keep)
    removed["corpus datasets"] = _remove(
        p for p in _subfolders(root / DATASETS_FOLDER)
        if p.resolve() not in datasets and not fresh(p) and not p.name.startswith("."))  # ".<key>.build-*": being built
    checkpoints = sorted(_subfolders(root / CHECKPOINTS_FOLDER), key=_mtime, reverse=True)
    removed["checkpoint folders"] = _remove(p for p in checkpoints[keep:] if not fresh(p))
    return RetentionResult(removed, frozenset(fingerprints))


def kept_fingerprints(artifacts_dir: Path, protected: set[Path], handles_dir: Path | None, kept_runs: set[str]) -> set[str]:
    """Fingerprints of every model a kept run or a protected index used.

    Sources: the `meta.json` of each index folder left under `assets/` (candidate and served
    indexes name their model's fingerprint), the same file inside protected index paths, and the
    handles of kept runs (`model_fingerprint` of an index, `base_model_fingerprint` of the mined
    negatives: the base model every run encodes with).
    """
    found: set[str] = set()
    metas = list((Path(artifacts_dir) / ASSETS_FOLDER).glob(f"*/*/*/{INDEX_META}"))
    metas += [Path(p) / INDEX_META for p in protected]
    for meta in metas:
        found.update(_fingerprint_fields(meta))
    if handles_dir is not None:
        for run in kept_runs:
            for handle in (Path(handles_dir) / run).glob("*.json"):
                found.update(_fingerprint_fields(handle, nested="fields"))
    return found


def kept_datasets(artifacts_dir: Path, protected: set[Path], handles_dir: Path | None, kept_runs: set[str],
                  keep: int) -> set[Path]:
    """Corpus dataset folders still needed: the one each index under `assets/` or a protected index
    was built from (`search` reads hit texts there), the ones kept runs' `corpus` handles name,
    and the newest `keep` (the current source's, which the next tick reuses)."""
    root = Path(artifacts_dir)
    found: set[Path] = set()
    metas = list((root / ASSETS_FOLDER).glob(f"*/*/*/{INDEX_META}")) + [Path(p) / INDEX_META for p in protected]
    for meta in metas:
        try:
            folder = json.loads(meta.read_text(encoding="utf-8")).get("corpus_dataset")
        except FileNotFoundError:
            continue
        if folder:
            found.add(Path(folder).resolve())
    if handles_dir is not None:
        for run in kept_runs:
            for handle in (Path(handles_dir) / run).glob("*.json"):
                fields = json.loads(handle.read_text(encoding="utf-8")).get("fields") or {}
                if fields.get("quarantine_path") and fields.get("path"):  # a CorpusHandle
                    found.add(Path(fields["path"]).resolve())
    newest = sorted(_subfolders(root / DATASETS_FOLDER), key=_mtime, reverse=True)[:keep]
    return found | {p.resolve() for p in newest}


def prune_logged_models(client, name: str, artifacts_dir: Path) -> list[Path]:
    """Delete MLflow's logged copy of each version of registered model `name` whose own model folder
    (its `model_path` tag) is gone, when the copy is a local folder under `artifacts_dir`.

    `client` is an `MlflowClient`. Only such versions lose their copy: the served model, the
    champion and rollback targets keep their folders (retention protects them), so their copies
    stay too. Each pruned version is tagged `model_artifacts: pruned by retention`.
    """
    root = Path(artifacts_dir).resolve()
    removed = []
    for version in client.search_model_versions(f"name='{name}'"):
        model_path = (version.tags or {}).get("model_path")
        source = urlparse(version.source or "")
        if not model_path or Path(model_path).exists() or source.scheme != "file":
            continue
        if root not in Path(model_path).resolve().parents:
            continue  # not a folder retention prunes (the stock model's package, another machine's path)
        copy = Path(url2pathname(source.path)).resolve()
        if root not in copy.parents or not copy.is_dir():
            continue
        removed += _remove([copy])
        client.set_model_version_tag(name, version.version, "model_artifacts", "pruned by retention")
    return removed


def _fingerprint_fields(path: Path, nested: str | None = None) -> set[str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return set()
    if nested is not None:
        data = data.get(nested) or {}
    return {str(data[name]) for name in FINGERPRINT_FIELDS if data.get(name)}


def _kept_runs(root: Path, keep: int, busy_runs: set[str], pinned_runs: set[str]) -> set[str]:
    with_assets = {run.name for asset in _subfolders(root / ASSETS_FOLDER) for run in _subfolders(asset)}
    newest = {p.name for p in sorted(_subfolders(root / RUNS_FOLDER), key=_mtime, reverse=True)[:keep]}
    return with_assets | newest | set(busy_runs) | set(pinned_runs)


def _space_fingerprint(space: Path) -> str | None:
    """The model fingerprint a cache space was made for (None when its meta file is missing: removed)."""
    try:
        return json.loads((space / CACHE_META).read_text(encoding="utf-8")).get("model_fingerprint")
    except FileNotFoundError:
        return None


def _changed_since(folder: Path, since: float) -> bool:
    """Whether the folder, or anything directly in it, changed at or after `since` (epoch seconds)."""
    return _mtime(folder) >= since or any(_mtime(child) >= since for child in folder.iterdir())


def _mtime(path: Path) -> float:
    return path.stat().st_mtime


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def _remove(folders) -> list[Path]:
    removed = []
    for folder in folders:
        shutil.rmtree(folder, onerror=_vanished_is_fine)
        removed.append(folder)
    return removed


def _vanished_is_fine(function, path, exc_info) -> None:
    """Another retention pass deleting the same folder at once is not an error; anything else is."""
    if not issubclass(exc_info[0], FileNotFoundError):
        raise exc_info[1]
