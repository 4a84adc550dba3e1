"""Connecting to the Ray cluster that `compute.engine: ray` names, and checking it can do the work.

Ray is an optional extra (`pip install 'embed-pipeline[cpu,ray]'`): it is imported inside these
functions only, so `engine: local` never needs it.

Two checks run before any work, so a misconfigured cluster is one clear error in seconds rather
than a hang or a half-written index:
- `connect`: `ray.init` against `compute.ray_address` within `compute.connect_timeout_seconds`.
  Ray itself retries an unreachable address for minutes; here an address nothing listens on is
  refused at the TCP level first, and a listener that never completes Ray's handshake runs into
  the timeout.
- `check_shared_storage`: one task pinned to every alive node reads a token the driver wrote into
  `artifacts_dir` and writes one back, which the driver then reads. A node with its own local
  folder of the same name passes a write test but fails this one: it is not the shared
  filesystem (NFS, EFS, Filestore) the driver writes the cache, shard files and checkpoints to.
"""

from __future__ import annotations

import socket
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from embed_pipeline.lib.config import ComputeConfig, ConfigError

INSTALL_HINT = "pip install 'embed-pipeline[cpu,ray]'"
STORAGE_CHECK_DIR = ".ray_storage_check"


class ClusterError(ConfigError):
    """The Ray cluster cannot be used: not installed, unreachable, or a node cannot see `artifacts_dir`."""


@dataclass(frozen=True)
class RayCluster:
    """The cluster this process is connected to: its address, nodes alive at connect time, the
    dashboard (None when the cluster runs without one) and this driver's job id."""

    address: str
    nodes: tuple[str, ...]
    dashboard_url: str | None
    job_id: str

    @property
    def job_url(self) -> str | None:
        """The dashboard's page for this driver's job (where its tasks, actors and logs are)."""
        return f"{self.dashboard_url}/#/jobs/{self.job_id}" if self.dashboard_url else None


def require_ray():
    """The `ray` module, or a `ClusterError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ClusterError(f"compute.engine is 'ray' but Ray is not installed: {INSTALL_HINT}") from None
    return ray


def connect(compute: ComputeConfig) -> RayCluster:
    """Connect this process to `compute.ray_address` (once; later calls reuse the connection).

    Raises `ClusterError` naming the address when nothing answers within
    `compute.connect_timeout_seconds`.
    """
    ray = require_ray()
    if not ray.is_initialized():
        _probe_tcp(compute.ray_address, compute.connect_timeout_seconds)
        _init_within(ray, compute.ray_address, compute.connect_timeout_seconds)
    nodes = tuple(n["NodeID"] for n in ray.nodes() if n["Alive"])
    return RayCluster(compute.ray_address, nodes, _dashboard_url(), ray.get_runtime_context().get_job_id())


# What `ray.init` said about the dashboard ("host:port", "" without one), kept because Ray's public
# API reports it only from `ray.init`; None while this process did not make the connection.
_connected_dashboard: str | None = None


def _dashboard_url() -> str | None:
    return f"http://{_connected_dashboard}" if _connected_dashboard else None


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of an explicit address ("host:port", "ray://host[:port]"); None for `auto`/`local`."""
    if address in ("auto", "local"):
        return None
    rest = address.removeprefix("ray://")
    host, sep, port = rest.rpartition(":")
    if not sep:
        return (rest, 10001) if address.startswith("ray://") else None
    if not port.isdigit():
        raise ClusterError(f"compute.ray_address {address!r}: the port {port!r} is not a number")
    return host.strip("[]"), int(port)


def _probe_tcp(address: str, timeout: float) -> None:
    target = _host_port(address)
    if target is None:
        return
    try:
        socket.create_connection(target, timeout=timeout).close()
    except OSError as exc:
        raise ClusterError(f"Ray cluster at {address!r} (compute.ray_address) is unreachable: "
                           f"{exc.strerror or exc} connecting to {target[0]}:{target[1]}") from None


