"""What kind of thing `model.path` names: a saved model folder, a GGUF file, or a hub model id.

The rules, in order: an existing file must be a `.gguf`; an existing folder with a config.json is a saved model,
one without it holding exactly one `.gguf` is that GGUF, and any other folder is taken as a saved model (the backend
checks its files when it loads them); a path that does not exist is a hub model id when it has the form of one
(`name` or `owner/name`), and otherwise an error naming it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from composer_core.errors import ConfigError

Kind = Literal["folder", "gguf", "hub"]
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
FORMS = "give a saved model folder, a .gguf file (or a folder holding one) or a hub model id such as owner/name"


@dataclass(frozen=True)
class ModelSource:
    """Where the model comes from: `location` is a local path for folder and gguf, the id for hub."""

    kind: Kind
    location: str


def classify_model_path(path: str) -> ModelSource:
    """The kind of `model.path`, from the file system alone (nothing is loaded or downloaded)."""
    local = Path(path).expanduser()
    if local.is_file():
        if local.suffix.lower() != ".gguf":
            raise ConfigError(f"model.path {local} is a file but not a .gguf model; {FORMS}")
        return ModelSource("gguf", str(local))
    if local.is_dir():
        return _folder_source(local)
    if local.exists():
        raise ConfigError(f"model.path {local} is neither a file nor a folder; {FORMS}")
    if _looks_like_hub_id(path):
        return ModelSource("hub", path)
    raise ConfigError(f"model.path {path} does not exist; {FORMS}")


def _folder_source(folder: Path) -> ModelSource:
    if (folder / "config.json").is_file():
        return ModelSource("folder", str(folder))
    ggufs = sorted(entry for entry in folder.glob("*.gguf") if entry.is_file())
    if len(ggufs) > 1:
        raise ConfigError(f"model.path {folder} holds {len(ggufs)} GGUF files ({', '.join(g.name for g in ggufs)}); "
                          "set model.path to the one to train")
    return ModelSource("gguf", str(ggufs[0])) if ggufs else ModelSource("folder", str(folder))


def _looks_like_hub_id(path: str) -> bool:
    return HUB_ID.fullmatch(path) is not None and ".." not in path and not path.lower().endswith(".gguf")


def resolve_model_folder(path: str) -> Path:
    """A local folder holding the model `path` names: the folder itself, the cached conversion of a GGUF file
    (converted now if it is not cached yet), or the downloaded snapshot of a hub model id."""
    source = classify_model_path(path)
    if source.kind == "gguf":
        from composer_core.models.gguf import cached_conversion

        return cached_conversion(Path(source.location))
    if source.kind == "hub":
        from composer_core.models.hub import download_model

        return download_model(source.location)
    return Path(source.location)
