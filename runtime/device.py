"""Where a run computes: the device, the GPUs a process may see, tensor layout and mixed precision."""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import torch
from torch import nn

from runtime.errors import ConfigError


def choose_gpus(device: str, gpu_id: int, distributed: bool, visible: str | None) -> tuple[str | None, str]:
    """(value for CUDA_VISIBLE_DEVICES, or None to leave it; the --device to use), decided before CUDA starts.

    A single process uses one GPU: --gpu_id, or N of --device cuda:N. --distributed uses every visible GPU.
    When the user set CUDA_VISIBLE_DEVICES, it is left alone and cuda:N counts within those GPUs."""
    match = re.fullmatch(r"cuda(?::(\d+))?", device)
    if device not in ("auto", "cpu") and not match:
        raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}")
    index = match.group(1) if match else None
    if device == "cpu" or (visible is not None and not distributed):
        return None, device
    if distributed:
        if index is not None:
            raise ConfigError(f"--device {device} picks one GPU, but --distributed runs one process on every visible "
                              "GPU: choose the GPUs with CUDA_VISIBLE_DEVICES and pass --device cuda")
        return None, device
    if index is not None:
        if gpu_id not in (0, int(index)):
            raise ConfigError(f"--device {device} and --gpu_id {gpu_id} name different GPUs; give one of them")
        return index, "cuda"
    return str(gpu_id), device


def resolve_device(device: str) -> torch.device:
    """'auto' picks CUDA when available; a CUDA device that PyTorch does not see is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    chosen = torch.device(device)
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device} was given but PyTorch sees no CUDA GPU; use --device cpu")
    if chosen.type == "cuda" and (chosen.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"--device {device}: only {torch.cuda.device_count()} GPU(s) are visible "
                          f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")
    return chosen


def place_on(net: nn.Module, device: torch.device) -> nn.Module:
    """Move net to device; on a CPU its 4-D weights go channels_last, which makes the convolutions of an
    evaluation forward pass about 1.2x faster there (benchmarks/evaluation.py) and training no slower."""
    net = net.to(device)
    return net.to(memory_format=torch.channels_last) if device.type == "cpu" else net


def cpu_has_fast_bfloat16(cpuinfo: str | None = None) -> bool:
    """True when the CPU has AMX or AVX512-BF16 units, where bfloat16 autocast is faster than float32.

    `cpuinfo` is the text of /proc/cpuinfo (read when not given; no such file means no)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = set(cpuinfo.split())
    return "amx_bf16" in flags or "avx512_bf16" in flags


def autocast_dtype(device: torch.device, mixedprec: bool) -> torch.dtype | None:
    """float16 on CUDA, bfloat16 on CPUs that run it fast, else None (float32)."""
    if not mixedprec:
        return None
    if device.type == "cuda":
        return torch.float16
    if cpu_has_fast_bfloat16():
        return torch.bfloat16
    print("--mixedprec: this CPU has no fast bfloat16 units, training in float32", file=sys.stderr)
    return None
