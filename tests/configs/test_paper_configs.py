"""Every shipped paper config against the numbers of its spec (spec/idfd.md 4-7, secu.md 5-10,
anchor.md 2-7, cdc.md 3.7), one table per config transcribed from the spec files, so that a
config edit that leaves the paper shows up here. A callable entry is a range check (CDC's
recipe is a range in the spec)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from deepclust.config import load_yaml, packaged_config, resolve_config

# ----- IDFD (idfd.md 4-7): the CIFAR-10 recipe on every dataset, fp32 ---------------------------
IDFD = {
    "method": "idfd",
    "model.backbone": "resnet18",
    "optim.name": "sgd",
    "optim.lr": 0.03,
    "optim.momentum": 0.9,
    "optim.weight_decay": 5e-4,
    "optim.schedule": "step",
    "optim.milestones": [600, 950, 1300, 1650],
    "optim.gamma": 0.1,
    "train.epochs": 2000,
    "train.batch_size": 128,
    "train.drop_last": False,
    "train.amp": "off",
    "augment.crop_scale": [0.2, 1.0],
    "augment.jitter": [0.4, 0.4, 0.4, 0.0],
    "augment.jitter_p": 1.0,
    "augment.grayscale_p": 0.2,
    "augment.flip_p": 0.0,
    "augment.blur_p": 0.0,
    "augment.solarize_p": 0.0,
    "method_args.temperature": 1.0,
    "method_args.fd_temperature": 2.0,
    "method_args.fd_weight": 1.0,
    "method_args.memory_momentum": 0.5,
    "eval.n_init": 20,
    "data.train_split": "train+test",
    "data.eval_split": "train+test",
}
_CIFAR_IDFD = {"data.image_size": 32, "model.stem": "cifar"}
_96_IDFD = {"data.image_size": 96, "model.stem": "stl"}

# ----- SeCu (secu.md 5-10): official scripts, fp16 + GradScaler, synchronised BN ----------------
SECU = {
    "method": "secu",
    "model.backbone": "resnet18",
    "model.feature_dim": 128,
    "optim.momentum": 0.9,
    "optim.schedule": "cosine",
    "optim.warmup_epochs": 10,
    "train.batch_size": 128,
    "train.drop_last": False,
    "train.amp": "fp16",
    "train.sync_bn": True,
    "augment.crop_ratio": [0.75, 1.3333333],
    "augment.jitter": [0.4, 0.4, 0.2, 0.1],
    "augment.jitter_p": 0.8,
    "augment.grayscale_p": 0.2,
    "augment.flip_p": 0.5,
    "augment.blur_sigma": [0.1, 2.0],
    "method_args.n_heads": 10,
    "method_args.temperature_x": 0.05,
    "method_args.label_weight": 0.2,
    "method_args.frozen_epochs": 1,
    "method_args.blur_p": [1.0, 0.1],
    "method_args.solarize_p": [0.0, 0.2],
    "method_args.constraint": "size",
    "method_args.lower_ratio": 0.9,
    "method_args.dual_lr": 0.1,
    "optim.name": "sgd",
    "optim.lr": 0.2,
    "optim.weight_decay": 1e-4,
    "method_args.temperature_w": 0.05,
    "data.image_size": 32,
    "model.stem": "cifar",
    "data.train_split": "train",
    "data.eval_split": "test",
}

# ----- AnchorCL (anchor.md 2-7): ResNet-34 at 224 px, Adam 3e-4, fp32 ------------------------------
ANCHOR = {
    "method": "anchorcl",
    "model.backbone": "resnet34",
    "model.stem": "imagenet",
    "data.image_size": 224,
    "model.feature_dim": 128,
    "optim.name": "adam",
    "optim.lr": 3e-4,
    "optim.weight_decay": 0.0,
    "optim.schedule": "constant",
    "train.epochs": 2000,
    "train.batch_size": 128,
    "train.drop_last": True,
    "train.amp": "off",
    "augment.crop_scale": [0.08, 1.0],
    "augment.flip_p": 0.5,
    "augment.jitter_p": 0.8,
    "augment.grayscale_p": 0.2,
    "method_args.instance_temperature": 0.5,
    "method_args.alpha": 1.0,
    "method_args.instance_weight": 1.0,
    "method_args.cluster_weight": 1.0,
    "method_args.anchor_weight": 1.0,
    "method_args.normalize_input": False,
    "method_args.separate_forwards": True,
    "method_args.init_bn_mode": "train",
    "method_args.init_batch_size": 32,
    "method_args.init_n_init": 10,
    "method_args.target_mode": "batch",
    "eval.n_init": 10,
    "data.train_split": "train+test",
    "data.eval_split": "train+test",
}
_S05 = {"augment.jitter": [0.4, 0.4, 0.4, 0.1], "augment.blur_p": 0.0}  # jitter strength s = 0.5, no blur
_S1 = {
    "augment.jitter": [0.8, 0.8, 0.8, 0.2],
    "augment.blur_p": 0.5,
    "augment.blur_kernel": 23,
    "augment.blur_sigma": [0.1, 2.0],
}  # s = 1.0 with blur

# ----- CDC (cdc.md 3.7, reconstruction): the switches' defaults and the recipe's ranges -----------
CDC = {
    "method": "cdc",
    "method_args.combine": "additive",
    "method_args.equipartition": "sinkhorn",
    "method_args.sinkhorn_mode": "target",
    "method_args.sinkhorn_iters": 3,
    "method_args.sinkhorn_eps": 0.05,
    "method_args.tau_p": 1.0,
    "method_args.tau_z": 0.5,
    "method_args.t_c": 0.1,
    "method_args.lambda_eq": 1.0,
    "model.feature_dim": 128,
    "augment.crop_scale": [0.08, 1.0],
    "augment.jitter_p": 0.8,
    "augment.grayscale_p": 0.2,
    "augment.flip_p": 0.5,
}
_CDC_SMALL = {
    "optim.name": "adam",
    "optim.lr": 3e-4,
    "optim.weight_decay": 0.0,
    "train.batch_size": 256,
    "train.epochs": lambda v: 500 <= v <= 1000,
    "model.backbone": "resnet18",
}

TABLE: dict[str, dict[str, Any]] = {
    "idfd/cifar10": {
        **IDFD,
        **_CIFAR_IDFD,
        "n_clusters": 10,
        "data.name": "cifar10",
        "data.std": [0.2470, 0.2435, 0.2616],
    },
    "idfd/cifar100-20": {**IDFD, **_CIFAR_IDFD, "n_clusters": 20, "data.name": "cifar100-20"},
    "idfd/stl10": {**IDFD, **_96_IDFD, "n_clusters": 10, "data.name": "stl10"},
    "idfd/imagenet10": {**IDFD, **_96_IDFD, "n_clusters": 10, "data.name": "imagenet10"},
    "idfd/imagenet-dogs": {**IDFD, **_96_IDFD, "n_clusters": 15, "data.name": "imagenet-dogs"},
    "secu/cifar10": {
        **SECU,
        "n_clusters": 10,
        "train.epochs": 401,
        "method_args.center_lr": 1.2,
        "augment.crop_scale": [0.3, 1.0],
        "data.std": [0.2023, 0.1994, 0.2010],
    },
    "secu/cifar10-entropy": {
        **{k: v for k, v in SECU.items() if k not in ("method_args.lower_ratio", "method_args.dual_lr")},
        "n_clusters": 10,
        "train.epochs": 401,
        "method_args.center_lr": 1.2,
        "augment.crop_scale": [0.3, 1.0],
        "method_args.constraint": "entropy",
        "method_args.entropy_alpha": 6000.0,
    },
    "secu/cifar100-20": {
        **SECU,
        "n_clusters": 20,
        "train.epochs": 801,
        "method_args.center_lr": 0.8,
        "augment.crop_scale": [0.2, 1.0],
        "data.mean": [0.5071, 0.4867, 0.4408],
    },
    "secu/stl10": {
        **SECU,
        "n_clusters": 10,
        "train.epochs": 801,
        "method_args.center_lr": 0.8,
        "method_args.temperature_w": 1.0,
        "augment.crop_scale": [0.2, 1.0],
        "data.image_size": 96,
        "model.stem": "stl",
        "data.train_split": "train+unlabeled",
        "data.mean": [0.485, 0.456, 0.406],
    },
    "secu/cifar100": {
        **SECU,
        "n_clusters": 100,
        "train.epochs": 801,
        "method_args.center_lr": 0.01,
        "augment.crop_scale": [0.2, 1.0],
        "data.name": "cifar100",
        "data.mean": [0.5071, 0.4867, 0.4408],
    },
    # LARS (spec/secu.md 10): trust coefficient 0.001, momentum 0.9, wd 1e-6
    "secu/imagenet": {
        **{k: v for k, v in SECU.items() if k not in ("optim.name", "optim.weight_decay", "optim.momentum")},
        "optim.name": "lars",
        "optim.trust_coefficient": 0.001,
        "optim.momentum": 0.9,
        "optim.weight_decay": 1e-6,
        "n_clusters": 1000,
        "train.epochs": 1001,
        "train.batch_size": 1024,
        "optim.lr": 1.6,
        "method_args.center_lr": 4.2,
        "method_args.lower_ratio": 0.4,
        "method_args.dual_lr": 20.0,
        "augment.crop_scale": [0.08, 1.0],
        "data.image_size": 224,
        "model.backbone": "resnet50",
        "model.stem": "imagenet",
        "method_args.imagenet_head": True,
        "data.eval_split": "val",
    },
    "anchorcl/cifar10": {**ANCHOR, **_S05, "n_clusters": 10, "data.name": "cifar10"},
    "anchorcl/imagenet10": {**ANCHOR, **_S1, "n_clusters": 10, "data.name": "imagenet10"},
    "anchorcl/imagenet-dogs": {**ANCHOR, **_S1, "n_clusters": 15, "data.name": "imagenet-dogs"},
    "anchorcl/tiny-imagenet": {
        **ANCHOR,
        **_S05,
        "n_clusters": 200,
        "data.name": "tiny-imagenet",
        "data.train_split": "train",
        "data.eval_split": "train",
    },
    # library extensions of spec 5 / 11: the CIFAR-10 recipe
    "anchorcl/cifar100-20": {**ANCHOR, **_S05, "n_clusters": 20, "data.name": "cifar100-20"},
    "anchorcl/stl10": {**ANCHOR, **_S05, "n_clusters": 10, "data.name": "stl10"},
    "cdc/cifar10": {**CDC, **_CDC_SMALL, "n_clusters": 10, "model.stem": "cifar", "data.image_size": 32},
    "cdc/cifar100-20": {**CDC, **_CDC_SMALL, "n_clusters": 20, "model.stem": "cifar", "data.image_size": 32},
    "cdc/stl10": {**CDC, **_CDC_SMALL, "n_clusters": 10},
    "cdc/imagenet10": {**CDC, **_CDC_SMALL, "n_clusters": 10},
    "cdc/tiny-imagenet": {**CDC, **_CDC_SMALL, "n_clusters": 200},
    "cdc/imagenet": {
        **CDC,
        "n_clusters": 1000,
        "model.backbone": "resnet50",
        "model.stem": "imagenet",
        "data.image_size": 224,
        "train.batch_size": lambda v: v >= 1024,
        "method_args.queue_size": lambda v: v >= 4096,
        "train.epochs": lambda v: 100 <= v <= 200,
        "data.train_split": "train",
        "data.eval_split": "val",
    },
}


def _get(d: dict[str, Any], dotted: str) -> Any:
    node: Any = d
    for part in dotted.split("."):
        node = node[part]
    return node


def _same(actual: Any, expected: Any) -> bool:
    if isinstance(expected, (list, tuple)):
        return (
            isinstance(actual, (list, tuple))
            and len(actual) == len(expected)
            and all(_same(a, e) for a, e in zip(actual, expected, strict=True))
        )
    if isinstance(expected, float) and not isinstance(expected, bool):
        return isinstance(actual, (int, float)) and abs(actual - expected) <= 1e-9 * max(1.0, abs(expected))
    return actual == expected and type(actual) is type(expected)


@pytest.mark.parametrize("name", sorted(TABLE))
def test_paper_config_matches_its_spec(name: str) -> None:
    path = packaged_config(name)
    assert path is not None, f"{name}.yaml is not shipped"
    cfg = resolve_config(load_yaml(path)).to_dict()
    wrong = []
    for key, expected in TABLE[name].items():
        actual = _get(cfg, key)
        ok = expected(actual) if isinstance(expected, Callable) else _same(actual, expected)  # type: ignore[arg-type]
        if not ok:
            wrong.append(f"{key}: {actual!r} (spec {expected!r})")
    assert not wrong, f"{name}: " + "; ".join(wrong)


def test_every_paper_config_is_in_the_table() -> None:
    """A new reproduction config must get its row (digits / Fashion-MNIST ones are adaptations)."""
    root = packaged_config("idfd/cifar10").parent.parent
    shipped = {f"{p.parent.name}/{p.stem}" for p in root.glob("*/*.yaml")}
    adaptations = {n for n in shipped if n.split("/")[1] in ("digits", "fashion-mnist", "cifar10-native")}
    missing = shipped - adaptations - set(TABLE)
    assert not missing, f"paper configs without a row in TABLE: {sorted(missing)}"


@pytest.mark.parametrize("name", [n for n in sorted(TABLE) if "train.amp" in TABLE[n]])
def test_stated_precision_is_what_a_gpu_run_uses(name: str) -> None:
    """``train.amp`` as the engine reads it on a CUDA device (no GPU needed to resolve it): fp16
    (with the trainer's GradScaler) for SeCu, no autocast (fp32) for IDFD and AnchorCL, where
    ``auto`` would have been bf16."""
    import torch

    from deepclust.engine.device import amp_dtype

    amp = resolve_config(load_yaml(packaged_config(name))).train.amp
    cuda = torch.device("cuda")
    expected = {"fp16": torch.float16, "off": None}[TABLE[name]["train.amp"]]
    assert amp_dtype(amp, cuda) is expected and amp_dtype("auto", cuda) is torch.bfloat16
