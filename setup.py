"""The build step that ships the demo and the Dagster templates inside the package.

The repo keeps `data/`, `dagster.yaml` and `workspace.yaml` at its root, where a clone uses them;
a wheel must carry them, so `build_py` copies the files named below into
`embed_pipeline/bundled/` of the build tree (read at run time with `importlib.resources`,
embed_pipeline/lib/bundled.py). Everything else is in pyproject.toml.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
# What the demo reads (the builders and their sources under data/ stay in the repo), and the
# instance and workspace templates (`embed-pipeline init`, the CLI's DAGSTER_HOME seeding).
BUNDLED = [
    "data/demo_config.yaml", "data/README.md", "data/corpus.jsonl", "data/search_logs.parquet",
    "data/curated/queries.jsonl", "data/curated/qrels/train.tsv", "data/eval/queries.jsonl", "data/eval/qrels/test.tsv",
    "data/general/sts_reference.tsv",
    "dagster.yaml", "workspace.yaml",
]


class BuildWithBundle(build_py):
    def run(self):
        super().run()
        if self.editable_mode:  # an editable install reads the repo's own files (lib/bundled.py)
            return
        target = Path(self.build_lib) / "embed_pipeline" / "bundled"
        for name in BUNDLED:
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ROOT / name, target / name)


setup(cmdclass={"build_py": BuildWithBundle})
