"""The namespaced test cluster itself: two real nodes, loopback only, failures reported with their cause."""

import pytest

from embed_pipeline_tests.ray_cluster import ScenarioFailed, require_cluster, run_scenario


def one_task_per_node(cluster) -> dict:
    """Scenario: a 1-CPU task pinned to each node reports its node and the address it runs on."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    ray.init(address=cluster.address)

    @ray.remote(num_cpus=1)
    def where() -> tuple[str, str]:
        return ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address()

    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    placed = ray.get([where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote()
                      for n in nodes])
    return {"nodes": nodes, "ran_on": [p[0] for p in placed], "ips": sorted({p[1] for p in placed}),
            "address": cluster.address}


def raises(cluster, message: str) -> dict:
    """Scenario: fails, so the harness must report the scenario's own error."""
    raise RuntimeError(message)


@pytest.mark.slow
def test_two_nodes_on_loopback(tmp_path):
    require_cluster()
    out = run_scenario("embed_pipeline_tests.test_ray_cluster:one_task_per_node", {}, tmp_path)
    assert len(out["nodes"]) == 2
    assert sorted(out["ran_on"]) == sorted(out["nodes"])
    assert out["ips"] == ["127.0.0.1"]
    assert out["address"].startswith("127.0.0.1:")


@pytest.mark.slow
def test_a_failing_scenario_reports_its_error(tmp_path):
    require_cluster()
    with pytest.raises(ScenarioFailed, match="RuntimeError: the scenario's own words"):
        run_scenario("embed_pipeline_tests.test_ray_cluster:raises", {"message": "the scenario's own words"}, tmp_path,
                     nodes=1)
