"""What this process may run on: the device, the CPU cores it may use, whether bf16 is native.

Probes only (no model code), so every stage that sizes threads or picks a precision asks the
same questions the same way.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def pick_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_flags() -> frozenset[str]:
    """The instruction-set flags of this CPU (Linux `/proc/cpuinfo`; empty where unreadable)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_bf16_instructions(flags: frozenset[str] | None = None) -> str | None:
    """The CPU's bf16 matrix instructions: "amx" (Intel AMX tiles), "avx512_bf16" (bf16 dot products:
    AMD Zen 4+, Intel Cooper Lake+), or None (bf16 would be emulated, slower than fp32).

    For encoding both pay: bf16 autocast encodes SciFact abstracts with all-MiniLM-L6-v2 ~2x
    faster than fp32 on an AVX512-BF16 AMD EPYC (docs/scaling.md), with vectors at cosine > 0.9999.
    """
    flags = cpu_flags() if flags is None else flags
    if "amx_bf16" in flags:
        return "amx"
    return "avx512_bf16" if "avx512_bf16" in flags else None


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AMX tiles or AVX512-BF16): training's `precision: auto`.

    bf16 autocast makes MiniLM-sized training (attention dropout 0) faster on both: 1.6x at 256
    tokens with AMX; 1.9x at 256 tokens and 1.4x at 64 on an AVX512-BF16 EPYC without AMX
    (`benchmarks/train_step_speed.py`, figures in benchmarks/README.md).
    """
    return cpu_bf16_instructions() is not None


def cuda_has_native_bf16(device: str = "cuda") -> bool:
    """Whether the GPU computes bf16 in hardware (compute capability 8.0+, Ampere and later)."""
    import torch

    return torch.cuda.get_device_capability(device)[0] >= 8


def cpus_from_cpu_max(text: str, os_count: int) -> int:
    """Cores allowed by a cgroup v2 `cpu.max` text ("QUOTA PERIOD", microseconds), at most `os_count`.

    "max 100000" means no quota; "150000 100000" (1.5 CPUs of time per period) rounds up to 2,
    since torch threads are whole. Unreadable text leaves `os_count`.
    """
    with contextlib.suppress(ValueError):
        quota, period = text.split()[:2]
        if quota != "max":
            return max(1, min(os_count, -(-int(quota) // int(period))))
    return max(1, os_count)


def available_cpus(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """CPU cores this process may really use: the affinity mask, capped by a cgroup v2 quota.

    torch's default thread count is the machine's physical cores, which in a container with a
    2-CPU quota on a 64-core host means 64 threads fighting over 2 cores (many times slower).
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    with contextlib.suppress(OSError):
        return cpus_from_cpu_max(Path(cpu_max).read_text(), cpus)
    return max(1, cpus)


def set_cpu_threads(threads: int = 0) -> int:
    """Set torch's intra-op threads for CPU encoding (0 = `available_cpus()`); returns the count."""
    import torch

    count = threads or available_cpus()
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count
