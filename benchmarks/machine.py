"""What a benchmark ran on, recorded in every report: absolute times and some ratios (bf16 autocast, channels-last)
depend on the CPU's instruction set, and this project's machines have differed from one session to the next."""
from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

# the CPU features a result here can hinge on: bfloat16 compute (autocast pays off only with it) and the vector width
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def _cpuinfo(field: str) -> str | None:
    """The first `field : value` of /proc/cpuinfo (Linux), or None."""
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.is_file() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.split(":", 1)[0].strip() == field), None)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """Which of CPU_FLAGS the CPU has ([] where /proc/cpuinfo is missing)."""
    have = set((_cpuinfo("flags") or "").split())
    return [flag for flag in CPU_FLAGS if flag in have]


def describe(device: torch.device | str = "cpu") -> dict:
    """{"platform", "cpu", "cpu_flags", "cpu_count", "torch", "threads", "device"} (+ "gpu" on CUDA)."""
    device = torch.device(device)
    machine = {"platform": platform.platform(), "cpu": cpu_model(), "cpu_flags": cpu_flags(),
               "cpu_count": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
               "device": str(device)}
    if device.type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(device)
    return machine
