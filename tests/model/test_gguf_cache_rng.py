"""Converting a GGUF file once leaves torch's RNG as it found it: the first run (which converts) and every later
run (which reads the cache) start LoRA from the same random numbers for the same seed."""

from __future__ import annotations

import torch

from export.export_runs import tiny_run
from export.gguf_parse_cache import gguf_parsed_once
from lorakit.export.run_export import ExportRequest, export_run
from lorakit.model.gguf_cache import cached_gguf_conversion


def test_conversion_does_not_move_the_rng(tiny_llama_dir, tmp_path_factory, tmp_path, monkeypatch):
    run_dir = tiny_run(tiny_llama_dir, tmp_path_factory.mktemp("train-rng"), tmp_path / "run")
    # The export only makes a GGUF file to convert: no fidelity check (its read-back of the file is export's concern,
    # tests/export/test_gguf.py). Parsing uses numpy, not torch's RNG.
    with gguf_parsed_once():
        request = ExportRequest("gguf", output=tmp_path / "gguf", quant="f16", fidelity=False)
        gguf = export_run(run_dir, request).output / "run-f16.gguf"
        monkeypatch.setenv("LORAKIT_CACHE_DIR", str(tmp_path / "cache"))
        torch.manual_seed(1234)
        before = torch.get_rng_state()
        converted = cached_gguf_conversion(gguf)
    assert (converted / "model.safetensors").is_file()
    assert torch.equal(torch.get_rng_state(), before)
