"""`model.path` resolved to a local model folder that any backend's `from_pretrained` loads.

A saved folder is used as it is; a GGUF file is converted once into a cached safetensors folder
(composer_core.models.gguf); a hub model id is fetched by huggingface_hub into its own cache
(composer_core.models.hub). transformers, gguf and huggingface_hub are imported only when needed, so the core
imports without them.
"""

from composer_core.models.source import ModelSource, classify_model_path, resolve_model_folder

__all__ = ["ModelSource", "classify_model_path", "resolve_model_folder"]
