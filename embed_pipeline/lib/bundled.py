"""Files the package ships: the demo data and config, the Dagster instance and workspace templates.

A wheel carries them in `embed_pipeline/bundled/` (setup.py's build step copies them there from
the repo's `data/`, `dagster.yaml` and `workspace.yaml`), read with `importlib.resources`, so an
installed package works from any directory. A source checkout (an editable install, or the repo on
PYTHONPATH) has no such folder and reads the repo's own files, where a clone edits them.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

DEMO_CONFIG_NAME = "data/demo_config.yaml"
INSTANCE_TEMPLATE = "dagster.yaml"
WORKSPACE_TEMPLATE = "workspace.yaml"


def bundled_root() -> Path:
    """The folder holding the bundled files: the wheel's `embed_pipeline/bundled`, or the checkout's root."""
    packaged = resources.files("embed_pipeline") / "bundled"
    if packaged.is_dir():
        if not isinstance(packaged, Path):
            raise RuntimeError(f"embed-pipeline is installed zipped ({packaged}): reinstall it with pip (an unpacked install)")
        return packaged
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file() and (checkout / DEMO_CONFIG_NAME).is_file():
        return checkout
    raise RuntimeError(f"embed-pipeline's bundled files are missing (no {packaged}): reinstall the package from its wheel")


def bundled(name: str) -> Path:
    """One bundled file by its repo-relative name (`data/demo_config.yaml`, `dagster.yaml`, ...)."""
    return bundled_root() / name
