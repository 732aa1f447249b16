"""composer-core for torchtune: loss components with torchtune's GRPO loss contract, chosen by `_component_`.

`composer_torchtune.ComposerGRPOLoss` runs any registered composer objective where torchtune's GRPO recipe
expects its loss; `composer_torchtune.ComposerCompositeLoss` adds self-distillation (channel 2) for a recipe
that passes logits and a teacher. `loss_section(config)` is the `loss:` section of a torchtune YAML for an
experiment config. Importing this package does not import torchtune.
"""

from composer_torchtune.loss import ComposerCompositeLoss, ComposerGRPOLoss
from composer_torchtune.loss_settings import loss_arguments, loss_section

__all__ = ["ComposerCompositeLoss", "ComposerGRPOLoss", "loss_arguments", "loss_section"]
