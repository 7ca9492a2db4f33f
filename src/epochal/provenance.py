"""Where a run came from: code version, packages, hardware, command line (env.json)."""

from __future__ import annotations

import datetime
import importlib.metadata
import hashlib
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch


def _git(*args: str, cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.decode(errors="replace")


def git_info(cwd: Path | None = None) -> dict:
    """Commit and dirtiness of the repository holding the working directory (or epochal's source)."""
    cwd = cwd or Path.cwd()
    commit = _git("rev-parse", "HEAD", cwd=cwd)
    if commit is None:
        return {"commit": None, "dirty": None, "diff_sha256": None}
    diff = _git("diff", "HEAD", cwd=cwd) or ""
    return {
        "commit": commit.strip(),
        "dirty": bool(diff),
        "diff_sha256": hashlib.sha256(diff.encode()).hexdigest() if diff else None,
    }


def device_info(device: torch.device) -> dict:
    info = {
        "device": str(device),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "cuda_available": torch.cuda.is_available(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
        info["driver"] = _nvidia_driver()
    return info


def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.decode().strip().splitlines()[0] if out.stdout else None


def collect(device: torch.device, seed: int) -> dict:
    return {
        "epochal": importlib.metadata.version("epochal"),
        "git": git_info(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "seed": seed,
        "command": sys.argv,
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **device_info(device),
    }


def banner(device: torch.device) -> str:
    """The start-up line seed 004 asks for: which device, which CUDA devices are visible, versions."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    cuda = f"CUDA {torch.version.cuda}" if torch.cuda.is_available() else "no CUDA"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
    return f"device {device} ({name}), CUDA_VISIBLE_DEVICES={visible}, torch {torch.__version__}, {cuda}"
