"""Training losses: symmetric InfoNCE over all ranks' batches, and embedding distillation.

Repeated captions in a batch (common in synthetic and web data: "a photo of a dog") are all
positives of each other: the target of a row is uniform over its positives, so two images with the
same caption are not pushed apart.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

__all__ = ["contrastive_loss", "distill_loss", "gather_features"]


def gather_features(x: Tensor) -> Tensor:  # [B, ...] → [world · B, ...]
    """All ranks' rows, this rank's first-class with gradient (identity without a process group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    import torch.distributed.nn.functional as dnn

    return torch.cat(dnn.all_gather(x), 0)  # gradients flow back to every rank's own rows


def contrastive_loss(
    image_features: Tensor,  # [B, E] L2-normalised, this rank's
    text_features: Tensor,  # [B, E] L2-normalised
    logit_scale: Tensor,  # [] the exp'd scale
    text_ids: Tensor | None = None,  # [B, L] tokens: equal rows are the same caption (positives)
) -> tuple[Tensor, dict[str, float]]:
    """Symmetric InfoNCE of this rank's rows against every rank's columns (open_clip's
    ``local_loss`` with ``gather_with_grad``), with repeated captions as shared positives.

    Returns:
        ``(loss, stats)``: stats hold in-batch top-1 accuracy image→text and text→image, counting
        any positive as correct.
    """
    b = image_features.shape[0]
    all_img = gather_features(image_features)  # [W·B, E]
    all_txt = gather_features(text_features)
    offset = _rank() * b
    logits_i2t = logit_scale * image_features @ all_txt.T  # [B, W·B]
    logits_t2i = logit_scale * text_features @ all_img.T  # [B, W·B]
    if text_ids is not None:
        all_ids = gather_features(text_ids)
        positive = (text_ids[:, None, :] == all_ids[None, :, :]).all(-1)  # [B, W·B]
    else:
        positive = torch.zeros(b, all_img.shape[0], dtype=torch.bool, device=logits_i2t.device)
        positive[torch.arange(b), offset + torch.arange(b)] = True
    target = positive.float() / positive.sum(1, keepdim=True)
    loss_i = -(target * F.log_softmax(logits_i2t, 1)).sum(1).mean()
    loss_t = -(target * F.log_softmax(logits_t2i, 1)).sum(1).mean()
    rows = torch.arange(b, device=positive.device)
    with torch.no_grad():
        acc_i = positive[rows, logits_i2t.argmax(1)].float().mean().item()
        acc_t = positive[rows, logits_t2i.argmax(1)].float().mean().item()
    return (loss_i + loss_t) / 2, {"acc_i2t": acc_i, "acc_t2i": acc_t}


def distill_loss(student: Tensor, teacher: Tensor) -> tuple[Tensor, dict[str, float]]:
    """MSE between L2-normalised embeddings ``[B, E]`` (the paper's stage 1), and their cosine."""
    s = F.normalize(student, dim=-1)
    t = F.normalize(teacher.detach(), dim=-1)
    loss = F.mse_loss(s, t, reduction="sum") / s.shape[0]  # per image: ‖s − t‖² = 2 − 2 cos
    return loss, {"cosine": (s * t).sum(-1).mean().item()}


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
