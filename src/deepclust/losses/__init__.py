"""Pure loss functions of every method (tensors in, scalar tensor out; see spec/design.md)."""

from deepclust.losses.idfd import feature_decorrelation_loss, instance_discrimination_loss

__all__ = ["feature_decorrelation_loss", "instance_discrimination_loss"]
