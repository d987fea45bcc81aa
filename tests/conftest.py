"""Shared fixtures: tiny random Llama and Phi3 models built from the fixture tokenizer, saved as safetensors
folders and reloaded through lorakit's real loader."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from pathlib import Path

import pytest
import torch

from lorakit.training.metrics import SilentReporter

# The session's caches in a temporary folder (tests/session_caches.py); full garbage collections that skip what
# the session imported (tests/gc_freeze.py).
pytest_plugins = ["session_caches", "gc_freeze"]

# SmolLM2's tokenizer and ChatML template, extracted once from the embedded GGUF (see tests/fixtures/README.md).
TOKENIZER_DIR = Path(__file__).resolve().parent / "fixtures" / "smollm2-tokenizer"
# Phi-4-mini's config.json numbers that memory planning reads (the planner's tests plan for it).
PHI4_MINI = {"model_type": "phi3", "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 32,
             "num_attention_heads": 24, "num_key_value_heads": 8, "vocab_size": 200064, "tie_word_embeddings": True}


@pytest.fixture(autouse=True)
def _undo_liger_module_patches():
    """liger patches transformers' phi3/llama modules (RoPE, RMSNorm and MLP classes) for every model of the
    architecture built later in the process; a GPU test that applies liger must not hand its Triton modules to
    the CPU models of the tests after it."""
    from transformers.models.llama import modeling_llama
    from transformers.models.phi3 import modeling_phi3

    saved = [(module, dict(vars(module))) for module in (modeling_llama, modeling_phi3)]
    yield
    for module, attributes in saved:
        for name, value in attributes.items():
            if vars(module).get(name) is not value:
                setattr(module, name, value)


def _tiny_config(architecture: str):
    from transformers import LlamaConfig, Phi3Config

    common = dict(
        vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True, bos_token_id=1,
        # No pad_token_id: nn.Embedding(padding_idx=2) would zero row 2, and with tied embeddings the logit of
        # <|im_end|> (id 2 = eos = pad) would be stuck at 0, so the model could never learn to stop.
        eos_token_id=2, pad_token_id=None,
        # A wider init than the 0.02 default: with hidden 32 and frozen tied embeddings, 0.02 caps every logit
        # below ~1, so no adapter could make the model confident enough to learn when to stop.
        initializer_range=0.2,
    )
    if architecture == "llama":
        return LlamaConfig(**common)
    return Phi3Config(**common, partial_rotary_factor=0.75)


def build_tiny_model(directory: Path, architecture: str = "llama", seed: int = 0) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_tiny_config(architecture))
    model.save_pretrained(directory, safe_serialization=True)
    AutoTokenizer.from_pretrained(TOKENIZER_DIR).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tokenizer_dir() -> Path:
    assert TOKENIZER_DIR.is_dir(), f"fixture tokenizer missing at {TOKENIZER_DIR}"
    return TOKENIZER_DIR


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="session")
def tiny_phi3_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-phi3"), "phi3")


QA_PAIRS = [
    ("What is hypertension?", "Persistently high blood pressure in the arteries."),
    ("What does the heart do?", "It pumps blood through the body."),
    ("What is insulin?", "A hormone that lowers blood glucose."),
    ("What are platelets?", "Cell fragments that help blood clot."),
    ("What is anemia?", "A shortage of healthy red blood cells or hemoglobin."),
    ("What do kidneys do?", "They filter waste from the blood into urine."),
    ("What is a fever?", "A body temperature above the normal range."),
    ("What is asthma?", "A chronic condition that narrows the airways."),
    ("What is a vaccine?", "A preparation that trains the immune system."),
    ("What are antibiotics for?", "Treating bacterial infections, not viral ones."),
    ("What is cholesterol?", "A fatty substance carried in the blood by lipoproteins."),
    ("What is a stroke?", "Brain injury from blocked or bleeding blood vessels."),
]


def write_qa_jsonl(path: Path, pairs=QA_PAIRS) -> Path:
    path.write_text("".join(json.dumps({"instruction": q, "response": a}) + "\n" for q, a in pairs))
    return path


@pytest.fixture
def qa_file(tmp_path) -> Path:
    return write_qa_jsonl(tmp_path / "qa.jsonl")


def tiny_run_config(model_dir: Path, data_file: Path, output_dir: Path, **training):
    """A RunConfig for a few fast CPU steps on a tiny model."""
    from lorakit.config import RunConfig

    train = dict(batch_size=2, gradient_accumulation_steps=1, max_steps=4, learning_rate=1e-2, logging_steps=1,
                 eval_steps=2, save_steps=2, save_total_limit=3, lr_scheduler="constant")
    train.update(training)
    return RunConfig.model_validate({
        "seed": 7,
        "output_dir": str(output_dir),
        "model": {"name": str(model_dir), "max_length": 128},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.1},
        "training": train,
        "data": {"train_file": str(data_file), "validation_split": 0.2, "test_split": 0.2, "system_prompt": "Be careful."},
        "inference": {"max_new_tokens": 8, "temperature": 0.0, "disclaimer": "Not medical advice."},
    })


@pytest.fixture
def cleanup_dir():
    made = []
    yield made.append
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


def write_config_file(tmp_path: Path, model_dir: Path, *, seed: int, training: dict, **sections) -> Path:
    """A YAML config (plus tmp_path/qa.jsonl) for running the real `lorakit train` CLI on a tiny model."""
    import yaml

    data = write_qa_jsonl(tmp_path / "qa.jsonl")
    config = {
        "seed": seed, "output_dir": str(tmp_path / "run"), "model": {"name": str(model_dir), "max_length": 128},
        "lora": {"r": 4, "alpha": 8}, "training": training,
        "data": {"train_file": str(data), "system_prompt": "Be careful."},
        **sections,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class Recorder(SilentReporter):
    """A training reporter that keeps what a run says: its messages and each logged train loss; raises
    KeyboardInterrupt after `crash_after_step` (a user's Ctrl-C at a known point)."""

    def __init__(self, crash_after_step: int | None = None):
        self.messages: list[str] = []
        self.losses: list[float] = []
        self.crash_after_step = crash_after_step

    def message(self, text: str) -> None:
        self.messages.append(text)

    def step(self, step: int, metrics: dict) -> None:
        if "train_loss" in metrics:
            self.losses.append(metrics["train_loss"])
        if step == self.crash_after_step:
            raise KeyboardInterrupt


class _BothHooks:
    """Two TrainerHooks as one: `first`'s call, then `second`'s."""

    def __init__(self, first, second):
        self.first, self.second = first, second

    def session_ready(self, session) -> None:
        self.first.session_ready(session)
        self.second.session_ready(session)

    def step_starting(self, trainer, step, groups) -> None:
        self.first.step_starting(trainer, step, groups)
        self.second.step_starting(trainer, step, groups)

    def step_finished(self, trainer, step, groups) -> None:
        self.first.step_finished(trainer, step, groups)
        self.second.step_finished(trainer, step, groups)


def train_with(monkeypatch, *, hooks=None, objective=None) -> None:
    """Make every `lorakit.training.loop.train` of this test (called directly as `loop.train`, or by the CLI) run
    with `hooks` (added to any given before) and `objective`: the Trainer's public seams, in place of patching
    its internals."""
    from lorakit.training import loop

    current = loop.train

    def train(config, **kwargs):
        if hooks is not None:
            kwargs["hooks"] = hooks if kwargs.get("hooks") is None else _BothHooks(kwargs["hooks"], hooks)
        if objective is not None:
            kwargs["objective"] = objective
        return current(config, **kwargs)

    monkeypatch.setattr(loop, "train", train)


def spy_on_steps(monkeypatch) -> list[list[list[int]]]:
    """The micro-batches (example indices) of every optimizer step that completed, in order."""
    from lorakit.training.trainer import TrainerHooks

    steps = []

    class Spy(TrainerHooks):
        def step_finished(self, trainer, step, groups):
            steps.append([list(group) for group in groups])

    train_with(monkeypatch, hooks=Spy())
    return steps


def final_adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    """The LoRA weights a finished run shipped (RUN/final/adapter_model.safetensors)."""
    from safetensors.torch import load_file

    return load_file(Path(run_dir) / "final" / "adapter_model.safetensors")


def lora_model_with_nonzero_b(model_dir, device="cpu", dtype=torch.float32, **settings):
    """A saved tiny model with LoRA r8 (dropout 0.1) whose lora_B is not zero, so that B matters."""
    from transformers import AutoModelForCausalLM

    from lorakit.config import LoraSettings
    from lorakit.model.adapters import attach_lora

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device)
    model = attach_lora(model, LoraSettings(**{"r": 8, "alpha": 16, "dropout": 0.1, **settings}), quantized=False,
                        gradient_checkpointing=False)
    for name, parameter in model.named_parameters():  # lora_B starts at zero: give it values so B matters
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.5)
    return model


