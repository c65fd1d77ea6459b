"""Datasets: image–text webdataset shards in, splat shards out, and loaders for training."""

from gsvision.data.captioned_shapes import make_shapes_shards
from gsvision.data.loader import (
    SplatDataset,
    SplatLoader,
    collate_splats,
    decode_splat_sample,
    extract_splat_sample,
    pad_splats,
    rgb_pipeline,
    splat_pipeline,
)
from gsvision.data.shards import (
    Sample,
    ShardReadError,
    ShardWriter,
    expand_urls,
    iter_samples,
    shard_name,
)

__all__ = [
    "Sample",
    "ShardReadError",
    "ShardWriter",
    "SplatDataset",
    "SplatLoader",
    "collate_splats",
    "decode_splat_sample",
    "expand_urls",
    "extract_splat_sample",
    "iter_samples",
    "make_shapes_shards",
    "pad_splats",
    "rgb_pipeline",
    "shard_name",
    "splat_pipeline",
]
