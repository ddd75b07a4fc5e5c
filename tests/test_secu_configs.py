"""SeCu's shipped ImageNet and CIFAR-100 configs hold the values of spec/secu.md sections 7-10."""

from __future__ import annotations

from deepclust.cli import packaged_config
from deepclust.config import Config, load_yaml, resolve_config


def _cfg(name: str) -> Config:
    return resolve_config(load_yaml(packaged_config(name)))


def test_secu_imagenet_config_uses_lars_as_the_spec() -> None:
    o = _cfg("secu/imagenet").optim
    assert (o.name, o.lr, o.momentum, o.weight_decay, o.trust_coefficient) == ("lars", 1.6, 0.9, 1e-6, 0.001)
    assert (o.schedule, o.warmup_epochs) == ("cosine", 10)


def test_secu_cifar100_config_is_k100_on_the_fine_classes() -> None:
    c = _cfg("secu/cifar100")
    assert (c.n_clusters, c.data.name, c.data.train_split, c.data.eval_split) == (100, "cifar100", "train", "test")
    a = c.method_args
    assert (a["n_heads"], a["center_lr"], a["lower_ratio"], a["dual_lr"]) == (10, 0.01, 0.9, 0.1)
    assert (a["temperature_x"], a["temperature_w"], a["frozen_epochs"]) == (0.05, 0.05, 1)
    o, t = c.optim, c.train
    assert (o.name, o.lr, o.momentum, o.weight_decay, o.warmup_epochs) == ("sgd", 0.2, 0.9, 1e-4, 10)
    assert (t.epochs, t.batch_size, c.augment.crop_scale) == (801, 128, (0.2, 1.0))