# Runs under torchrun (tests/training/test_data_parallel.py, test_fsdp.py).
def launcher_env(cache: Path) -> dict:
    """The environment of a `torchrun` test run: offline, one thread per process, no launcher variables inherited."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", LORAKIT_CACHE_DIR=str(cache), PYTHONUNBUFFERED="1")
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def free_port(host: str = "127.0.0.1") -> int:
    """A port on `host` that was free a moment ago (nothing listens on it once this returns)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@pytest.fixture
def taken_port():
    """A port that a program on 127.0.0.1 listens on for the whole test."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def unresolvable(host: str) -> str:
    """This machine's resolver's words for `host`, a name it cannot resolve (glibc: 'Name or service not known')."""
    with pytest.raises(socket.gaierror) as failure:
        socket.getaddrinfo(host, 80)
    return failure.value.strerror


def two_process_torchrun(*args: str, entry: list[str] | None = None) -> list[str]:
    """Two processes on a free port running `lorakit ARGS` (or `entry`)."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
            *(entry or ["-m", "lorakit"]), *args]


def max_adapter_diff(a: Path, b: Path) -> float:
    first, second = final_adapter(a), final_adapter(b)
    assert sorted(first) == sorted(second) and first
    return max(float((first[k] - second[k]).abs().max()) for k in first)


