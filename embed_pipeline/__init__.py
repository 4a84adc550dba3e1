"""embed-pipeline: domain embedding fine-tuning as a Dagster pipeline.

`EmbeddingPipeline` (the Dagster component, embed_pipeline/component.py) is loaded on first use,
so `import embed_pipeline.lib...` stays free of Dagster; `dir()` lists it, which is how `dg`
finds component types in the registry module `embed_pipeline`.
"""

__all__ = ["EmbeddingPipeline"]


def __getattr__(name: str):
    if name == "EmbeddingPipeline":
        from embed_pipeline.component import EmbeddingPipeline

        return EmbeddingPipeline
    raise AttributeError(f"module 'embed_pipeline' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
