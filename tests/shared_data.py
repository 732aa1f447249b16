"""Where the real agent traces of the shared data set are: $COMPOSER_SHARED_DATA, else `../shared/data` next
to this checkout, else the workplace's `/work/shared/data` (CI checks out elsewhere)."""

from __future__ import annotations

import os
from pathlib import Path

CANDIDATES = [Path(os.environ["COMPOSER_SHARED_DATA"])] if os.environ.get("COMPOSER_SHARED_DATA") else []
CANDIDATES += [Path(__file__).resolve().parents[2] / "shared" / "data", Path("/work/shared/data")]
TRACES = next((folder / "traces" for folder in CANDIDATES if (folder / "traces").is_dir()), CANDIDATES[0] / "traces")
