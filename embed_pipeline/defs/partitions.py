"""Partitions: the corpus split into shards by a stable hash of the passage id (lib/corpus.py).

Dynamic, so the corpus change sensor adds the shard keys it finds (and removes keys of an old
shard count) instead of the definitions hard-coding them.
"""

import dagster as dg

corpus_shards = dg.DynamicPartitionsDefinition(name="corpus_shards")
