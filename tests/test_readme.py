"""The README's Python examples run as written."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index: int) -> None:
    namespace: dict[str, object] = {}
    exec(compile(BLOCKS[index], f"README.md block {index}", "exec"), namespace)
    if "out" in namespace:  # the composed-loss example produced a loss and its metrics
        metrics = namespace["out"].metrics  # type: ignore[attr-defined]
        assert {"policy/loss", "distill/loss", "distill/coverage", "loss/total"} <= set(metrics)


def test_readme_has_python_examples() -> None:
    assert len(BLOCKS) >= 2
