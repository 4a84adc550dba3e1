"""The cluster checks that run before any work: Ray installed, the cluster answering, and
`artifacts_dir` shared by every node (a node that sees another folder is named)."""

import socket
import subprocess
import sys
import unittest.mock
from pathlib import Path

import pytest

from embed_pipeline.cli import main
from embed_pipeline.lib.config import ConfigError, parse_config
from embed_pipeline_tests.fixture_data import write_project
from embed_pipeline_tests.ray_cluster import require_cluster, run_scenario


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_engine_ray_without_ray_installed_is_a_config_error():
    raw = {"corpus": "c.jsonl", "artifacts_dir": "a", "curated_pairs": {"pairs": "p.csv"}, "compute": {"engine": "ray"}}
    with unittest.mock.patch("importlib.util.find_spec", return_value=None), \
            pytest.raises(ConfigError, match=r"compute: engine 'ray' needs Ray installed: pip install 'embed-pipeline\[cpu,ray\]'"):
        parse_config(raw, Path("/tmp"))


@pytest.mark.slow
def test_run_against_an_unreachable_cluster_exits_2_before_any_work(tmp_path, tiny_model_path, capsys):
    """A real tracking server (engine ray requires one, and `run` opens it first), a closed Ray port."""
    pytest.importorskip("ray")
    from embed_pipeline_tests.test_ray_training import mlflow_server

    address = f"127.0.0.1:{_closed_port()}"
    with mlflow_server(tmp_path / "mlflow") as tracking:
        config = write_project(tmp_path / "project", tiny_model_path, mlflow_tracking_uri=tracking,
                               compute={"engine": "ray", "ray_address": address, "connect_timeout_seconds": 5})
        assert main(["run", "--config", str(config)]) == 2
    out = capsys.readouterr().err
    assert f"config error: Ray cluster at '{address}' (compute.ray_address) is unreachable" in out
    assert not (tmp_path / "project" / "artifacts" / "assets").exists()  # no step ran


def test_a_listener_that_never_answers_is_a_timeout_error():
    """Something listens at the address but never completes Ray's handshake: Ray alone would retry
    for minutes; `connect` gives up after connect_timeout_seconds (in a subprocess: the abandoned
    attempt must not linger in this test process)."""
    pytest.importorskip("ray")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        code = ("from embed_pipeline.lib.config import ComputeConfig\n"
                "from embed_pipeline.lib.ray_runtime import ClusterError, connect\n"
                "try:\n"
                f"    connect(ComputeConfig(engine='ray', ray_address={address!r}, connect_timeout_seconds=3))\n"
                "except ClusterError as exc:\n"
                "    print('ERROR', exc)\n")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert f"ERROR Ray cluster at '{address}' (compute.ray_address) did not answer within 3 s" in done.stdout, done.stderr


def node_without_the_shared_folder(cluster, artifacts: str) -> dict:
    """Scenario: a third node joins from a mount namespace where `artifacts` is an empty tmpfs
    (its own local folder of the same name), then the driver runs the storage check."""
    import time

    import ray

    from embed_pipeline.lib.config import ComputeConfig
    from embed_pipeline.lib.ray_runtime import ClusterError, connect_and_check

    ray_cli = Path(sys.executable).parent / "ray"
    Path(artifacts).mkdir(parents=True, exist_ok=True)
    # Killed with the rest of the cluster when the scenario's PID namespace ends.
    subprocess.Popen(["unshare", "--mount", "--", "bash", "-c",
                      f"mount -t tmpfs tmpfs {artifacts} && exec {ray_cli} start --address {cluster.address} "
                      "--num-cpus 1 --block --disable-usage-stats"],
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ray.init(address=cluster.address)
    deadline = time.monotonic() + 120
    while sum(n["Alive"] for n in ray.nodes()) < 3:
        if time.monotonic() > deadline:
            raise TimeoutError("the third node did not join within 120 s")
        time.sleep(0.5)
    before = {n["NodeID"] for n in ray.nodes() if n["Alive"]} - {n.node_id for n in [cluster.cluster.head_node,
                                                                                        *cluster.worker_nodes]}
    compute = ComputeConfig(engine="ray", ray_address=cluster.address, connect_timeout_seconds=60)
    try:
        connect_and_check(compute, Path(artifacts))
    except ClusterError as exc:
        return {"error": str(exc), "outsider": sorted(before)}
    return {"error": None, "outsider": sorted(before)}


@pytest.mark.slow
def test_a_node_that_cannot_see_artifacts_dir_is_named_before_any_work(tmp_path):
    require_cluster()
    artifacts = tmp_path / "artifacts"
    out = run_scenario("embed_pipeline_tests.lib.test_ray_runtime:node_without_the_shared_folder",
                       {"artifacts": str(artifacts)}, tmp_path / "cluster", nodes=2)
    assert len(out["outsider"]) == 1
    assert out["error"] is not None, "the check passed although one node has its own folder"
    assert f"artifacts_dir {artifacts} is not shared by every Ray node" in out["error"]
    assert f"({out['outsider'][0][:12]}) cannot read {artifacts.resolve()}/.ray_storage_check" in out["error"]
    assert out["error"].count("cannot read") == 1  # only the outsider is named
    assert not list((artifacts / ".ray_storage_check").iterdir())  # the probe's files are removed
