"""Run a Python module (`-m lorakit train ...`) on an emulated smaller GPU, and record PyTorch's peak.

    python bench/lib/capped_run.py --cap-gib 7.3 --peak-file PEAK.json -m lorakit train CONFIG --set ...

--cap-gib caps PyTorch's allocator (torch.cuda.set_per_process_memory_fraction) before the module runs, so
the program sees a card of that much allocatable memory (an 8 GB card is ~8 GiB minus the CUDA context).
At exit the peak allocated/reserved bytes and the allocator's retry and cudaMalloc/cudaFree counts go to
--peak-file. The module itself runs unchanged (runpy).
"""

from __future__ import annotations

import argparse
import atexit
import json
import runpy
import sys


def eight_gb_cap_gib() -> float:
    """An 8 GB card's memory less the CUDA context (lorakit's planner's CUDA_CONTEXT_BYTES): 7.25 GiB."""
    from lorakit.plan.memory import CUDA_CONTEXT_BYTES

    return 8 - CUDA_CONTEXT_BYTES / 2**30


def cap_allocator(cap_gib: float, *, device: int = 0, lorakit_settings: bool = True) -> None:
    """Make `device` a card of `cap_gib` GiB for PyTorch's allocator (an 8 GB card: ~7.25, its memory less the
    CUDA context). Capping starts CUDA, so lorakit's allocator settings (expandable segments, which `lorakit
    train` sets before CUDA starts) come first unless `lorakit_settings` is False (a peer's own defaults)."""
    import torch

    if lorakit_settings:
        from lorakit.runtime.device import use_expandable_segments

        use_expandable_segments()
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap_gib * 2**30 / total), device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cap-gib", type=float, default=None)
    parser.add_argument("--peak-file", required=True)
    parser.add_argument("-m", dest="module", required=True)
    args, rest = parser.parse_known_args()
    import torch

    if args.cap_gib is not None:
        cap_allocator(args.cap_gib, lorakit_settings=args.module == "lorakit")

    def record_peak() -> None:
        with open(args.peak_file, "w") as handle:
            stats = torch.cuda.memory_stats(0)
            # retries: allocations that hit the cap, freed the cache and tried again (each a device sync): a
            # capped run that needs them pays in speed what the cap saved in memory
            json.dump({"peak_allocated": torch.cuda.max_memory_allocated(0),
                       "peak_reserved": torch.cuda.max_memory_reserved(0),
                       "alloc_retries": stats.get("num_alloc_retries"), "ooms": stats.get("num_ooms"),
                       "device_allocs": stats.get("num_device_alloc"), "device_frees": stats.get("num_device_free")},
                      handle)

    atexit.register(record_peak)
    sys.argv = [args.module, *rest]
    runpy.run_module(args.module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
