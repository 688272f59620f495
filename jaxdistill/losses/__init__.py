"""Pure distillation losses; per-example unless the docstring says batch-level (scalar)."""

from jaxdistill.losses.adversarial import discriminator_loss, generator_loss
from jaxdistill.losses.contrastive import (
    crd_nce_loss,
    crd_normalizer,
    crd_scores,
    crd_update_bank,
    sample_negatives,
)
from jaxdistill.losses.features import (
    attention_distribution_loss,
    attention_map,
    attention_transfer_loss,
    hint_loss,
    l2_normalize,
    pkt_loss,
    rkd_loss,
    safe_l2_norm,
    similarity_preserving_loss,
)
from jaxdistill.losses.logits import (
    cross_entropy,
    dkd_loss,
    forward_kl,
    jsd,
    kd_loss,
    reverse_kl,
    skew_kl,
    skew_reverse_kl,
    standardize_logits,
    tvd,
)

__all__ = [
    "attention_distribution_loss",
    "attention_map",
    "attention_transfer_loss",
    "crd_nce_loss",
    "crd_normalizer",
    "crd_scores",
    "crd_update_bank",
    "cross_entropy",
    "discriminator_loss",
    "dkd_loss",
    "forward_kl",
    "generator_loss",
    "hint_loss",
    "jsd",
    "kd_loss",
    "l2_normalize",
    "pkt_loss",
    "reverse_kl",
    "rkd_loss",
    "safe_l2_norm",
    "sample_negatives",
    "similarity_preserving_loss",
    "skew_kl",
    "skew_reverse_kl",
    "standardize_logits",
    "tvd",
]
