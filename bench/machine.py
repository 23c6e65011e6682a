"""What a benchmark ran on, recorded with its figures (these machines are shared and noisy)."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch


def machine_info(device: torch.device | str = "cpu") -> dict[str, Any]:
    """Cores, threads, platform, torch, device (and GPU name), load average at the start."""
    device = torch.device(device)
    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "torch": torch.__version__, "device": device.type,
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "load_avg_start": os.getloadavg()}
