"""One TOML file -> typed, nested dataclasses.

Every section of the file is a dataclass; every key is a field with a type. Loading
checks both: an unknown key or a value of the wrong type is an error that names the file,
the dotted key and what was expected. ``--set section.key=value`` overrides are parsed as
TOML values and go through the same checks.

The user's own section names are accepted as they are: ``[train_dataset] train_manifest``,
``[validation_dataset] validation_manifest``, ``[tokenizer] tokenizer_path``,
``[logger] log_to_clearml``. A manifest field may be one path or a list of paths.

The package, one part a file: ``sections.py`` is every section and key (a dataclass per section, a
typed field per key, with its default and what it means: the file to read for what can be set);
``load.py`` reads a file and ``--set`` overrides into them, checking names and types; ``checks.py``
holds the rules across keys that a type alone cannot express. Import from ``asrlib.config``.
"""

from asrlib.config.checks import ConfigError, check_config, check_loss_config
from asrlib.config.load import from_dict, load_config, model_config_from_dict, parse_override, to_dict
from asrlib.config.sections import (
    INIT_MODULES,
    AttentionConfig,
    Config,
    ConvModuleConfig,
    EncoderConfig,
    FrontendConfig,
    JointConfig,
    LoggerConfig,
    LossConfig,
    Mamba2Config,
    ModelConfig,
    OptimConfig,
    PredictionConfig,
    SpecAugmentConfig,
    SubsamplingConfig,
    TokenizerConfig,
    TrainDatasetConfig,
    TrainerConfig,
    ValidationDatasetConfig,
)

__all__ = [
    "INIT_MODULES", "AttentionConfig", "Config", "ConfigError", "ConvModuleConfig", "EncoderConfig", "FrontendConfig",
    "JointConfig", "LoggerConfig", "LossConfig", "Mamba2Config", "ModelConfig", "OptimConfig", "PredictionConfig",
    "SpecAugmentConfig", "SubsamplingConfig", "TokenizerConfig", "TrainDatasetConfig", "TrainerConfig",
    "ValidationDatasetConfig", "check_config", "check_loss_config", "from_dict", "load_config",
    "model_config_from_dict", "parse_override", "to_dict",
]
