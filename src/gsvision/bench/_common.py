"""What every benchmark records: the machine it ran on, and where its JSON goes."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

__all__ = ["machine_info", "write_result", "RESULTS_DIR"]

RESULTS_DIR = Path("benchmarks/results")


def machine_info() -> dict:
    """CPU/GPU, core count and library versions, so figures can be compared honestly."""
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    try:
        import numba

        info["numba"] = numba.__version__
    except ImportError:
        pass
    return info


def write_result(name: str, data: dict, out_dir: str | Path | None = None) -> Path:
    """Write ``data`` (plus machine info) to ``<out_dir>/<name>.json``; return the path."""
    out = Path(out_dir) if out_dir is not None else RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    payload = {"benchmark": name, "machine": machine_info(), **data}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
