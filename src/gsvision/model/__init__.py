"""The image tower that reads splats: stem (Gaussians → tokens) and resampler (tokens → latents).

Later parts (``gsclip.py``, ``factory.py``) feed the latents through a frozen open_clip ViT.
"""

from gsvision.model.resampler import PerceiverResampler, ResamplerBlock, ResamplerCfg
from gsvision.model.stem import SplatStem, SplatStemCfg, fourier_features, gaussian_shape

__all__ = [
    "PerceiverResampler",
    "ResamplerBlock",
    "ResamplerCfg",
    "SplatStem",
    "SplatStemCfg",
    "fourier_features",
    "gaussian_shape",
]
