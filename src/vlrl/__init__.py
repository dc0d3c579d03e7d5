"""vlrl: R1-style reinforcement learning for vision-language models.

The Python API runs what `vlrl train` and `vlrl sft` run, from a YAML file with dotted overrides
or from overrides alone (`load_config(None, [...])`), and returns each step's metrics:

    from vlrl import GRPOTrainer, SFTConfig, SFTTrainer, load_config, read_metrics

    cfg = load_config("configs/grpo_tiny.yaml", ["train.steps=2", "train.output_dir=runs/api"])
    trainer = GRPOTrainer(cfg)  # loads model and data (a bad config or data row raises here)
    history = trainer.train()  # [{"step": 1, "reward/total/mean": ..., "acc": ...}, {"step": 2, ...}]
    assert read_metrics("runs/api/metrics.jsonl") == history  # as logged (NaN is written as None)

    sft = SFTTrainer(load_config("configs/sft_tiny.yaml", ["train.steps=2"], schema=SFTConfig))

Every name below is imported on first use, so `import vlrl` does not load the trainers.
"""

from vlrl.lazy import lazy_exports
from vlrl.models import deepseek_vl2 as _deepseek_vl2
from vlrl.models import processors as _processors

__version__ = "0.1.0"

# Importing vlrl is enough for transformers' Auto classes to load vlrl-built checkpoints on
# machines without torchvision (see vlrl.models.processors).
_processors.register()
_deepseek_vl2.register()

# Public name -> module defining it.
_EXPORTS = {
    "ConfigError": "vlrl.config",
    "SFTConfig": "vlrl.config",
    "TrainConfig": "vlrl.config",
    "load_config": "vlrl.config",
    "GRPOTrainer": "vlrl.training.grpo",
    "SFTTrainer": "vlrl.training.sft",
    "read_metrics": "vlrl.io",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
