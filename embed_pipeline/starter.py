"""Projects outside the repo: the default demo config under ./artifacts, the Dagster instance
template, and `embed-pipeline init DIR` (a starter project for the user's own data).

The files come from the package (`lib/bundled.py`), so all of this works from a wheel install in
any directory and writes only where it says.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from embed_pipeline.lib.bundled import DEMO_CONFIG_NAME, INSTANCE_TEMPLATE, WORKSPACE_TEMPLATE, bundled

DEMO_HOME = Path("artifacts")


def default_config(cwd: Path | None = None) -> Path:
    """The bundled demo config, as `./artifacts/demo_config.yaml` with every input path absolute
    (the data stays in the package) and `artifacts_dir` that folder itself: whatever runs on it
    writes under ./artifacts, never beside the installed package."""
    from embed_pipeline.lib.config import config_dict, parse_config

    shipped = bundled(DEMO_CONFIG_NAME)
    home = ((cwd or Path.cwd()) / DEMO_HOME).resolve()
    raw = yaml.safe_load(shipped.read_text(encoding="utf-8"))
    raw["artifacts_dir"] = str(home)
    resolved = config_dict(parse_config(raw, shipped.parent, str(shipped)))
    inputs = ("corpus", "search_logs", "curated_pairs", "eval", "general_reference")  # the keys holding paths
    settings = {key: _drop_none(resolved[key]) if key in inputs else value for key, value in raw.items()}
    settings["artifacts_dir"] = "."
    text = (f"# The bundled demo config ({shipped}), written by embed-pipeline for runs in this folder.\n"
            "# Its inputs stay in the installed package; everything the demo writes goes here.\n"
            + yaml.safe_dump(settings, sort_keys=False))
    target = home / "demo_config.yaml"
    if not target.exists() or target.read_text(encoding="utf-8") != text:
        home.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    return target


def _drop_none(value):
    return {k: v for k, v in value.items() if v is not None} if isinstance(value, dict) else value


def seed_instance(home: Path) -> None:
    """Put the bundled dagster.yaml (SQLite storage, the `gpu` pool limit, run monitoring) into a
    DAGSTER_HOME that has none."""
    if not (home / "dagster.yaml").exists():
        shutil.copyfile(bundled(INSTANCE_TEMPLATE), home / "dagster.yaml")


CONFIG_TEMPLATE = """\
# embed-pipeline config for your data. Every key: the README's config table (`embed-pipeline --help`
# names the commands). Relative paths resolve against this file's folder.

# Passages to search: BEIR corpus.jsonl ({{"_id", "title", "text"}} per line) or Parquet with those columns.
corpus: {corpus}

# Hand-labelled training pairs: a table (Parquet/CSV/JSONL with columns `query`, `passage_id`), or
# BEIR files: {{queries: queries.jsonl, qrels: qrels/train.tsv}}.
curated_pairs: {curated}

# The held-out set the promotion gate judges on (never trained on); same layouts. Without it, a
# share of the curated queries is split off (leakage.eval_fraction).
{eval_line}

# Click logs (optional): query, passage_id, position, clicked, dwell_seconds, session_id, timestamp.
{logs_line}

# The model to fine-tune: a hub id (e.g. BAAI/bge-small-en-v1.5), a local folder, or pkg:<module>.
base_model: {base_model}

# Where runs write models, indexes, reports and (by default) the MLflow SQLite store.
artifacts_dir: artifacts

# MLflow: a SQLite file under artifacts_dir unless set. A team's tracking server (README "Deploying it"):
# mlflow_tracking_uri: http://mlflow.internal:5000
registered_model_name: {name}
"""

README_TEMPLATE = """\
# {name}: embedding fine-tuning with embed-pipeline

`config.yaml` names your data; `dagster.yaml` is this project's Dagster instance (SQLite under this
folder; production settings: embed-pipeline's `deploy/dagster.yaml`); `workspace.yaml` loads the
pipeline as a Dagster code location. From this folder:

```bash
export DAGSTER_HOME=$PWD EMBED_PIPELINE_CONFIG=$PWD/config.yaml
embed-pipeline run --config config.yaml              # 1. train a candidate, print its eval report and the gate's verdict
embed-pipeline ui --config config.yaml               # 2. the Dagster UI (daemon included): runs, schedule, promotion sensor
embed-pipeline search "a query" --config config.yaml # 3. ask the served model, once a candidate was promoted
```

`dagster dev -w workspace.yaml` starts the same UI by hand (with the two variables above set).
"""


def _labelled(path: Path | None, placeholder: str) -> str:
    """A labelled set's YAML: a BEIR folder (queries.jsonl + qrels/<one>.tsv) or a table file."""
    if path is None:
        return placeholder
    path = path.expanduser().resolve()
    if path.is_dir():
        qrels = sorted((path / "qrels").glob("*.tsv"))
        if not (path / "queries.jsonl").is_file() or len(qrels) != 1:
            raise FileNotFoundError(f"{path}: a BEIR folder needs queries.jsonl and exactly one qrels/*.tsv")
        return f"{{queries: {path / 'queries.jsonl'}, qrels: {qrels[0]}}}"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    return str(path)


def _file(path: Path | None, placeholder: str) -> str:
    if path is None:
        return placeholder
    path = path.expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    return str(path)


def init_project(target: Path, corpus: Path | None = None, curated: Path | None = None, eval_set: Path | None = None,
                 search_logs: Path | None = None, base_model: str = "BAAI/bge-small-en-v1.5") -> list[Path]:
    """Write config.yaml, dagster.yaml, workspace.yaml and README.md into `target`; returns them.

    Files not named get placeholders under `data/` (the config then says where to put them).
    An existing file is never overwritten (FileExistsError names it)."""
    target = target.expanduser().resolve()
    name = target.name or "embed-pipeline"
    config = CONFIG_TEMPLATE.format(
        corpus=_file(corpus, "data/corpus.jsonl"),
        curated=_labelled(curated, "data/curated_pairs.parquet"),
        eval_line=f"eval: {_labelled(eval_set, '')}" if eval_set else "eval: data/eval_pairs.parquet",
        logs_line=f"search_logs: {_file(search_logs, '')}" if search_logs else "# search_logs: data/search_logs.parquet",
        base_model=base_model, name=name)
    files = {
        "config.yaml": config,
        "dagster.yaml": bundled(INSTANCE_TEMPLATE).read_text(encoding="utf-8"),
        "workspace.yaml": bundled(WORKSPACE_TEMPLATE).read_text(encoding="utf-8"),
        "README.md": README_TEMPLATE.format(name=name),
    }
    existing = [target / f for f in files if (target / f).exists()]
    if existing:
        raise FileExistsError(f"{existing[0]} exists: init writes only into a new or empty project folder")
    target.mkdir(parents=True, exist_ok=True)
    for file_name, text in files.items():
        (target / file_name).write_text(text, encoding="utf-8")
    return [target / f for f in files]
