"""Where a run came from: code version and commit, packages, hardware, command line (env.json)."""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from epochal._version import __version__

# Written into the package when a wheel or sdist is built (see setup.py): the commit
# of an installed epochal, which has no .git to ask.
BUILD_INFO = "_build_info.json"
PACKAGE_DIR = Path(__file__).resolve().parent


def _git(*args: str, cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.decode(errors="replace")


def git_info(package_dir: Path = PACKAGE_DIR) -> dict:
    """The commit of the epochal code that runs, whatever the working directory.

    From the git checkout that holds the code (commit, dirty flag, hash of
    ``git diff HEAD``); else the commit stamped into the installed package at
    build time; else ``"unknown"`` with the reason.
    """
    checkout, why_not_checkout = _checkout_commit(package_dir)
    if checkout is not None:
        return checkout
    stamp, why_not_stamp = _stamped_commit(package_dir)
    if stamp is not None:
        return stamp
    return {"commit": "unknown", "dirty": None, "diff_sha256": None, "source": None,
            "reason": f"{why_not_checkout}; {why_not_stamp}"}


@functools.cache
def running_code_commit() -> dict:
    """git_info of the epochal that runs, read once a process: the code was imported then, so later edits of
    the checkout are not what runs (and a sweep's trials spare two git calls each, about 13 ms)."""
    return git_info()


def _checkout_commit(package_dir: Path) -> tuple[dict | None, str]:
    if _git("rev-parse", "--show-toplevel", cwd=package_dir) is None:
        return None, f"git finds no checkout holding {package_dir} (or git is missing)"
    # An installed package inside someone's repository (a .venv in a project) is
    # not that repository's code: only files git tracks count.
    if not (_git("ls-files", "--", ".", cwd=package_dir) or "").strip():
        return None, f"git does not track {package_dir}"
    commit = _git("rev-parse", "HEAD", cwd=package_dir)
    if commit is None:
        return None, f"the checkout holding {package_dir} has no commit yet"
    diff = _git("diff", "HEAD", cwd=package_dir) or ""
    return {
        "commit": commit.strip(),
        "dirty": bool(diff),
        "diff_sha256": hashlib.sha256(diff.encode()).hexdigest() if diff else None,
        "source": "checkout",
    }, ""


def _stamped_commit(package_dir: Path) -> tuple[dict | None, str]:
    try:
        info = json.loads((package_dir / BUILD_INFO).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, "the package has no build stamp (not built by its setup.py)"
    except (OSError, ValueError) as err:
        return None, f"the package's build stamp is unreadable ({err})"
    if not info.get("commit"):
        return None, f"the package was built without a commit: {info.get('reason', 'no reason recorded')}"
    return {"commit": info["commit"], "dirty": info.get("dirty"), "diff_sha256": info.get("diff_sha256"),
            "source": "build stamp"}, ""


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
        "epochal": __version__,
        "git": dict(running_code_commit()),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "seed": seed,
        "matmul_precision": torch.get_float32_matmul_precision(),  # train.matmul_precision as it took effect
        "command": sys.argv,
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **device_info(device),
    }


def banner(device: torch.device) -> str:
    """The start-up line: which device, which CUDA devices are visible, versions."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    cuda = f"CUDA {torch.version.cuda}" if torch.cuda.is_available() else "no CUDA"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
    return f"device {device} ({name}), CUDA_VISIBLE_DEVICES={visible}, torch {torch.__version__}, {cuda}"


def startup_warnings(device: torch.device, expected_gpus: list[str], expected_visible: str) -> list[str]:
    """The start-up check: warn when the GPU is not one of the expected models or
    CUDA_VISIBLE_DEVICES is not the expected value (the run goes on; the warning is recorded)."""
    warnings = []
    if expected_gpus:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"no GPU ({device})"
        if not any(model.lower() in name.lower() for model in expected_gpus):
            warnings.append(f"GPU is {name}, not one of the expected {', '.join(expected_gpus)} "
                            "(train.expected_gpus): numbers and speed may differ from the recipe's")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
    if expected_visible and visible != expected_visible:
        warnings.append(f"CUDA_VISIBLE_DEVICES is {visible}, not the expected {expected_visible} "
                        "(train.expected_cuda_visible_devices)")
    return warnings

