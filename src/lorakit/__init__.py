"""lorakit: fine-tune, evaluate and chat with LoRA/QLoRA medical-education assistants on one GPU."""

from lorakit.config import RunConfig, load_config
from lorakit.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    HubAccessError,
    LorakitError,
    ModelLoadError,
    TrainingError,
)

__version__ = "0.1.0"

__all__ = [
    "RunConfig",
    "load_config",
    "LorakitError",
    "ConfigError",
    "DataError",
    "ModelLoadError",
    "HubAccessError",
    "CheckpointError",
    "TrainingError",
    "__version__",
]
