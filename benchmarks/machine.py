"""What the benchmarks share: the machine a benchmark ran on, in one line (CPU model, cores,
library versions), and the writing of its results table."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np


def describe_machine() -> str:
    """E.g. 'Intel(R) Xeon(R) ... @ 2.80GHz, 2 cores (torch threads 2); Python 3.11.7, ...'."""
    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = ""
    if torch.cuda.is_available():
        gpu = f"; GPU {torch.cuda.get_device_name(0)}"
    return (
        f"{cpu}, {os.cpu_count()} cores (torch threads {torch.get_num_threads()}){gpu}; "
        f"Python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}"
    )


def write_table(lines: list[str], out: Path) -> None:
    """Print the results table ``lines`` and write it to ``out``, newline-terminated."""
    table = "\n".join(lines)
    print()
    print(table)
    out.write_text(table + "\n")
    print(f"\nwritten to {out}")
