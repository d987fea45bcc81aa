"""Parse each .gguf file once per test instead of once per reader.

Reading one exported GGUF back goes through `gguf.GGUFReader` several times: transformers' AutoConfig, its
model loader (and tokenizer loader) each build their own reader, and lorakit's fidelity check and the tests build
more. Every build walks the 49,152-token vocabulary and its merges field by field in Python (~2 s of CPU each on
the tiny models, ~80% of test_gguf.py's time). The readers are read-only views of the file (np.memmap mode 'r'),
so one reader per file *version* serves every caller: the key is the path with the file's inode, size and mtime,
so a file rewritten under the same name is parsed afresh. The bytes parsed and everything computed from them are
unchanged; only the repeated parsing goes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import gguf


@contextmanager
def gguf_parsed_once() -> Iterator[dict]:
    """Within the block, `gguf.GGUFReader(path)` (read-only mode) returns one shared reader per file version.

    transformers imports the class inside its loader (`from gguf import GGUFReader`), so replacing the module
    attribute reaches it as well as lorakit's and the tests' own `gguf.GGUFReader(...)` calls. Yields the cache
    (key -> reader), so a test can check that each file really was read."""
    real = gguf.GGUFReader
    cache: dict[tuple, object] = {}

    def reader(path, mode="r"):
        if mode != "r":
            return real(path, mode)
        stat = os.stat(path)
        key = (str(Path(path).resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if key not in cache:
            cache[key] = real(path, mode)
        return cache[key]

    gguf.GGUFReader = reader
    try:
        yield cache
    finally:
        gguf.GGUFReader = real
        cache.clear()
