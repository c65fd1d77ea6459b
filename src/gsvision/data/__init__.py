"""Datasets: image–text webdataset shards in, splat shards out, and loaders for training."""

from gsvision.data.shards import (
    Sample,
    ShardReadError,
    ShardWriter,
    expand_urls,
    iter_samples,
    shard_name,
)

__all__ = ["Sample", "ShardReadError", "ShardWriter", "expand_urls", "iter_samples", "shard_name"]
