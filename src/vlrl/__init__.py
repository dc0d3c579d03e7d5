"""vlrl: R1-style reinforcement learning for vision-language models."""

from vlrl.models import processors as _processors

__version__ = "0.1.0"

# Importing vlrl is enough for transformers' Auto classes to load vlrl-built checkpoints on
# machines without torchvision (see vlrl.models.processors).
_processors.register()
