"""A real multi-node Ray cluster for tests: every address on loopback, torn down whatever happens.

Ray binds the machine's own interface address even when told 127.0.0.1, so the cluster and the
driver that uses it run inside namespaces of their own (`unshare` as root):
- a network namespace with only `lo` up: Ray binds 127.0.0.1 and no traffic leaves the namespace;
- a PID namespace whose first process is the scenario's: when it ends (normally, on an error, or
  killed through `unshare --kill-child` when `unshare` dies: at the test's timeout, or with the
  test process, which `unshare` is tied to by a parent-death signal), the kernel kills every
  raylet, GCS server and worker left in it, so no cluster outlives its test;
- a mount namespace with a private tmpfs on /tmp/ray: Ray writes `/tmp/ray/ray_current_cluster`
  and its session folders there, and concurrent clusters (other tests, other users) never see each
  other's.
Everything else on the filesystem (the test's tmp_path, the fixture model) is the same as outside,
which is what a shared `artifacts_dir` looks like to the nodes.

A test calls `run_scenario("package.module:function", params, workdir)`: a subprocess starts the
cluster (`ray.cluster_utils.Cluster`: a head and N-1 more nodes, each its own raylet with
`cpus_per_node` CPUs), calls `function(cluster, **params)` with a `RayTestCluster`, writes what it
returns (JSON) and tears the cluster down; `run_scenario` returns that dict, or raises
`ScenarioFailed` with the scenario's traceback and the log's tail. The scenario runs in the
subprocess, so it imports what it needs itself and returns plain JSON values.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import shutil
import subprocess
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# Ray sizes each node's object store at 30% of RAM by default; two test nodes need far less.
OBJECT_STORE_BYTES = 256 * 1024**2
NAMESPACE_COMMAND = ["unshare", "--net", "--pid", "--fork", "--kill-child", "--mount-proc", "--"]
SETUP = "ip link set lo up && mkdir -p /tmp/ray && mount -t tmpfs tmpfs /tmp/ray"


class ScenarioFailed(AssertionError):
    """The scenario raised, or its process died or timed out; the message carries its traceback and log tail."""


@dataclass
class RayTestCluster:
    """What a scenario gets: the running `Cluster`, its address (what `ray.init` / `compute.ray_address`
    take) and the nodes other than the head, which a fault scenario may remove."""

    cluster: object
    address: str
    worker_nodes: list = field(default_factory=list)

    def remove_worker(self, index: int = 0) -> str:
        """Kill one non-head node (its raylet and every worker on it); returns its node id."""
        node = self.worker_nodes.pop(index)
        node_id = node.node_id
        self.cluster.remove_node(node, allow_graceful=False)
        return node_id


@functools.cache
def unavailable_reason() -> str | None:
    """Why a namespaced Ray cluster cannot run here (None when it can): no ray, no unshare, not root,
    or namespaces refused (a container without CAP_SYS_ADMIN)."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return "ray is not installed (pip install 'embed-pipeline[cpu,ray]')"
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare or ip (util-linux, iproute2) is not on PATH"
    if os.geteuid() != 0:
        return "network/PID/mount namespaces need root (unshare)"
    probe = subprocess.run([*NAMESPACE_COMMAND, "bash", "-c", SETUP], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return f"unshare refused the namespaces: {probe.stderr.strip().splitlines()[-1:] or probe.returncode}"
    return None


def require_cluster() -> None:
    """Skip the calling test, with the reason, where `run_scenario` cannot work."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"no namespaced Ray cluster: {reason}")


def run_scenario(target: str, params: dict, workdir: Path, nodes: int = 2, cpus_per_node: float = 1,
                 timeout: float = 600, env: dict | None = None) -> dict:
    """Run `target` ("module:function") against a fresh `nodes`-node cluster in its own namespaces.

    `params` (JSON values) are passed as keyword arguments; the function's return value (JSON) is
    returned here. `workdir` receives the spec, the result and `cluster.log` (the subprocess's
    stdout and stderr, Ray's included). `env` is added to this process's environment, which the
    subprocess, the raylets and their workers inherit (PYTHONPATH, HF_HUB_OFFLINE, ...).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    spec = workdir / "scenario.json"
    result = workdir / "result.json"
    log_path = workdir / "cluster.log"
    result.unlink(missing_ok=True)
    spec.write_text(json.dumps({"target": target, "params": params, "nodes": nodes, "cpus_per_node": cpus_per_node,
                                "result": str(result)}))
    child_env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1", **(env or {})}
    # The worktree must win on the workers too (they import the pipeline by module name).
    root = str(Path(__file__).resolve().parents[1])
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (root, child_env.get("PYTHONPATH", "")) if p)
    command = f"{SETUP} && exec {sys.executable} -m embed_pipeline_tests.ray_cluster {spec}"
    with open(log_path, "w") as log:
        try:
            done = subprocess.run([*NAMESPACE_COMMAND, "bash", "-c", command], stdout=log, stderr=subprocess.STDOUT,
                                  env=child_env, timeout=timeout, preexec_fn=_die_with_parent)
        except subprocess.TimeoutExpired:
            raise ScenarioFailed(f"{target} did not finish within {timeout:.0f} s\n{_tail(log_path)}") from None
    outcome = json.loads(result.read_text()) if result.exists() else None
    if outcome is None:
        raise ScenarioFailed(f"{target} wrote no result (exit code {done.returncode})\n{_tail(log_path)}")
    if "error" in outcome:
        raise ScenarioFailed(f"{target} raised:\n{outcome['error']}\n{_tail(log_path)}")
    return outcome["value"]


def _die_with_parent() -> None:
    """In the forked child before exec: SIGKILL it when this process dies (Linux prctl
    PR_SET_PDEATHSIG), so a test killed from outside takes its cluster with it."""
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


def _tail(path: Path, lines: int = 40) -> str:
    text = path.read_text(errors="replace").splitlines() if path.exists() else []
    return "--- cluster.log (last lines) ---\n" + "\n".join(text[-lines:])


def _main(spec_path: str) -> int:
    """Inside the namespaces: start the cluster, run the scenario, write the result, tear down."""
    import ray
    from ray.cluster_utils import Cluster

    spec = json.loads(Path(spec_path).read_text())
    result = Path(spec["result"])
    node_args = {"num_cpus": spec["cpus_per_node"], "object_store_memory": OBJECT_STORE_BYTES}
    cluster = None
    try:
        cluster = Cluster(initialize_head=True, head_node_args={**node_args, "include_dashboard": True, "dashboard_port": 0})
        workers = [cluster.add_node(**node_args) for _ in range(spec["nodes"] - 1)]
        cluster.wait_for_nodes()
        module, _, name = spec["target"].partition(":")
        scenario = getattr(importlib.import_module(module), name)
        value = scenario(RayTestCluster(cluster, cluster.address, workers), **spec["params"])
        result.write_text(json.dumps({"value": value}))
        return 0
    except BaseException:
        result.write_text(json.dumps({"error": traceback.format_exc()}))
        return 1
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1]))