def metric_records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def max_metrics_diff(a: Path, b: Path, max_steps: int) -> float:
    """Largest difference of the logged losses and learning rates of two runs that both logged steps 1..max_steps."""
    first, second = metric_records(a), metric_records(b)
    assert [r["step"] for r in first] == [r["step"] for r in second] == list(range(1, max_steps + 1))
    assert [sorted(r) for r in first] == [sorted(r) for r in second]
    return max(abs(x[k] - y[k]) for x, y in zip(first, second) for k in ("train_loss", "val_loss", "learning_rate")
               if k in x)


def train_with_disabled(model_dir: Path, data_file: Path, output_dir: Path, monkeypatch, disabled: str, **training):
    """A 3-step packed tiny run (2 micro-batches a step) with LORAKIT_DISABLE=`disabled`: its logged training
    losses and final adapter, to compare a run with an optimisation on and off."""
    from lorakit.training.loop import train

    monkeypatch.setenv("LORAKIT_DISABLE", disabled)
    train(tiny_run_config(model_dir, data_file, output_dir, max_steps=3, gradient_accumulation_steps=2, packing=True,
                          save_steps=10, eval_steps=10, **training))
    return [r["train_loss"] for r in metric_records(output_dir) if "train_loss" in r], final_adapter(output_dir)


def assert_trained_identically(run, other) -> None:
    """Two `train_with_disabled` results: the same 3 losses and the same adapter, to the bit."""
    (losses, adapter), (other_losses, other_adapter) = run, other
    assert len(losses) == 3 and losses == other_losses
    assert adapter.keys() == other_adapter.keys() and adapter
    assert all(torch.equal(adapter[name], other_adapter[name]) for name in adapter)
