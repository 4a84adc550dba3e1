"""Print the README's config reference table from the config models (`python -m embed_pipeline.config_docs`).

The README's table is this output; a test fails when a setting is missing from it.
"""

from embed_pipeline.lib.config import config_reference


def table() -> str:
    rows = ["| key | meaning | default |", "| --- | --- | --- |"]
    rows += [f"| `{key}` | {meaning} | {default} |" for key, meaning, default in config_reference()]
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