def _init_within(ray, address: str, timeout: float) -> None:
    """`ray.init(address)` bounded by `timeout`: Ray's own retries run for minutes.

    The attempt runs in a daemon thread; on timeout it is abandoned (the process is about to
    exit with the error anyway, and a daemon thread does not hold it up).
    """
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        global _connected_dashboard
        try:
            # Tokenizer threads would fight the workers that already share each node's cores.
            context = ray.init(address=address, logging_level="WARNING", log_to_driver=False,
                               runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
            _connected_dashboard = context.dashboard_url or ""
            outcome.append(None)
        except BaseException as exc:  # handed to the caller below
            outcome.append(exc)

    worker = threading.Thread(target=attempt, name="ray-connect", daemon=True)
    worker.start()
    worker.join(timeout)
    if not outcome:
        raise ClusterError(f"Ray cluster at {address!r} (compute.ray_address) did not answer within {timeout:g} s "
                           "(compute.connect_timeout_seconds)")
    if outcome[0] is not None:
        first = (str(outcome[0]).strip().splitlines() or [type(outcome[0]).__name__])[0]
        raise ClusterError(f"cannot connect to the Ray cluster at {address!r} (compute.ray_address): {first}") from outcome[0]


def _storage_probe(folder: str, token_name: str, token: str) -> dict:
    """On one node: read the driver's token from `folder`, write this node's answer beside it."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    where = f"{ray.util.get_node_ip_address()} ({node[:12]})"
    path = Path(folder)
    try:
        seen = (path / token_name).read_text()
    except OSError as exc:
        return {"node": node, "problem": f"node {where} cannot read {path}: {exc.strerror or exc}"}
    if seen != token:
        return {"node": node, "problem": f"node {where} sees a different {path} (not the driver's shared folder)"}
    try:
        (path / f"{token_name}.{node}").write_text(token)
    except OSError as exc:
        return {"node": node, "problem": f"node {where} cannot write to {path}: {exc.strerror or exc}"}
    return {"node": node, "problem": None}


def check_shared_storage(artifacts_dir: Path, timeout: float = 60.0) -> list[str]:
    """Check that every alive node reads and writes the same `artifacts_dir` as this driver.

    Returns the node ids checked; raises `ClusterError` naming every node that cannot (and why).
    The probes hold no CPU, so they run even while encode actors or training workers hold all of
    them. Needs a connection (`connect`).
    """
    ray = require_ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    folder = Path(artifacts_dir).resolve() / STORAGE_CHECK_DIR
    folder.mkdir(parents=True, exist_ok=True)
    token_name = f"token-{uuid.uuid4().hex}"
    token = uuid.uuid4().hex
    (folder / token_name).write_text(token)
    try:
        probe = ray.remote(num_cpus=0, max_retries=0)(_storage_probe)
        nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
        refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(
            str(folder), token_name, token) for node in nodes]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        if len(ready) < len(refs):
            raise ClusterError(f"shared-storage check of {artifacts_dir}: {len(refs) - len(ready)} of {len(refs)} node(s) "
                               f"did not answer within {timeout:g} s")
        answers = ray.get(refs)
        problems = [a["problem"] for a in answers if a["problem"]]
        problems += [f"node {a['node'][:12]} wrote its answer, but the driver cannot see it in {folder}"
                     for a in answers if not a["problem"] and not (folder / f"{token_name}.{a['node']}").exists()]
        if problems:
            raise ClusterError(f"artifacts_dir {artifacts_dir} is not shared by every Ray node (it must be one "
                               f"filesystem, e.g. NFS, mounted at the same path on all of them): {'; '.join(problems)}")
        return nodes
    finally:
        for path in folder.glob(f"{token_name}*"):
            path.unlink()


def connect_and_check(compute: ComputeConfig, artifacts_dir: Path) -> RayCluster:
    """`connect`, then `check_shared_storage`: what every Ray step (and `embed-pipeline run`'s input
    check) does before any work."""
    cluster = connect(compute)
    check_shared_storage(artifacts_dir, timeout=compute.connect_timeout_seconds)
    return cluster


def alive_actors(class_fragment: str) -> int | None:
    """Actors alive now whose class name contains `class_fragment`, from Ray's state API;
    None when the cluster runs without a dashboard (the state API lives there)."""
    if not _dashboard_url():
        return None
    from ray.util.state import list_actors

    alive = list_actors(filters=[("state", "=", "ALIVE")], limit=10_000, timeout=10, raise_on_missing_output=False)
    return sum(class_fragment in a.class_name for a in alive)
