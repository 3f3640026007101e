"""Deterministic sharding of a data set across ranks: indices
(:func:`shard_indices`), files (:func:`read_shards`), and rows moved to the
rank that owns their key (:func:`shuffle`)."""

from .by_key import key_hash, shuffle
from .files import read_shards
from .indices import shard_indices

__all__ = ["shard_indices", "read_shards", "shuffle", "key_hash"]
