"""Typed, validated run configs: schema defaults <- one YAML file <- dotted command-line overrides.

    from vlrl.config import load_config, TrainConfig
    cfg = load_config("configs/grpo_tiny.yaml", ["rollout.group_size=4"], schema=TrainConfig)

- Every section forbids unknown keys: a typo is a ConfigError that names the file or override, the
  dotted key and a close valid name, e.g.
  `configs/x.yaml: rollout.group_sise: unknown key (did you mean 'group_size'?)`.
- Values are checked as strictly: numbers are finite and never booleans (`train.lr=true` is an
  error), algorithm names must be those of the tables in `vlrl.algos` (with "did you mean"), and
  combinations whose maths would be silently wrong are refused (gspo without
  seq_mean_token_mean, reinforce with ppo_epochs > 1, a group of 1 for a group-relative
  advantage), in every stage too.
- Path fields (model.path, data.train, data.eval, reward.functions files, train.output_dir,
  train.resume): `./x` and `../x` are relative to the folder of the YAML file that sets them, or
  to the working directory for an override; other relative paths are kept as given.
- `dump_config` writes the resolved config as YAML; loading that file gives an equal config.
- `config_template` writes the defaults with `???` at each required key (`vlrl config` without a
  file); `load_config` refuses a `???` left in, naming the key.
- `reference_markdown` documents every key of both schemas (docs/config.md, `vlrl config --reference`).
- `TrainConfig.stages` is a curriculum; `apply_stage(cfg, i)` gives the config of stage i.
- Schemas: `TrainConfig` for RL runs, `SFTConfig` for supervised fine-tuning. By convention the
  example files in configs/ named `sft_*.yaml` use SFTConfig and all others TrainConfig.
"""

from vlrl.config.errors import ConfigError
from vlrl.config.loader import MISSING, apply_stage, config_template, dump_config, load_config
from vlrl.config.reference import reference_markdown
from vlrl.config.schema import SFTConfig, TrainConfig
from vlrl.config.sections import (
    AlgoSection,
    DataSection,
    DistributedSection,
    LoggingSection,
    LoraSection,
    ModelSection,
    RewardSection,
    RolloutSection,
    SFTSection,
    TrainSection,
)

__all__ = [
    "AlgoSection",
    "ConfigError",
    "DataSection",
    "DistributedSection",
    "LoggingSection",
    "LoraSection",
    "MISSING",
    "ModelSection",
    "RewardSection",
    "RolloutSection",
    "SFTConfig",
    "SFTSection",
    "TrainConfig",
    "TrainSection",
    "apply_stage",
    "config_template",
    "dump_config",
    "load_config",
    "reference_markdown",
]
