"""The pipeline as one code location in a team's existing deployment: their workspace.yaml names
`embed_pipeline.definitions` beside their own location, the config path comes from the
environment, and nothing depends on this repo's working directory."""

import os
import subprocess
import sys
from pathlib import Path

import yaml

from embed_pipeline.lib.bundled import INSTANCE_TEMPLATE, bundled

TEAM_MODULE = '''
import dagster as dg


@dg.asset
def team_table() -> None:
    """A trivial asset of another team's code location."""


defs = dg.Definitions(assets=[team_table])
'''


def validate(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_dagster_validates_a_workspace_holding_our_location_beside_another(tmp_path, project):
    (tmp_path / "team_pipelines.py").write_text(TEAM_MODULE)
    (tmp_path / "workspace.yaml").write_text(yaml.safe_dump({"load_from": [
        {"python_module": {"module_name": "embed_pipeline.definitions", "location_name": "embed_pipeline"}},
        {"python_file": {"relative_path": "team_pipelines.py", "location_name": "team_pipelines"}},
    ]}))
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(bundled(INSTANCE_TEMPLATE).read_text())
    env = {**os.environ, "DAGSTER_HOME": str(home), "EMBED_PIPELINE_CONFIG": str(project)}

    result = validate(tmp_path, env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "embed_pipeline" in output and "team_pipelines" in output
    assert "Validation successful" in output

    # The same workspace with a location that does not import fails, naming it: the check has teeth.
    (tmp_path / "team_pipelines.py").write_text("import not_a_module_anywhere\n")
    broken = validate(tmp_path, env)
    assert broken.returncode == 1 and "team_pipelines" in broken.stdout + broken.stderr


def test_build_definitions_binds_a_config_given_per_deployment(project):
    import dagster as dg

    from embed_pipeline.definitions import build_defs, build_definitions

    assert build_defs is build_definitions
    defs = build_definitions(str(project))
    assert defs.resolve_job_def("training_job") is not None
    pipeline = defs.resources["pipeline"]
    assert pipeline.config_path == str(project) and pipeline.config.corpus == project.parent / "corpus.jsonl"
    from_env = build_definitions(dg.EnvVar("LEGAL_SEARCH_CONFIG"))
    assert from_env.resources["pipeline"].config_path == dg.EnvVar("LEGAL_SEARCH_CONFIG")
