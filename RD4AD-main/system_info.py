"""What a run ran on: device choice, hardware description, library versions, peak memory."""
from __future__ import annotations

import os
import platform
import resource
from pathlib import Path

import torch
import torchvision

from errors import RDError
from process_setup import huge_pages_enabled

__all__ = ["cpu_model", "describe_hardware", "hardware_label", "library_versions", "peak_memory_mb",
           "reset_peak_memory", "resolve_device", "synchronize"]


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available; an explicit ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise RDError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise RDError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RDError(f"--device {name}: CUDA is not available on this machine; use --device cpu or auto")
    return device


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def describe_hardware(device: torch.device) -> dict[str, str | int]:
    info: dict[str, str | int] = {
        "device": device.type,
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count() or 0,
        "torch_threads": torch.get_num_threads(),
        "cpu_huge_pages": huge_pages_enabled(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_count"] = torch.cuda.device_count()
    return info


def hardware_label(info: dict) -> str:
    """One line for tables: the GPU name, or the CPU with its core count."""
    if info.get("device") == "cuda":
        return str(info.get("gpu", "cuda"))
    return f"{info.get('cpu', 'cpu')} ({info.get('cpu_cores', '?')} cores)"


def library_versions() -> dict[str, str]:
    return {"torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
            "python": platform.python_version()}


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    """Max allocated CUDA memory since the last reset, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
