"""Every public loss (and Sinkhorn, k-means) under CPU autocast against its float32 result.

``torch.autocast("cpu", dtype=...)`` applies the same rule as CUDA's to what matters here:
matmuls run in the autocast dtype whatever their inputs are. Each function claims to compute in
float32 with autocast off, so, on random inputs:

- float32 inputs under bf16 / fp16 autocast: value and gradients equal the eager float32 ones
  within rtol 1e-5 (the same kernels; a bf16 logit would be off by ~1e-3);
- bf16 / fp16 inputs under autocast of the same dtype: the value equals the eager float32 value
  on the same (rounded) inputs within rtol 1e-5, and each input's gradient, in its own dtype,
  equals the float32 gradient rounded to that dtype within one unit of its precision (rtol 2^-7
  for bf16, 2^-10 for fp16).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.nn import functional as F

from deepclust.cluster import assign_to_centers, kmeans, sinkhorn
from deepclust.losses import (
    anchor_loss,
    cdc_contrastive_loss,
    cdc_entropy_loss,
    cdc_similarity,
    cdc_sinkhorn_soft,
    cdc_swapped_prediction_loss,
    dec_loss,
    dec_target,
    feature_decorrelation_loss,
    instance_discrimination_loss,
    nt_xent_loss,
    scan_loss,
    secu_center_loss,
    secu_representation_loss,
    student_t_assignment,
)

HALF = [torch.bfloat16, torch.float16]
ULP = {torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}
B, D, K, N = 24, 32, 10, 300


def _unit(g: torch.Generator, *shape: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=g), dim=-1)


def _prob(g: torch.Generator, *shape: int, t: float = 0.3) -> torch.Tensor:
    return F.softmax(torch.randn(*shape, generator=g) / t, dim=-1)


def _labels(g: torch.Generator, n: int, k: int) -> torch.Tensor:
    return torch.randint(0, k, (n,), generator=g)


# name -> builder(generator) -> (function, arguments, indices of the arguments that get gradients)
Case = tuple[Callable[..., Any], list[Any], tuple[int, ...]]


def _cases() -> dict[str, Callable[[torch.Generator], Case]]:
    return {
        "idfd_instance_discrimination": lambda g: (
            instance_discrimination_loss,
            [_unit(g, B, D), _unit(g, N, D), _labels(g, B, N), 1.0],
            (0,),
        ),
        "idfd_instance_discrimination_tau0.1": lambda g: (
            instance_discrimination_loss,
            [_unit(g, B, D), _unit(g, N, D), _labels(g, B, N), 0.1],
            (0,),
        ),
        "idfd_feature_decorrelation": lambda g: (
            feature_decorrelation_loss,
            [torch.randn(B, D, generator=g), 2.0],
            (0,),
        ),
        "secu_center": lambda g: (
            secu_center_loss,
            [_unit(g, B, D), torch.randn(K, D, generator=g), _labels(g, B, K), 0.05],
            (1,),
        ),
        "secu_center_ce": lambda g: (
            functools.partial(secu_center_loss, detach_negatives=False),
            [_unit(g, B, D), torch.randn(K, D, generator=g), _labels(g, B, K), 0.05],
            (1,),
        ),
        "secu_representation": lambda g: (
            secu_representation_loss,
            [_unit(g, B, D), _unit(g, B, D), _unit(g, K, D), _labels(g, B, K), 0.05, 0.2],
            (0, 1),
        ),
        "secu_representation_sources": lambda g: (
            lambda x1, x2, c, y, s1, s2: secu_representation_loss(x1, x2, c, y, 0.05, 0.2, target_sources=(s1, s2)),
            [_unit(g, B, D), _unit(g, B, D), _unit(g, K, D), _labels(g, B, K), _unit(g, B, D), _unit(g, B, D)],
            (0, 1),
        ),
        "cdc_similarity_additive": lambda g: (
            cdc_similarity,
            [_prob(g, B, K), _unit(g, B, D), _prob(g, B, K), _unit(g, B, D), 1.0, 0.5],
            (0, 1, 2, 3),
        ),
        "cdc_similarity_multiplicative": lambda g: (
            functools.partial(cdc_similarity, combine="multiplicative"),
            [_prob(g, B, K), _unit(g, B, D), _prob(g, B, K), _unit(g, B, D), 1.0, 0.5],
            (0, 1, 2, 3),
        ),
        "cdc_contrastive": lambda g: (
            cdc_contrastive_loss,
            [_prob(g, B, K), torch.randn(B, D, generator=g), _prob(g, B, K), torch.randn(B, D, generator=g), 1.0, 0.5],
            (0, 1, 2, 3),
        ),
        "cdc_contrastive_queue": lambda g: (
            lambda p1, z1, p2, z2, qp, qz: cdc_contrastive_loss(p1, z1, p2, z2, 1.0, 0.2, neg_p=qp, neg_z=qz),
            [
                _prob(g, B, K),
                torch.randn(B, D, generator=g),
                _prob(g, B, K),
                torch.randn(B, D, generator=g),
                _prob(g, 40, K),
                torch.randn(40, D, generator=g),
            ],
            (0, 1, 2, 3),
        ),
        "cdc_swapped_prediction": lambda g: (
            cdc_swapped_prediction_loss,
            [
                F.log_softmax(torch.randn(B, K, generator=g) / 0.1, 1),
                F.log_softmax(torch.randn(B, K, generator=g) / 0.1, 1),
                _prob(g, B, K),
                _prob(g, B, K),
            ],
            (0, 1),
        ),
        "cdc_entropy": lambda g: (cdc_entropy_loss, [_prob(g, B, K), _prob(g, B, K)], (0, 1)),
        "cdc_sinkhorn_soft": lambda g: (cdc_sinkhorn_soft, [torch.rand(B, K, generator=g) * 2 - 1, 3, 0.05], (0,)),
        "nt_xent": lambda g: (
            nt_xent_loss,
            [torch.randn(B, D, generator=g), torch.randn(B, D, generator=g), 0.5],
            (0, 1),
        ),
        "student_t": lambda g: (
            student_t_assignment,
            [3 * torch.randn(B, D, generator=g), 3 * torch.randn(K, D, generator=g), 1.0],
            (0, 1),
        ),
        "dec_target": lambda g: (dec_target, [_prob(g, B, K)], ()),
        "dec_loss": lambda g: (dec_loss, [_prob(g, B, K)], (0,)),
        "anchor_loss": lambda g: (anchor_loss, [_prob(g, B, K), _prob(g, B, K)], (1,)),
        "scan": lambda g: (  # (total, consistency, entropy) stacked: all three in float32
            lambda a, n: torch.stack(scan_loss(a, n, 5.0)),
            [3 * torch.randn(B, K, generator=g), 3 * torch.randn(B, K, generator=g)],
            (0, 1),
        ),
        "sinkhorn": lambda g: (sinkhorn, [torch.rand(B, K, generator=g) * 2 - 1, 3, 0.05], ()),
        "kmeans": lambda g: (
            lambda x: kmeans(x, 5, n_init=2, seed=0).centers,
            [torch.randn(200, 8, generator=g) + 4 * torch.randn(5, 8, generator=g).repeat(40, 1)],
            (),
        ),
        "assign_to_centers": lambda g: (
            lambda x, c: assign_to_centers(x, c)[1],
            [torch.randn(200, D, generator=g), torch.randn(K, D, generator=g)],
            (),
        ),
    }


CASES = _cases()


def _run(case: Case, in_dtype: torch.dtype, amp: torch.dtype | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The function's output and the gradients of <output, W> (W fixed random) w.r.t. its
    differentiable arguments, with float arguments cast to ``in_dtype``, under ``amp``."""
    fn, args, grad_idx = case
    prepared = [
        a.detach().to(in_dtype).requires_grad_(i in grad_idx)
        if isinstance(a, torch.Tensor) and a.is_floating_point()
        else a
        for i, a in enumerate(args)
    ]
    ctx = torch.autocast("cpu", dtype=amp) if amp is not None else contextlib.nullcontext()
    with ctx:
        out = fn(*prepared)
    grads: list[torch.Tensor] = []
    if grad_idx:
        w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)) if out.dim() else torch.ones(())
        (out.float() * w).sum().backward()
        grads = [prepared[i].grad for i in grad_idx]
        assert all(gr is not None for gr in grads)
    return out.detach(), grads


