"""Installed-looking plugin distributions written into a folder on sys.path (a dist-info with an entry point in
the `composer_core` group, and the plugin's module), for tests of plugin loading without pip."""

from __future__ import annotations

from pathlib import Path


def write_distribution(site: Path, module_source: str, plugin: str = "broken") -> None:
    """A minimal installed distribution `<plugin>-plugin` whose entry point `<plugin>` is the module
    `<plugin>_plugin` with the source given."""
    info = site / f"{plugin}_plugin-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {plugin}-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[composer_core]\n{plugin} = {plugin}_plugin\n")
    (site / f"{plugin}_plugin.py").write_text(module_source)
