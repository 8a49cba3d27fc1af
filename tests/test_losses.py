"""Tests for tipsomaly_lite.method.losses against slow per-pixel references written out here."""

from __future__ import annotations

import math

import pytest
import torch

from tipsomaly_lite.method.losses import LOSS_TERMS, dice_loss, focal_loss, fused_segmentation_loss, segmentation_loss


def slow_focal(probs: torch.Tensor, mask: torch.Tensor, gamma: float = 2.0, smooth: float = 1e-5) -> float:
    """docs/method.md §2.3 focal loss, one pixel at a time in Python floats."""
    b, c, h, w = probs.shape
    total = 0.0
    for i in range(b):
        for y in range(h):
            for x in range(w):
                label = int(mask[i, y, x])
                pt = smooth
                for k in range(c):
                    onehot = 1.0 if k == label else 0.0
                    pt += min(max(onehot, smooth), 1 - smooth) * float(probs[i, k, y, x])
                total += -((1 - pt) ** gamma) * math.log(pt)
    return total / (b * h * w)


def slow_dice(probs: torch.Tensor, target: torch.Tensor) -> float:
    """docs/method.md §2.3 Dice loss, per image with explicit sums."""
    scores = []
    for i in range(probs.shape[0]):
        inter = sum(float(p) * float(t) for p, t in zip(probs[i].flatten(), target[i].flatten()))
        sum_p = sum(float(p) for p in probs[i].flatten())
        sum_t = sum(float(t) for t in target[i].flatten())
        scores.append((2 * inter + 1) / (sum_p + sum_t + 1))
    return 1 - sum(scores) / len(scores)


def random_case(seed: int, b: int = 2, h: int = 5, w: int = 4, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(b, 2, h, w, generator=g, dtype=dtype) * 2, dim=1)
    mask = (torch.rand(b, h, w, generator=g) > 0.6).to(dtype)
    return probs, mask


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_focal_matches_slow_reference(seed):
    probs, mask = random_case(seed)
    assert focal_loss(probs, mask).item() == pytest.approx(slow_focal(probs, mask), rel=1e-5)


