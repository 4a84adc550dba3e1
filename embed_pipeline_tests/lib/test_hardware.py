"""Hardware probes: the cores a process may use (affinity mask, cgroup v2 quota) and bf16 instructions."""

import os

import pytest

from embed_pipeline.lib.hardware import available_cpus, cpu_bf16_instructions, cpus_from_cpu_max, set_cpu_threads


@pytest.mark.parametrize(
    ("text", "os_count", "expected"),
    [
        ("max 100000\n", 8, 8),  # no quota
        ("150000 100000\n", 8, 2),  # 1.5 CPUs of time rounds up to 2 threads
        ("50000 100000\n", 8, 1),  # half a CPU still gets one thread
        ("400000 100000\n", 2, 2),  # a quota above the affinity mask does not add cores
        ("not a quota", 6, 6),
        ("", 6, 6),
    ],
)
def test_cpus_from_cpu_max(text, os_count, expected):
    assert cpus_from_cpu_max(text, os_count) == expected


def test_available_cpus_reads_the_given_cpu_max(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("100000 100000\n")
    assert available_cpus(cpu_max) == 1
    cpu_max.write_text("max 100000\n")
    assert available_cpus(cpu_max) == affinity
    assert available_cpus(tmp_path / "absent") == affinity


def test_cpu_threads_fit_the_cores_this_process_may_use():
    import torch

    cpus = available_cpus()
    assert 1 <= cpus <= len(os.sched_getaffinity(0))
    before = torch.get_num_threads()
    try:
        assert set_cpu_threads() == cpus == torch.get_num_threads()
        assert set_cpu_threads(1) == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_bf16_instructions_from_cpu_flags():
    assert cpu_bf16_instructions(frozenset({"avx512f", "amx_tile", "amx_bf16", "avx512_bf16"})) == "amx"
    assert cpu_bf16_instructions(frozenset({"avx512f", "avx512_bf16"})) == "avx512_bf16"
    assert cpu_bf16_instructions(frozenset({"avx2", "fma"})) is None
    assert cpu_bf16_instructions(frozenset()) is None