@pytest.mark.parametrize("amp", HALF, ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", list(CASES))
def test_float32_inputs_under_autocast_give_the_float32_result(name: str, amp: torch.dtype) -> None:
    case = CASES[name](torch.Generator().manual_seed(0))
    ref, ref_grads = _run(case, torch.float32, None)
    got, got_grads = _run(case, torch.float32, amp)
    assert got.dtype == ref.dtype, f"{name} returned {got.dtype} under {amp} autocast"
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    for gg, rg in zip(got_grads, ref_grads, strict=True):
        assert gg.dtype == torch.float32
        torch.testing.assert_close(gg, rg, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("amp", HALF, ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", list(CASES))
def test_half_inputs_are_computed_in_float32(name: str, amp: torch.dtype) -> None:
    case = CASES[name](torch.Generator().manual_seed(0))
    fn, args, grad_idx = case
    # the float32 reference sees exactly the values a half-precision caller holds
    rounded = [a.to(amp).float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
    ref, ref_grads = _run((fn, rounded, grad_idx), torch.float32, None)
    got, got_grads = _run(case, amp, amp)
    assert got.dtype == torch.float32, f"{name} returned {got.dtype} for {amp} inputs"
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    for gg, rg in zip(got_grads, ref_grads, strict=True):
        assert gg.dtype == amp  # the gradient comes back in the input's dtype
        scale = float(rg.abs().max()) or 1.0
        torch.testing.assert_close(gg.float(), rg.to(amp).float(), rtol=ULP[amp], atol=ULP[amp] * 1e-3 * scale)


#: every name deepclust.losses exports -> the case that runs it
COVERS = {
    "instance_discrimination_loss": "idfd_instance_discrimination",
    "feature_decorrelation_loss": "idfd_feature_decorrelation",
    "secu_center_loss": "secu_center",
    "secu_representation_loss": "secu_representation",
    "cdc_similarity": "cdc_similarity_additive",
    "cdc_contrastive_loss": "cdc_contrastive",
    "cdc_swapped_prediction_loss": "cdc_swapped_prediction",
    "cdc_entropy_loss": "cdc_entropy",
    "cdc_sinkhorn_soft": "cdc_sinkhorn_soft",
    "nt_xent_loss": "nt_xent",
    "student_t_assignment": "student_t",
    "dec_target": "dec_target",
    "dec_loss": "dec_loss",
    "anchor_loss": "anchor_loss",
    "scan_loss": "scan",
}


def test_every_public_loss_has_a_case() -> None:
    import deepclust.losses as losses

    assert set(COVERS) == set(losses.__all__), "a new public loss needs an autocast case here"
    assert set(COVERS.values()) <= set(CASES)


# ----------------------------------------------------------------------------- the helpers


def test_fp32_block_leaves_autocast_and_full_promotes_half_only() -> None:
    from deepclust.precision import fp32, full

    a, b = torch.randn(4, 5), torch.randn(5, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (a.float() @ b.float()).dtype == torch.bfloat16  # why casting inside autocast is not enough
        with fp32(a):
            assert (a @ b).dtype == torch.float32
            assert (full(a.bfloat16()) @ full(b.half())).dtype == torch.float32
        assert (a @ b).dtype == torch.bfloat16  # autocast is back after the block
    assert full(a.double()).dtype == torch.float64 and full(torch.arange(3)).dtype == torch.int64
    for where in (a, torch.device("cpu"), "cpu", [1.0]):
        with fp32(where):
            pass
