"""A hub model id fetched by huggingface_hub into its own cache (HF_HOME / HF_HUB_CACHE), as transformers would.

Only what `from_pretrained` reads is fetched: configs, safetensors weights, tokenizer files and chat templates.
Offline, or when the id is unknown, the error names the id and what to do instead; never a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

from composer_core.errors import ConfigError

WANTED_FILES = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken", "tokenizer*"]


def download_model(model_id: str) -> Path:
    """The local snapshot folder of hub model `model_id` (fetched now unless huggingface_hub has it cached)."""
    import httpx

    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError:
        raise ConfigError(f"model.path {model_id!r} is a hub model id, which needs huggingface_hub: pip install "
                          "'composer-core[trl]'") from None
    print(f"model.path {model_id!r} is not a local file or folder: reading it as a hub model id (from "
          "huggingface_hub's cache, else downloaded into it)", file=sys.stderr)
    try:
        return Path(snapshot_download(model_id, allow_patterns=WANTED_FILES))
    except LocalEntryNotFoundError:
        raise ConfigError(f"model.path {model_id!r} is not a local file or folder, and as a hub model id it needs "
                          "network access to download (none now, or HF_HUB_OFFLINE is set) and is not in the hub "
                          "cache; download it where there is network (`hf download ID --local-dir DIR`) and set "
                          "model.path to that folder") from None
    except RepositoryNotFoundError:
        raise ConfigError(f"model.path {model_id!r} is not a local file or folder, and the hub has no model of that "
                          "id that this login can read (gated or private models need `hf auth login`)") from None
    except HFValidationError as error:
        raise ConfigError(f"model.path {model_id!r} is not a valid hub model id: {error}") from None
    except (OSError, httpx.HTTPError) as error:  # a download cut short; huggingface_hub's HTTP errors are OSErrors
        raise ConfigError(f"could not download hub model {model_id!r}: {type(error).__name__}: {error}; retry, or "
                          "download it (`hf download ID --local-dir DIR`) and set model.path to that folder") from None
