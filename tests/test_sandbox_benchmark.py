"""The sandbox throughput benchmark keeps working (quick mode; no timing assertions beyond positivity)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from composer_core.sandbox.local import SandboxUnavailable, check_unshare

ROOT = Path(__file__).resolve().parents[1]  # benchmarks/ is a top-level package beside composer_core/


def test_quick_benchmark_writes_both_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        check_unshare()
    except SandboxUnavailable as error:
        pytest.skip(f"the local sandbox cannot run here: {error}")
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks import sandbox

    assert sandbox.main(["--quick", "--concurrency", "2", "--output", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "sandbox.json").read_text())["results"]
    assert [row["concurrency"] for row in results] == [1, 2]
    assert all(row["sandboxed_per_s"] > 0 and row["plain_per_s"] > 0 and row["ratio"] > 0 for row in results)
