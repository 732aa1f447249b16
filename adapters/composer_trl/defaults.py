"""Defaults of the embedded job (`composer-core train` with no arguments).

EMBEDDED_MODEL is a folder for `from_pretrained` (model and tokenizer): a tiny Qwen2 trained from scratch by
`scripts/train_embedded_model.py` on `composer_core.tasks.arithmetic` to partial accuracy, so that RL has room
to improve it. Its README.md gives the measured accuracies and the command that reproduces it. It ships as
package data, so the default job runs offline.
"""

from __future__ import annotations

from pathlib import Path

EMBEDDED_MODEL = Path(__file__).parent / "embedded" / "model"
