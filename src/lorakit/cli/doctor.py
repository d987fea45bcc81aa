"""`lorakit doctor`: what this machine can do, before anyone waits for a download or a GPU."""

from __future__ import annotations

import os
import platform
import shutil

from rich.table import Table

from lorakit.cli.console import console
from lorakit.runtime.cache_dir import cache_root


def environment_report() -> list[tuple[str, str]]:
    """(check, finding) rows; never includes the token itself, only whether one is configured."""
    import torch

    rows = [("python", platform.python_version()), ("torch", torch.__version__)]
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        rows.append(("device", f"{props.name}, {props.total_memory / 2**30:.1f} GiB VRAM, CUDA {torch.version.cuda}"))
        rows.append(("bf16", "supported" if torch.cuda.is_bf16_supported() else "not supported (fp16 + loss scaling)"))
    else:
        rows.append(("device", "CPU only (no CUDA GPU found): training works, slowly; QLoRA needs a GPU"))
    rows.append(("bitsandbytes", _bitsandbytes_status(torch.cuda.is_available())))
    cache = cache_root()
    cache.mkdir(parents=True, exist_ok=True)
    rows.append(("free disk", f"{shutil.disk_usage(cache).free / 2**30:.1f} GiB at {cache}"))
    rows.append(("hugging face token", _token_status()))
    return rows


def _bitsandbytes_status(cuda: bool) -> str:
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:  # a broken install raises more than ImportError
        return f"not usable ({type(exc).__name__}); QLoRA (model.quantization: nf4) unavailable"
    return "usable" if cuda else "installed, but needs a CUDA GPU"


def _token_status() -> str:
    from huggingface_hub import get_token

    if os.environ.get("HF_TOKEN"):
        return "configured (HF_TOKEN environment variable)"
    if get_token():
        return "configured (stored by `hf auth login`)"
    return "not configured: gated models such as microsoft/Phi-4-mini-instruct need `hf auth login`"


def doctor() -> None:
    """Check Python, torch, the GPU and its VRAM, bitsandbytes, free disk and Hugging Face login."""
    table = Table(title="lorakit doctor", show_header=False)
    for check, finding in environment_report():
        table.add_row(check, finding)
    console.print(table)
