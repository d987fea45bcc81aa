"""Parse each .gguf file once per test instead of once per reader.

Reading one exported GGUF back goes through `gguf.GGUFReader` several times: transformers' AutoConfig, its
model loader (and tokenizer loader) each build their own reader, and lorakit's fidelity check and the tests build
more. Every build walks the 49,152-token vocabulary and its merges field by field in Python (~2 s of CPU each on
the tiny models, ~80% of test_gguf.py's time). The readers are read-only views of the file (np.memmap mode 'r'),
so one reader per file *version* serves every caller: the key is the file's device, inode, size and mtime (not
its path: an export reads its file back in the staging folder, then renames the folder into place, and the
renamed file is the same version), so a file rewritten under the same name is parsed afresh. transformers'
`load_gguf_checkpoint` without tensors (what AutoConfig and the GGUF quantizer read: the config and tokenizer
fields, turned into Python values one by one) is kept per file version too, and each caller gets its own deep
copy. The bytes parsed and everything computed from them are unchanged; only the repeated parsing goes.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from contextlib import contextmanager

import gguf


@contextmanager
def gguf_parsed_once() -> Iterator[dict]:
    """Within the block, `gguf.GGUFReader(path)` (read-only mode) returns one shared reader per file version.

    transformers imports the class inside its loader (`from gguf import GGUFReader`), so replacing the module
    attribute reaches it as well as lorakit's and the tests' own `gguf.GGUFReader(...)` calls. Yields the cache
    (key -> reader), so a test can check that each file really was read."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    real, real_load = gguf.GGUFReader, gguf_utils.load_gguf_checkpoint
    cache: dict[tuple, object] = {}
    loaded: dict[tuple, dict] = {}

    def reader(path, mode="r"):
        if mode != "r":
            return real(path, mode)
        key = _file_version(path)
        if key not in cache:
            cache[key] = real(path, mode)
        return cache[key]

    def load_gguf_checkpoint(path, return_tensors=False, model_to_load=None, torch_dtype=None):
        if return_tensors or model_to_load is not None:
            return real_load(path, return_tensors, model_to_load, torch_dtype)
        key = _file_version(path)
        if key not in loaded:
            loaded[key] = real_load(path, return_tensors=False)
        return copy.deepcopy(loaded[key])

    gguf.GGUFReader, gguf_utils.load_gguf_checkpoint = reader, load_gguf_checkpoint
    try:
        yield cache
    finally:
        gguf.GGUFReader, gguf_utils.load_gguf_checkpoint = real, real_load
        cache.clear()
        loaded.clear()


def _file_version(path) -> tuple:
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns
