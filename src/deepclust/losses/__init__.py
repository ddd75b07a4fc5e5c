"""Pure loss functions of every method (tensors in, scalar tensor out; see spec/design.md)."""

from deepclust.losses.cdc import (
    cdc_contrastive_loss,
    cdc_entropy_loss,
    cdc_similarity,
    cdc_sinkhorn_soft,
    cdc_swapped_prediction_loss,
)
from deepclust.losses.contrastive import nt_xent_loss
from deepclust.losses.dec import anchor_loss, dec_loss, dec_target, student_t_assignment
from deepclust.losses.idfd import feature_decorrelation_loss, instance_discrimination_loss
from deepclust.losses.scan import scan_loss
from deepclust.losses.secu import secu_center_loss, secu_representation_loss

__all__ = [
    "anchor_loss",
    "cdc_contrastive_loss",
    "cdc_entropy_loss",
    "cdc_similarity",
    "cdc_sinkhorn_soft",
    "cdc_swapped_prediction_loss",
    "dec_loss",
    "dec_target",
    "feature_decorrelation_loss",
    "instance_discrimination_loss",
    "nt_xent_loss",
    "scan_loss",
    "secu_center_loss",
    "secu_representation_loss",
    "student_t_assignment",
]