def test_focal_gamma_and_smooth_are_used():
    probs, mask = random_case(7)
    got = focal_loss(probs, mask, gamma=1.0, smooth=1e-2).item()
    assert got == pytest.approx(slow_focal(probs, mask, gamma=1.0, smooth=1e-2), rel=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_dice_matches_slow_reference(seed):
    probs, mask = random_case(seed)
    assert dice_loss(probs[:, 1], mask).item() == pytest.approx(slow_dice(probs[:, 1], mask), rel=1e-5)
    assert dice_loss(probs[:, 0], 1 - mask).item() == pytest.approx(slow_dice(probs[:, 0], 1 - mask), rel=1e-5)


def test_segmentation_loss_is_the_sum_of_the_three_terms():
    probs, mask = random_case(3, b=3)
    expected = slow_focal(probs, mask) + slow_dice(probs[:, 1], mask) + slow_dice(probs[:, 0], 1 - mask)
    assert segmentation_loss(probs, mask).item() == pytest.approx(expected, rel=1e-5)


def test_perfect_prediction():
    _, mask = random_case(4)
    probs = torch.stack([1 - mask, mask], dim=1)
    assert dice_loss(probs[:, 1], mask).item() == pytest.approx(0.0, abs=1e-7)
    assert dice_loss(probs[:, 0], 1 - mask).item() == pytest.approx(0.0, abs=1e-7)
    assert 0.0 <= focal_loss(probs, mask).item() < 1e-9
    assert segmentation_loss(probs, mask).item() == pytest.approx(0.0, abs=1e-6)


def test_uniform_half_has_known_focal_value():
    mask = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    probs = torch.full((1, 2, 2, 2), 0.5)
    pt = 0.5 * (1 - 1e-5) + 0.5 * 1e-5 + 1e-5  # = 0.5 + 1e-5 whatever the label
    expected = -((1 - pt) ** 2) * math.log(pt)
    assert expected == pytest.approx(0.25 * math.log(2), rel=1e-4)
    assert focal_loss(probs, mask).item() == pytest.approx(expected, rel=1e-6)


def test_empty_mask_and_empty_prediction_is_perfect_dice():
    zeros = torch.zeros(2, 3, 3)
    assert dice_loss(zeros, zeros).item() == 0.0


def test_mask_with_channel_dim_agrees():
    probs, mask = random_case(5)
    torch.testing.assert_close(segmentation_loss(probs, mask), segmentation_loss(probs, mask[:, None]))
    torch.testing.assert_close(focal_loss(probs, mask), focal_loss(probs, mask[:, None]))
    torch.testing.assert_close(segmentation_loss(probs, mask), segmentation_loss(probs, mask.bool()))


def test_gradients_flow_gradcheck():
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(2, 2, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    mask = (torch.rand(2, 3, 3, generator=g) > 0.5).double()
    assert torch.autograd.gradcheck(lambda z: segmentation_loss(torch.softmax(z, dim=1), mask), (logits,))
    loss = segmentation_loss(torch.softmax(logits, dim=1), mask)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_shape_errors():
    probs, mask = random_case(8)
    with pytest.raises(ValueError, match=r"\(B, 2, H, W\)"):
        focal_loss(probs[:, :1], mask)
    with pytest.raises(ValueError, match=r"\(B, 2, H, W\)"):
        segmentation_loss(probs[:, 0], mask)
    with pytest.raises(ValueError, match="mask must be"):
        segmentation_loss(probs, mask[:, :-1])
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        dice_loss(probs, mask)
    with pytest.raises(ValueError, match="target must be"):
        dice_loss(probs[:, 1], mask[:1])


def test_non_binary_mask_is_an_error():
    probs, mask = random_case(9)
    with pytest.raises(ValueError, match="only 0 and 1"):
        focal_loss(probs, mask * 0.5)


# ---- the fused gradient (tipsomaly_lite.method.training.FUSED_GRADIENT) equals autograd through the definition

FUSED_SHAPES = [(1, 2, 1, 1), (2, 2, 5, 4), (3, 2, 17, 11), (1, 2, 64, 64), (4, 2, 9, 30)]


@pytest.mark.parametrize("shape", FUSED_SHAPES)
def test_fused_loss_has_the_value_gradient_and_terms_of_autograd_through_the_definition(shape):
    g = torch.Generator().manual_seed(sum(shape))
    b, _, h, w = shape
    u = torch.rand(b, h, w, dtype=torch.float64, generator=g)
    mask = (torch.rand(b, 1, h, w, generator=g) > 0.7).double()
    mask[0] = 0  # an all-normal image too
    if b > 1:
        mask[-1] = 1  # and an all-anomalous one
    want_u, got_u = u.clone().requires_grad_(), u.clone().requires_grad_()
    want_terms: dict[str, float] = {}
    got_terms: dict[str, float] = {}
    want = segmentation_loss(torch.stack([1 - want_u, want_u], dim=1), mask, terms=want_terms)
    got = fused_segmentation_loss(got_u, mask, terms=got_terms)
    want.backward()
    got.backward()
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-12)
    torch.testing.assert_close(got_u.grad, want_u.grad, rtol=1e-9, atol=1e-15)
    assert got_terms == pytest.approx(want_terms, rel=1e-12)


@pytest.mark.parametrize("shape", [(3, 2, 17, 11), (1, 2, 64, 64)])
def test_fused_loss_has_the_same_gradient_through_the_softmax(shape):
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(*shape, dtype=torch.float64, generator=g) * 3
    mask = (torch.rand(shape[0], 1, *shape[2:], generator=g) > 0.7).double()
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    want = segmentation_loss(a.softmax(1), mask)
    got = fused_segmentation_loss(b.softmax(1)[:, 1], mask)
    want.backward()
    got.backward()
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-12)
    torch.testing.assert_close(b.grad, a.grad, rtol=1e-9, atol=1e-15)
    probs = logits[:, 1, :4, :3].sigmoid().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda p: fused_segmentation_loss(p, mask[:, :, :4, :3]), (probs,))
    with pytest.raises(ValueError, match="anomalous"):
        fused_segmentation_loss(probs[None], mask)


