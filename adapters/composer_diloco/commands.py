"""What `composer-core train --backend diloco --print-backend-config` prints: the commands that start a DiLoCo run on
several clusters (the Lighthouse on one host, one replica command per cluster) and the diloco settings they use."""

from __future__ import annotations

import json
import shlex

from composer_core.config import ComposerConfig
from composer_core.plugins import registries
from composer_diloco.lighthouse import DEFAULT_PORT, settings_for

INNER_BACKEND = "trl"  # the inner loop every replica runs (composer_diloco.replica)


def lighthouse_line(config: ComposerConfig, port: int = DEFAULT_PORT) -> str:
    return shlex.join(["torchft_lighthouse", *settings_for(config.diloco).arguments(f"[::]:{port}")])


def replica_line(replica_id: int, config_file: str = "JOB.yaml", lighthouse: str = "http://LIGHTHOUSE_HOST:29510"
                 ) -> str:
    return shlex.join(["composer-core", "train", "--backend", "diloco", "--config", config_file, "--lighthouse",
                       lighthouse, "--replica-id", str(replica_id), "--output-dir", f"runs/replica-{replica_id}"])


def native_config(config: ComposerConfig, *, run_settings: bool = False) -> str:
    """The commands for two clusters and the diloco section; with run_settings, also the inner backend's own
    configuration (through the registry: this adapter imports no other adapter)."""
    lines = [
        "# DiLoCo on torchft: one Lighthouse, then one command per replica, each on its own machine or cluster.",
        "# Use the same config file everywhere; each replica's hostname must resolve on the other clusters.",
        f"# 1. On the coordinator host; every replica must reach its TCP port {DEFAULT_PORT}:",
        lighthouse_line(config),
        "# 2. On cluster A:",
        replica_line(0),
        "# 3. On cluster B (one more line per extra replica, with the next --replica-id):",
        replica_line(1),
        "# Replicas also connect to each other: each replica's torchft manager and checkpoint server",
        "# (TORCHFT_MANAGER_PORT or a free port), its store (MASTER_ADDR:MASTER_PORT) and gloo/NCCL's own ports;",
        "# see docs/backends/diloco.md.",
        "# diloco settings:",
        json.dumps({"diloco": config.diloco.model_dump(mode="json")}, indent=2),
    ]
    if run_settings:
        inner = registries().backends.get(INNER_BACKEND)
        lines += [f"# the inner loop's {INNER_BACKEND} settings:", inner.native_config(config, run_settings=True)]
    return "\n".join(lines)
