"""The pipeline as a Dagster Component, driven by the real `dg` CLI in a fresh `create-dagster` project:
two instances on two corpora in one code location, each with its own keys, names and artifacts.

The project lives in a throwaway venv that sees this venv's packages (a `.pth` line naming its
site-packages: `--system-site-packages` would give the base interpreter's, not this venv's) and
holds editable installs of this package and of the project, with no dependency downloaded: nothing
is installed into, or left in, the test's venv. `dg` lists the component types of the interpreter
that runs it, so `dg`, `dagster` and `create-dagster` run on the throwaway venv's python.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

from embed_pipeline.definitions import build_definitions
from embed_pipeline_tests.fixture_data import write_project

pytestmark = pytest.mark.slow  # starts `dg` processes, and one test trains

ROOT = Path(__file__).resolve().parent.parent
TYPE = "embed_pipeline.EmbeddingPipeline"
INSTANCES = {"support": "support", "contracts": "legal/contracts"}  # defs folder -> key prefix
IN_PROCESS = json.dumps({"execution": {"config": {"in_process": {}}}})  # one process: no per-step imports of torch


def _script_shim(venv: Path, name: str) -> None:
    """`venv/bin/NAME`: this venv's console script run by the throwaway venv's python (what installing it there makes)."""
    source = Path(shutil.which(name, path=str(Path(sys.executable).parent)) or "")
    assert source.is_file(), f"{name} is not installed beside {sys.executable}: pip install -e '.[dev]'"
    body = source.read_text().split("\n", 1)[1]
    target = venv / "bin" / name
    target.write_text(f"#!{venv / 'bin' / 'python'}\n{body}")
    target.chmod(0o755)


class DgProject:
    """A fresh `create-dagster` project in a throwaway venv; `dg(...)` runs the real CLI in it."""

    def __init__(self, root: Path):
        self.root = root
        self.venv = root / "venv"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(self.venv)], check=True)
        site = Path(sysconfig.get_paths(vars={"base": str(self.venv), "platbase": str(self.venv)})["purelib"])
        parents = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
        (site / "zz_parent_site_packages.pth").write_text("".join(f"{p}\n" for p in parents))
        for name in ("dg", "dagster", "create-dagster"):
            _script_shim(self.venv, name)
        self.home = root / "dagster_home"
        self.home.mkdir()
        self.env = {**os.environ, "VIRTUAL_ENV": str(self.venv), "DAGSTER_HOME": str(self.home), "HF_HUB_OFFLINE": "1",
                    "PATH": f"{self.venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}", "COLUMNS": "200",
                    "DAGSTER_DISABLE_TELEMETRY": "1"}
        # The package under test first on the path, before any copy installed in this venv; its
        # editable install in the throwaway venv registers its entry points (`dg` reads them there).
        self.env["PYTHONPATH"] = str(ROOT)
        self.pip_install(ROOT)
        imported = self.run([str(self.venv / "bin" / "python"), "-c", "import embed_pipeline; print(embed_pipeline.__file__)"], cwd=root)
        assert imported.stdout.strip() == str(ROOT / "embed_pipeline" / "__init__.py")
        self.run(["create-dagster", "project", "teamproj", "--no-uv-sync"], cwd=root)
        self.project = root / "teamproj"
        self.pip_install(self.project)

    def pip_install(self, path: Path) -> None:
        self.run([str(self.venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                  "--no-index", "-e", str(path)], cwd=self.root)

    def run(self, args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
        result = subprocess.run(args, cwd=cwd, env=self.env, capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, f"{' '.join(args)} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        return result

    def dg(self, *args: str, timeout: int = 300) -> str:
        return self.run(["dg", *args], cwd=self.project, timeout=timeout).stdout


@pytest.fixture(scope="module")
def dg_project(tmp_path_factory, tiny_model_path) -> tuple[DgProject, dict[str, Path]]:
    """The project with one EmbeddingPipeline instance per corpus, scaffolded by `dg scaffold defs`."""
    root = tmp_path_factory.mktemp("dg")
    project = DgProject(root)
    configs = {name: write_project(root / "corpora" / name, tiny_model_path) for name in INSTANCES}
    for name, prefix in INSTANCES.items():
        project.dg("scaffold", "defs", TYPE, name, "--config-path", str(configs[name]), "--key-prefix", prefix)
    return project, configs


def test_dg_lists_scaffolds_checks_and_lists_two_instances_apart(dg_project):
    project, configs = dg_project
    components = json.loads(project.dg("list", "components", "--json"))
    assert TYPE in {item["key"] for item in components["items"]}

    defs_dir = project.project / "src" / "teamproj" / "defs"
    for name, prefix in INSTANCES.items():
        written = yaml.safe_load((defs_dir / name / "defs.yaml").read_text())
        assert written == {"type": TYPE, "attributes": {"config_path": str(configs[name]), "key_prefix": prefix}}

    checked = project.dg("check", "defs")
    assert "All component YAML validated successfully" in checked and "All definitions loaded successfully" in checked

    listed = json.loads(project.dg("list", "defs", "--json"))
    mine = {name: {kind: [d for d in listed[kind] if d["source"] == f"src/teamproj/defs/{name}/defs.yaml:1"]
                   for kind in ("assets", "asset_checks", "jobs", "sensors", "schedules")} for name in INSTANCES}
    for kind in mine["support"]:  # every definition comes from one of the two defs.yaml
        assert len(mine["support"][kind]) + len(mine["contracts"][kind]) == len(listed[kind]), kind
    base = build_definitions("unused.yaml")  # each instance holds all of it, under its own keys and names
    base_assets = {k.to_user_string() for k in base.resolve_asset_graph().get_all_asset_keys()}
    for name, prefix in INSTANCES.items():
        suffix = "_" + prefix.replace("/", "_")
        defs = mine[name]
        assert {a["asset_key"] for a in defs["assets"]} == {f"{prefix}/{a}" for a in base_assets}
        assert all(d.startswith(prefix + "/") for a in defs["assets"] for d in a["dependency_keys"])
        assert len(defs["asset_checks"]) == sum(len(c.check_keys) for c in base.asset_checks)
        assert all(c["asset_key"].startswith(prefix + "/") for c in defs["asset_checks"])
        for kind in ("jobs", "sensors", "schedules"):
            assert {d["name"] for d in defs[kind]} == {d.name + suffix for d in getattr(base, kind)}, kind
    # The stateless IO manager is one object for both; every other resource is an instance's own.
    assert sorted(r["name"] for r in listed["resources"]) == ["io_manager"] + sorted(
        f"{r}_{s}" for r in ("mlflow", "pipeline", "query_generator") for s in ("legal_contracts", "support"))


def artifacts(config: Path) -> dict[str, int]:
    folder = config.parent / "artifacts"
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")} if folder.exists() else {}


def test_one_instances_training_job_writes_its_own_report_only(dg_project, monkeypatch):
    import dagster as dg

    project, configs = dg_project
    before = artifacts(configs["contracts"])

    project.dg("launch", "--job", "training_job_support", "--config-json", IN_PROCESS, timeout=600)

    reports = sorted((configs["support"].parent / "artifacts" / "assets" / "eval_report").glob("*/eval_report.json"))
    assert len(reports) == 1, reports
    report = json.loads(reports[0].read_text())
    assert report["models"]["candidate"]["model_dir"].startswith(str(configs["support"].parent / "artifacts"))
    assert artifacts(configs["contracts"]) == before

    monkeypatch.setenv("DAGSTER_HOME", str(project.home))
    with dg.DagsterInstance.get() as instance:
        [run] = instance.get_runs()
        assert run.job_name == "training_job_support"
        assert instance.get_latest_materialization_event(dg.AssetKey(["support", "eval_report"])) is not None
        assert instance.get_latest_materialization_event(dg.AssetKey(["legal", "contracts", "eval_report"])) is None
        assert instance.get_latest_materialization_event(dg.AssetKey("eval_report")) is None