def test_fused_loss_in_float32_agrees_with_the_definition():
    """Training runs in float32: the two agree there to float32 rounding (1 - u loses u's low bits)."""
    g = torch.Generator().manual_seed(3)
    u = torch.rand(2, 37, 23, generator=g)
    mask = (torch.rand(2, 37, 23, generator=g) > 0.8).float()
    want_u, got_u = u.clone().requires_grad_(), u.clone().requires_grad_()
    want = segmentation_loss(torch.stack([1 - want_u, want_u], dim=1), mask)
    got = fused_segmentation_loss(got_u, mask)
    want.backward()
    got.backward()
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-5)
    torch.testing.assert_close(got_u.grad, want_u.grad, rtol=1e-3, atol=1e-5 * float(want_u.grad.abs().max()))


@pytest.mark.parametrize("fused", [True, False])
def test_the_training_step_gives_the_same_loss_and_gradient_either_way(monkeypatch, fused):
    """backward_step with FUSED_GRADIENT True or False: the same loss, terms and text-feature gradient."""
    import tipsomaly_lite.method.training as training

    g = torch.Generator().manual_seed(11)
    grid, size, dim = (4, 3), (20, 15), 16
    tokens = torch.nn.functional.normalize(torch.randn(3, grid[0] * grid[1], dim, generator=g), dim=-1)
    masks = (torch.rand(3, 1, *size, generator=g) > 0.7).float()
    text = torch.randn(2, dim, generator=g).requires_grad_()

    def step(flag: bool) -> tuple[float, dict[str, float], torch.Tensor]:
        monkeypatch.setattr(training, "FUSED_GRADIENT", flag)
        text.grad = None
        terms: dict[str, float] = {}
        loss = training.backward_step(lambda: text * 1, tokens, masks, 0.07, grid, terms)
        return loss, terms, text.grad.clone()

    assert training.FUSED_GRADIENT is True  # the default: the faster one, which trained every released run
    loss, terms, grad = step(fused)
    want_loss, want_terms, want_grad = step(not fused)
    # float32, as in training: equal up to rounding (the exact checks above run in float64)
    assert loss == pytest.approx(want_loss, rel=1e-4)
    assert terms == pytest.approx(want_terms, rel=1e-4, abs=1e-6)
    assert sum(terms.values()) == pytest.approx(loss, rel=1e-6)
    torch.testing.assert_close(grad, want_grad, rtol=1e-3, atol=1e-5 * float(want_grad.abs().max()))


def test_loss_terms_are_the_three_slow_terms_and_add_up():
    probs, mask = random_case(8, b=3)
    terms: dict[str, float] = {}
    total = segmentation_loss(probs, mask[:, None], terms=terms)
    assert tuple(terms) == LOSS_TERMS
    assert terms["focal"] == pytest.approx(slow_focal(probs, mask), rel=1e-5)
    assert terms["dice_anomalous"] == pytest.approx(slow_dice(probs[:, 1], mask), rel=1e-5)
    assert terms["dice_normal"] == pytest.approx(slow_dice(probs[:, 0], 1 - mask), rel=1e-5)
    assert sum(terms.values()) == pytest.approx(total.item(), rel=1e-6)
    torch.testing.assert_close(total, segmentation_loss(probs, mask))  # the terms change nothing
    segmentation_loss(probs, mask, terms=terms)  # a second call adds
    assert terms["focal"] == pytest.approx(2 * slow_focal(probs, mask), rel=1e-5)
    with pytest.raises(ValueError, match="probs must be"):
        segmentation_loss(probs[:, :1], mask, terms={})


def test_fused_loss_sums_its_terms_over_calls():
    g = torch.Generator().manual_seed(9)
    u = torch.rand(2, 13, 9, generator=g, dtype=torch.float64)
    mask = (torch.rand(2, 13, 9, generator=g) > 0.6).double()
    terms: dict[str, float] = {}
    total = fused_segmentation_loss(u, mask, terms=terms)
    assert sum(terms.values()) == pytest.approx(total.item(), rel=1e-12)
    once = dict(terms)
    fused_segmentation_loss(u, mask, terms=terms)  # a second call adds
    assert terms == pytest.approx({k: 2 * v for k, v in once.items()}, rel=1e-12)
