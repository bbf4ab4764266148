"""dpo_loss and reward_loss against an independent scalar computation (plain math) on fixed numbers."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.losses import DPO_LOSSES, dpo_loss, reward_loss

PI_W = [-10.0, -4.0, -7.5]
PI_L = [-12.0, -3.0, -7.0]
REF_W = [-11.0, -4.5, -7.0]
REF_L = [-11.5, -3.5, -8.0]
LEN_W = [5.0, 2.0, 3.0]
LEN_L = [4.0, 3.0, 6.0]
BETA = 0.3


def logsigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def expected(loss_type: str, eps: float = 0.0) -> tuple[list[float], list[float], list[float]]:
    losses, chosen, rejected = [], [], []
    for i in range(3):
        pw, pl, rw, rl = PI_W[i], PI_L[i], REF_W[i], REF_L[i]
        if loss_type == "ipo":
            pw, rw, pl, rl = pw / LEN_W[i], rw / LEN_W[i], pl / LEN_L[i], rl / LEN_L[i]
        h = (pw - pl) - (rw - rl)
        if loss_type == "sigmoid":
            losses.append(-(1 - eps) * logsigmoid(BETA * h) - eps * logsigmoid(-BETA * h))
        elif loss_type == "ipo":
            losses.append((h - 1 / (2 * BETA)) ** 2)
        else:
            losses.append(max(0.0, 1 - BETA * h))
        chosen.append(BETA * (pw - rw))
        rejected.append(BETA * (pl - rl))
    return losses, chosen, rejected


def t(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


@pytest.mark.parametrize(("loss_type", "eps"), [("sigmoid", 0.0), ("sigmoid", 0.2), ("ipo", 0.0), ("hinge", 0.0)])
def test_dpo_loss_matches_the_paper_equation(loss_type: str, eps: float) -> None:
    losses, chosen, rejected = dpo_loss(
        t(PI_W),
        t(PI_L),
        t(REF_W),
        t(REF_L),
        beta=BETA,
        loss_type=loss_type,
        label_smoothing=eps,
        chosen_lengths=t(LEN_W),
        rejected_lengths=t(LEN_L),
    )
    want_losses, want_chosen, want_rejected = expected(loss_type, eps)
    assert losses.tolist() == pytest.approx(want_losses, rel=1e-9)
    assert chosen.tolist() == pytest.approx(want_chosen, rel=1e-9)
    assert rejected.tolist() == pytest.approx(want_rejected, rel=1e-9)


def test_dpo_loss_variants_all_have_a_reference_test() -> None:
    assert set(DPO_LOSSES) == {"sigmoid", "ipo", "hinge"}


def test_sigmoid_and_hinge_use_summed_log_probs_so_lengths_do_not_matter() -> None:
    base = dpo_loss(t(PI_W), t(PI_L), t(REF_W), t(REF_L), beta=BETA, loss_type="hinge")[0]
    with_lengths = dpo_loss(
        t(PI_W),
        t(PI_L),
        t(REF_W),
        t(REF_L),
        beta=BETA,
        loss_type="hinge",
        chosen_lengths=t(LEN_W),
        rejected_lengths=t(LEN_L),
    )[0]
    assert torch.equal(base, with_lengths)


def test_ipo_without_lengths_is_refused() -> None:
    with pytest.raises(ValueError, match="lengths"):
        dpo_loss(t(PI_W), t(PI_L), t(REF_W), t(REF_L), beta=BETA, loss_type="ipo")


def test_dpo_loss_gradient_pushes_chosen_up_and_rejected_down() -> None:
    chosen = t(PI_W).requires_grad_()
    rejected = t(PI_L).requires_grad_()
    losses, _, _ = dpo_loss(chosen, rejected, t(REF_W), t(REF_L), beta=BETA)
    losses.sum().backward()
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()


def test_reward_loss_is_bradley_terry_with_margin_and_centering() -> None:
    rw, rl, m, c = [1.0, -0.5, 2.0], [0.5, 0.5, -1.0], [0.2, 0.0, 1.0], 0.05
    got = reward_loss(t(rw), t(rl), margin=t(m), center_rewards_coefficient=c)
    bt = -sum(logsigmoid(rw[i] - rl[i] - m[i]) for i in range(3)) / 3
    centre = c * sum((rw[i] + rl[i]) ** 2 for i in range(3)) / 3
    assert got.item() == pytest.approx(bt + centre, rel=1e-12)


def test_reward_loss_without_options_is_plain_bradley_terry() -> None:
    rw, rl = [1.0, -0.5], [0.5, 0.5]
    got = reward_loss(t(rw), t(rl))
    assert got.item() == pytest.approx(-(logsigmoid(0.5) + logsigmoid(-1.0)) / 2, rel=1e-12)
