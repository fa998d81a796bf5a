"""m3bind: bind modality-specific medical CLIP models into one embedding space through text."""
from m3bind.errors import CheckpointError, ConfigError, DataError, M3BindError, TrainingError

__version__ = "0.1.0"

__all__ = ["M3BindError", "DataError", "ConfigError", "CheckpointError", "TrainingError", "__version__"]
