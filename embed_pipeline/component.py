"""`embed_pipeline.EmbeddingPipeline`: the pipeline as a Dagster Component, one `defs.yaml` per corpus.

A `dg` project adds the pipeline once per corpus:

    dg scaffold defs embed_pipeline.EmbeddingPipeline support --config-path support.yaml
    dg scaffold defs embed_pipeline.EmbeddingPipeline contracts --config-path contracts.yaml

Each instance is `build_definitions(config_path)` with its asset keys under `key_prefix`
(`support/eval_report`), and its jobs, sensors, schedule, partitions and resource keys suffixed
(`training_job_support`): defs/instance.py says how. Its artifacts go to its config's
`artifacts_dir`, so two instances need two configs with two `artifacts_dir`.
`dg` finds the type through the `dagster_dg_cli.registry_modules` entry point (pyproject.toml).
"""

import re
from pathlib import Path

import dagster as dg
from pydantic import BaseModel, Field

from embed_pipeline.defs.instance import instance_definitions
from embed_pipeline.defs.schedules import NIGHTLY_CRON


def folder_prefix(folder: Path) -> str:
    """The default key prefix: the defs folder's name with anything but letters, digits and _ made `_`."""
    return re.sub(r"[^A-Za-z0-9_]", "_", folder.name)


class EmbeddingPipelineScaffoldParams(BaseModel):
    """What `dg scaffold defs embed_pipeline.EmbeddingPipeline PATH` accepts (`--config-path`, `--key-prefix`)."""

    config_path: str = Field(default="config.yaml", description="The pipeline config, relative to the new defs folder or absolute.")
    key_prefix: str | None = Field(default=None, description="Asset key prefix; default: the defs folder's name.")


class EmbeddingPipelineScaffolder(dg.Scaffolder[EmbeddingPipelineScaffoldParams]):
    """Writes a `defs.yaml` naming the config and the key prefix (the folder's name unless given)."""

    @classmethod
    def get_scaffold_params(cls) -> type[EmbeddingPipelineScaffoldParams]:
        return EmbeddingPipelineScaffoldParams

    def scaffold(self, request: dg.ScaffoldRequest[EmbeddingPipelineScaffoldParams]) -> None:
        params = request.params or EmbeddingPipelineScaffoldParams()
        dg.scaffold_component(request, {"config_path": params.config_path,
                                        "key_prefix": params.key_prefix or folder_prefix(request.target_path)})


@dg.scaffold_with(EmbeddingPipelineScaffolder)
class EmbeddingPipeline(dg.Component, dg.Model, dg.Resolvable):
    """The embedding fine-tuning pipeline on one corpus: pairs, hard negatives, training, FAISS index,
    eval report and gated promotion, with its own asset keys, jobs, sensors and schedule."""

    config_path: str = Field(description="The pipeline config (README \"The config file\"), relative to this defs.yaml's "
                                         "folder or absolute; its artifacts_dir must be this instance's own.")
    key_prefix: str | None = Field(default=None, description="Prefix of every asset key (`support` or `legal/contracts`); "
                                                             "default: this defs.yaml's folder name.")
    name_suffix: str | None = Field(default=None, description="Suffix of job, sensor, schedule, partitions and resource "
                                                              "names; default: `_` + the key prefix (`_support`).")
    pool: str = Field(default="gpu", description="Concurrency pool of the training and encoding steps; instances on one "
                                                 "GPU share `gpu` so their steps take turns.")
    cron: str = Field(default=NIGHTLY_CRON, description="When the nightly retraining schedule fires (UTC).")

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        config = Path(self.config_path)
        if not config.is_absolute():
            config = context.path / config
        return instance_definitions(str(config.resolve()), self.key_prefix or folder_prefix(context.path), self.name_suffix,
                                    pool=self.pool, cron=self.cron)
