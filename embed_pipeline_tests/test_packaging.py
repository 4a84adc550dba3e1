"""The wheel, installed as a user installs it: built from the repo's files, into a fresh venv,
used from a directory outside the repo.

Only our package comes from the wheel: the venv sees this environment's site-packages through a
.pth file (no second download of torch), and the test checks that `embed_pipeline` is imported
from the new venv, not from the repo.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml

from embed_pipeline_tests.fixture_data import write_project

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def repo_files() -> list[str]:
    """What a clone holds: tracked files and new ones that are not ignored (never build/, artifacts/, ...)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True)
    return [name for name in listed.stdout.decode().split("\0") if name and (REPO / name).is_file()]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel built out of tree (the repo gets no build/), installed into a fresh venv; returns its bin/."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    for name in repo_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(root / "dist"), str(source)],
                   check=True, capture_output=True, timeout=600)
    (wheel,) = (root / "dist").glob("embed_pipeline-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if n.startswith("embed_pipeline_tests")]
    for bundled in ("data/demo_config.yaml", "data/corpus.jsonl", "data/eval/qrels/test.tsv", "dagster.yaml", "workspace.yaml"):
        assert f"embed_pipeline/bundled/{bundled}" in names
    for contract in ("eval_report", "served_pointer", "history_event"):  # the --json and file contracts' JSON Schemas
        assert f"embed_pipeline/schemas/{contract}.schema.json" in names

    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # --ignore-installed: this environment's own embed-pipeline (an editable install) is left alone.
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--ignore-installed", "--no-index",
                    "-q", str(wheel)], check=True, capture_output=True, env=clean_env(root), timeout=300)
    return venv / "bin"


def clean_env(home: Path) -> dict[str, str]:
    """No PYTHONPATH (the repo must not be importable), a HOME of its own (caches would show there)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DAGSTER_HOME", "EMBED_PIPELINE_CONFIG")}
    return {**env, "HOME": str(home), "HF_HUB_OFFLINE": "1"}


def test_the_wheel_installs_and_runs_from_a_directory_outside_the_repo(installed, tmp_path, tiny_model_path):
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    env = clean_env(home)

    def run(*command: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=900)
        assert not check or result.returncode == 0, result.stderr[-3000:]
        return result

    where = run(str(installed / "python"), "-c", "import embed_pipeline; print(embed_pipeline.__file__)").stdout.strip()
    assert where.startswith(str(installed.parent / "lib")) and "site-packages" in where, where
    assert "init" in run(str(installed / "embed-pipeline"), "--help").stdout

    fixture = write_project(tmp_path / "fixture", tiny_model_path)
    run(str(installed / "embed-pipeline"), "init", "proj", "--corpus", str(fixture.parent / "corpus.jsonl"),
        "--curated", str(fixture.parent / "curated"), "--eval", str(fixture.parent / "eval"),
        "--search-logs", str(fixture.parent / "search_logs.parquet"), "--base-model", tiny_model_path)
    config = work / "proj" / "config.yaml"
    settings = yaml.safe_load(config.read_text())
    fixture_settings = yaml.safe_load(fixture.read_text())
    settings.update({key: fixture_settings[key] for key in ("training", "mining", "gate")})  # the tiny model's settings
    config.write_text(yaml.safe_dump(settings))

    result = run(str(installed / "embed-pipeline"), "run", "--config", str(config), "--json")
    report = json.loads(result.stdout)
    assert report["gate"]["passed"] and report["models"]["candidate"]["version"] == "1"
    # The instance the CLI made for itself: the bundled dagster.yaml (pool limit, run monitoring), not Dagster's bare defaults.
    instance = yaml.safe_load((work / "proj" / "artifacts" / "dagster_home" / "dagster.yaml").read_text())
    assert instance["concurrency"]["pools"]["default_limit"] == 1 and instance["run_monitoring"]["enabled"]
    assert sorted(p.name for p in work.iterdir()) == ["proj"]
    assert sorted(p.name for p in (work / "proj").iterdir()) == ["README.md", "artifacts", "config.yaml", "dagster.yaml",
                                                                "workspace.yaml"]
    assert not [p for p in home.rglob("*") if p.is_file()], "nothing written to HOME (caches stay under artifacts/)"
