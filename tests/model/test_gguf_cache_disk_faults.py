"""Issue 22, fault matrix row 7: the model cache (runtime/cache_dir.py) full or read-only while a GGUF is
converted into it. Was: a raw OSError traceback, and a half-written `.NAME.tmp-PID` folder left in the cache
(holding model.safetensors) that nothing removed. Now: one message naming the cache and LORAKIT_CACHE_DIR, and
the cache holds nothing of the failed conversion; the next run converts normally.

The GGUF reading is replaced by the tiny model (converting a real GGUF takes most of a minute); the writing
is lorakit's own."""

from __future__ import annotations

import errno
import os

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lorakit.errors import DiskFullError, ModelLoadError
from lorakit.model.gguf_cache import cached_gguf_conversion


@pytest.mark.parametrize(("fault", "expected", "message"), [
    (errno.ENOSPC, DiskFullError, "The disk is full: converting the GGUF weights into the model cache {cache} "
                                  "failed ([Errno 28] No space left on device"),
    (errno.EROFS, ModelLoadError, "Cannot write the model cache {cache} (Read-only file system)."),
], ids=["full", "read-only"])
def test_a_full_or_read_only_model_cache_is_one_message_and_holds_nothing_half_written(
        tiny_llama_dir, tokenizer_dir, tmp_path, monkeypatch, fault, expected, message):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + bytes(64))
    monkeypatch.setenv("LORAKIT_CACHE_DIR", str(tmp_path / "cache"))
    load_model, load_tokenizer = AutoModelForCausalLM.from_pretrained, AutoTokenizer.from_pretrained
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained",
                        lambda *args, **kwargs: load_model(tiny_llama_dir, dtype=torch.float32))
    faults = [fault]

    def tokenizer(*args, **kwargs):
        loaded = load_tokenizer(tokenizer_dir)
        save = loaded.save_pretrained

        def save_after_the_weights(directory, *a, **k):  # the weights are already written: a half-written folder
            assert (directory / "model.safetensors").is_file()
            if faults:
                code = faults.pop()
                raise OSError(code, os.strerror(code), str(directory))
            return save(directory, *a, **k)

        loaded.save_pretrained = save_after_the_weights
        return loaded

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", tokenizer)
    cache = tmp_path / "cache" / "gguf"
    with pytest.raises(expected) as raised:
        cached_gguf_conversion(gguf)
    assert raised.value.message.startswith(message.format(cache=cache))
    assert "LORAKIT_CACHE_DIR" in raised.value.hint and list(cache.iterdir()) == []
    converted = cached_gguf_conversion(gguf)  # the next run converts normally
    assert (converted / "model.safetensors").is_file() and [p.name for p in cache.iterdir()] == [converted.name]
