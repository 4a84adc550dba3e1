"""Outside the repo: the default demo config under ./artifacts, `embed-pipeline init`, the
instance seeding, and where MLflow keeps artifacts with a tracking server."""

import pytest
import yaml

from embed_pipeline.cli import main
from embed_pipeline.lib.bundled import DEMO_CONFIG_NAME, INSTANCE_TEMPLATE, bundled
from embed_pipeline.lib.config import load_config, parse_config
from embed_pipeline.starter import default_config, init_project


def test_the_default_config_reads_the_bundled_data_and_writes_under_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = default_config()
    assert path == tmp_path / "artifacts" / "demo_config.yaml"
    config = load_config(path)
    shipped = load_config(bundled(DEMO_CONFIG_NAME))
    assert config.artifacts_dir == tmp_path / "artifacts"
    assert config.corpus == shipped.corpus and config.eval == shipped.eval and config.curated_pairs == shipped.curated_pairs
    assert config.general_reference == shipped.general_reference and config.general_reference.is_file()
    assert config.training == shipped.training and config.registered_model_name == shipped.registered_model_name
    assert config.tracking_uri == f"sqlite:///{tmp_path / 'artifacts' / 'mlflow.db'}"  # the embedded default
    mtime = path.stat().st_mtime_ns
    assert default_config() == path and path.stat().st_mtime_ns == mtime  # rewritten only when it would change
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifacts"]


def test_a_tracking_server_keeps_the_artifacts_a_local_store_a_folder_under_artifacts(tmp_path):
    base = {"corpus": "c.jsonl", "artifacts_dir": "a", "eval": "e.parquet"}
    local = parse_config(base, tmp_path)
    assert local.mlflow_artifacts_uri == (tmp_path / "a" / "mlruns").as_uri()
    database = parse_config({**base, "mlflow_tracking_uri": "postgresql://u@db:5432/mlflow"}, tmp_path)
    assert database.mlflow_artifacts_uri == (tmp_path / "a" / "mlruns").as_uri()
    for uri in ("http://mlflow.internal:5000", "https://mlflow.example.com"):
        assert parse_config({**base, "mlflow_tracking_uri": uri}, tmp_path).mlflow_artifacts_uri is None


def test_init_writes_a_project_whose_config_names_the_users_files(tmp_path, project, tiny_model_path, capsys):
    data = project.parent
    target = tmp_path / "legal-search"
    assert main(["init", str(target), "--corpus", str(data / "corpus.jsonl"), "--curated", str(data / "curated"),
                 "--eval", str(data / "eval"), "--search-logs", str(data / "search_logs.parquet"),
                 "--base-model", tiny_model_path]) == 0
    assert sorted(p.name for p in target.iterdir()) == ["README.md", "config.yaml", "dagster.yaml", "workspace.yaml"]
    config = load_config(target / "config.yaml")
    assert config.corpus == data / "corpus.jsonl" and config.search_logs == data / "search_logs.parquet"
    assert config.curated_pairs.queries == data / "curated" / "queries.jsonl"
    assert config.eval.qrels == data / "eval" / "qrels" / "test.tsv"
    assert config.base_model == tiny_model_path and config.artifacts_dir == target / "artifacts"
    assert config.registered_model_name == "legal-search"
    text = (target / "config.yaml").read_text()
    assert text.count("\n# ") >= 8, "commented"
    assert (target / "dagster.yaml").read_text() == bundled(INSTANCE_TEMPLATE).read_text()
    workspace = yaml.safe_load((target / "workspace.yaml").read_text())
    assert workspace["load_from"][0]["python_module"]["module_name"] == "embed_pipeline.definitions"
    readme = (target / "README.md").read_text()
    for command in ("embed-pipeline run --config config.yaml", "embed-pipeline ui --config config.yaml",
                    'embed-pipeline search "a query" --config config.yaml'):
        assert command in readme
    assert "wrote config.yaml, dagster.yaml, workspace.yaml, README.md" in capsys.readouterr().err

    # Never over an existing project; a file that is not there is named.
    assert main(["init", str(target)]) == 2
    assert f"{target / 'config.yaml'} exists" in capsys.readouterr().err
    assert main(["init", str(tmp_path / "other"), "--corpus", str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl does not exist" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def test_init_without_files_leaves_placeholders_the_config_check_names(tmp_path):
    init_project(tmp_path / "p")
    with pytest.raises(Exception, match=r"corpus: .*data/corpus.jsonl does not exist"):
        load_config(tmp_path / "p" / "config.yaml")
    settings = yaml.safe_load((tmp_path / "p" / "config.yaml").read_text())
    assert settings["curated_pairs"] == "data/curated_pairs.parquet" and "search_logs" not in settings


def test_a_missing_dagster_home_is_created_and_seeded_with_the_bundled_instance(tmp_path, project, monkeypatch):
    from embed_pipeline.console import dagster_home

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    home = dagster_home(load_config(project))
    assert (home / "dagster.yaml").read_text() == bundled(INSTANCE_TEMPLATE).read_text()
    assert "run_monitoring" in yaml.safe_load((home / "dagster.yaml").read_text())
    monkeypatch.delenv("DAGSTER_HOME")
    default = dagster_home(load_config(project))
    assert default == load_config(project).artifacts_dir / "dagster_home" and (default / "dagster.yaml").is_file()
