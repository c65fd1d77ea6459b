"""Training programs: contrastive and distillation training (``main``), zero-shot evaluation."""
