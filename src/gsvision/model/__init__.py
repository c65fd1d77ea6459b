"""GS-CLIP: the image tower that reads splats, on a frozen open_clip ViT.

``stem`` (Gaussians → tokens), ``resampler`` (tokens → K latents), ``gsclip`` (the towers put
together, what trains), ``factory`` (``create_model``, checkpoints).
"""

from gsvision.model.factory import (
    create_model,
    create_model_and_transforms,
    get_tokenizer,
    list_models,
    load_model,
    read_model_cfg,
    rgb_transform,
    save_model,
)
from gsvision.model.gsclip import (
    GSCLIP,
    TRAINABLE_PRESETS,
    GSCLIPCfg,
    SplatVisionTower,
    TrainableCfg,
    trainable_cfg,
)
from gsvision.model.resampler import PerceiverResampler, ResamplerBlock, ResamplerCfg
from gsvision.model.stem import SplatStem, SplatStemCfg, fourier_features, gaussian_shape

__all__ = [
    "GSCLIP",
    "GSCLIPCfg",
    "PerceiverResampler",
    "ResamplerBlock",
    "ResamplerCfg",
    "SplatStem",
    "SplatStemCfg",
    "SplatVisionTower",
    "TRAINABLE_PRESETS",
    "TrainableCfg",
    "create_model",
    "create_model_and_transforms",
    "fourier_features",
    "gaussian_shape",
    "get_tokenizer",
    "list_models",
    "load_model",
    "read_model_cfg",
    "rgb_transform",
    "save_model",
    "trainable_cfg",
]
