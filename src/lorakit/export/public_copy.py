"""What of a run may leave this machine: the config.yaml and manifest.json that an exported or pushed folder holds.

The run's own copies name the training files (a name such as `jane_doe_MRN448812_notes.jsonl` is itself patient
data), the records' source URLs, the output folder and where the base model lies on this machine. The public
copies keep hashes, sizes, counts, settings and the base model's Hub id, and replace every path:
- data.train_file becomes `not-published.jsonl` (`not-published-N.jsonl` per file when there were several): the
  config still validates, and a retrain from it fails by naming a file that plainly was left out;
- output_dir becomes the config default; eval.probe_files become `not-published-probes-N.jsonl`;
- model.name, when it was a local folder or GGUF file, becomes the base model's public name (the Hub id its
  config.json recorded, else the folder's name), as adapter_config.json already names it;
- a model.chat_template file becomes `chat_template.jinja`, the copy of that template saved with the adapter.
"""

from __future__ import annotations

import copy

from lorakit.config import EMBEDDED_MODEL_ALIAS, RunConfig
from lorakit.data.chat_template import NAMED_TEMPLATES
from lorakit.run.manifest import public_base_model_id

__all__ = ["PUBLIC_COPY_NOTE", "public_config", "public_manifest"]

PUBLIC_COPY_NOTE = ("lorakit export: data file names, source URLs and local paths removed; hashes, counts and "
                    "settings kept")


def _placeholders(original: str | list[str], stem: str) -> str | list[str]:
    if isinstance(original, str):
        return f"{stem}.jsonl"
    return [f"{stem}-{number}.jsonl" for number in range(1, len(original) + 1)]


def public_config(config: RunConfig, manifest: dict) -> RunConfig:
    """`config` without data file names, local paths or the output folder (see the module docstring)."""
    values = config.model_dump(mode="json")
    values["output_dir"] = RunConfig.model_fields["output_dir"].default
    values["data"]["train_file"] = _placeholders(config.data.train_file, "not-published")
    values["eval"]["probe_files"] = _placeholders(config.eval.probe_files, "not-published-probes")
    if config.model.name != EMBEDDED_MODEL_ALIAS:
        values["model"]["name"] = public_base_model_id(manifest)
    if config.model.chat_template is not None and config.model.chat_template not in NAMED_TEMPLATES:
        values["model"]["chat_template"] = "chat_template.jinja"
    return RunConfig.model_validate(values)


def _public_data(data: dict) -> dict:
    """Scalars (counts, flags) and the hash; file names, formats by file, URLs and skipped lines become counts."""
    public = {key: value for key, value in data.items()
              if key == "sha256" or value is None or isinstance(value, bool | int | float)}
    counted = {"train_files": "train_file_count", "source_urls": "source_url_count",
               "skipped_invalid_lines": "skipped_invalid_line_count"}
    for key, count_key in counted.items():
        if key in data:
            public[count_key] = len(data[key])
    if "formats" in data:  # {file: format} -> the formats in file order
        public["file_formats"] = list(data["formats"].values())
    return public


def public_manifest(manifest: dict) -> dict:
    """`manifest` without data file names, source URLs or local paths; everything else kept."""
    public = copy.deepcopy(manifest)
    model_id = public_base_model_id(manifest)
    public["base_model"] = {key: value for key, value in manifest["base_model"].items() if key != "local_path"}
    public["base_model"]["id"] = model_id
    if "identity" in public:
        public["identity"]["model_id"] = model_id
    public["data"] = _public_data(manifest["data"])
    public["public_copy"] = PUBLIC_COPY_NOTE
    return public
