"""Two installed composer-core plugins that register one objective name, seen from VeRL's `import verl`.

The composer registries cannot be built then, so no `composer_*` loss mode can be registered: the `verl.plugins`
entry point must say so loudly, naming both plugins and the COMPOSER_CORE_PLUGINS value that resolves the
conflict (VeRL itself would only report "unsupported loss mode" later), and that value must bring the modes back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("verl")

from plugin_distributions import write_distribution

pytestmark = pytest.mark.backend("verl")

PLUGIN = """
from composer_core.objectives import Objective, ObjectiveParams, TokenLoss
from composer_core.plugins import hookimpl


def plain_reinforce(batch, params):
    return TokenLoss(-batch.advantages * batch.log_prob)


@hookimpl
def register_objectives(register):
    register(Objective("twin_objective", plain_reinforce, ObjectiveParams, "token-mean", "grpo", "test"))
"""

# `import verl` with the conflict, then the advice of the warning followed in the same interpreter
PROBE = """
import json, logging, os, re
records = []


class Keep(logging.Handler):
    def emit(self, record):
        records.append(record.getMessage())


logging.getLogger("composer_verl").addHandler(Keep())
import verl
from verl.trainer.ppo import core_algos
from composer_core.plugins import reset_plugins
from composer_verl import plugin

def modes():
    return sorted(k for k in core_algos.POLICY_LOSS_REGISTRY if k.startswith("composer_"))

before, warning = modes(), "\\n".join(records)
os.environ["COMPOSER_CORE_PLUGINS"] = re.search(r"COMPOSER_CORE_PLUGINS=(\\S+) leaves out 'second'", warning).group(1)
reset_plugins()
plugin.load()
print(json.dumps({"before": before, "warning": warning, "after": modes()}))
"""


def test_a_plugin_name_conflict_is_a_loud_warning_and_its_advice_restores_the_modes(tmp_path: Path) -> None:
    write_distribution(tmp_path, PLUGIN, "first")  # two plugins registering `twin_objective`
    write_distribution(tmp_path, PLUGIN, "second")
    env = {key: value for key, value in os.environ.items() if key != "COMPOSER_CORE_PLUGINS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path), env.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300,
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["before"] == []
    assert "objective 'twin_objective' is registered twice" in found["warning"]
    assert "plugin 'first' (entry point first = first_plugin (first-plugin 1.0))" in found["warning"]
    assert "plugin 'second' (entry point second = second_plugin (second-plugin 1.0))" in found["warning"]
    assert "unsupported" in found["warning"]
    assert "objective 'twin_objective' is registered twice" in result.stderr  # what the user sees
    assert {"composer_twin_objective", "composer_dr_grpo"} <= set(found["after"])
