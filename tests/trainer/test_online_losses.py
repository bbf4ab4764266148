"""GRPO/PPO losses in trainer.losses against independent (loop, plain-Python) computations."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from trainer.losses import (
    aggregate_token_loss,
    clipped_policy_loss,
    gae,
    group_advantages,
    kl_penalty,
    masked_whiten,
    value_loss,
)

REWARDS = [1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 2.5]  # two prompts x G = 4
MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.float32)


def test_group_advantages_normalise_each_group_by_its_own_mean_and_std() -> None:
    advantages = group_advantages(torch.tensor(REWARDS), num_generations=4, scale_rewards="group", eps=1e-4)
    expected = []
    for group in (REWARDS[:4], REWARDS[4:]):
        mean, std = statistics.mean(group), statistics.stdev(group)
        expected += [(r - mean) / (std + 1e-4) for r in group]
    torch.testing.assert_close(advantages, torch.tensor(expected))


def test_group_advantages_with_batch_std_and_without_scaling() -> None:
    batch_std = statistics.stdev(REWARDS)
    centred = []
    for group in (REWARDS[:4], REWARDS[4:]):
        centred += [r - statistics.mean(group) for r in group]
    batch = group_advantages(torch.tensor(REWARDS), 4, scale_rewards="batch", eps=1e-4)
    none = group_advantages(torch.tensor(REWARDS), 4, scale_rewards="none")
    torch.testing.assert_close(batch, torch.tensor([c / (batch_std + 1e-4) for c in centred]))
    torch.testing.assert_close(none, torch.tensor(centred))


def test_constant_group_rewards_give_zero_advantages() -> None:
    assert group_advantages(torch.ones(6), 3).abs().max().item() == 0.0


@pytest.mark.parametrize(
    ("estimator", "formula"),
    [
        ("k1", lambda lr: lr),
        ("k2", lambda lr: lr * lr / 2),
        ("k3", lambda lr: math.exp(-lr) - 1 + lr),
    ],
)
def test_kl_estimators_match_their_formulas(estimator: str, formula: object) -> None:
    logprobs = torch.tensor([-1.0, -0.5, -2.0, -0.1])
    ref_logprobs = torch.tensor([-1.2, -0.5, -1.0, -0.4])
    expected = [formula(a - b) for a, b in zip(logprobs.tolist(), ref_logprobs.tolist(), strict=True)]  # type: ignore[operator]
    torch.testing.assert_close(kl_penalty(logprobs, ref_logprobs, estimator), torch.tensor(expected))


def test_k3_is_never_negative_and_zero_at_the_reference() -> None:
    logprobs = torch.randn(100)
    assert (kl_penalty(logprobs, logprobs.flip(0), "k3") >= 0).all()
    assert kl_penalty(logprobs, logprobs, "k3").abs().max().item() == 0.0


def test_clipped_policy_loss_clips_asymmetrically_and_reports_where() -> None:
    old = torch.zeros(1, 4)
    # ratios 1.5, 0.5, 1.1, 0.7 with eps_low 0.2, eps_high 0.28
    logprobs = torch.log(torch.tensor([[1.5, 0.5, 1.1, 0.7]]))
    for advantage in (2.0, -1.0):
        loss, clipped = clipped_policy_loss(logprobs, old, torch.tensor([advantage]), 0.2, 0.28)
        expected, expected_clipped = [], []
        for ratio in (1.5, 0.5, 1.1, 0.7):
            unclipped = -advantage * ratio
            clipped_term = -advantage * min(max(ratio, 0.8), 1.28)
            expected.append(max(unclipped, clipped_term))
            expected_clipped.append(clipped_term > unclipped)
        torch.testing.assert_close(loss, torch.tensor([expected]))
        assert clipped.tolist() == [expected_clipped]
    # Positive advantage clips only above 1 + eps_high: ratio 1.5 is clipped, 0.5 is not.
    _, clipped = clipped_policy_loss(logprobs, old, torch.tensor([2.0]), 0.2, 0.28)
    assert clipped.tolist() == [[True, False, False, False]]


def test_clipped_policy_loss_gradient_at_ratio_one_is_minus_the_advantage() -> None:
    logprobs = torch.zeros(2, 3, requires_grad=True)
    advantages = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])
    loss, _ = clipped_policy_loss(logprobs, logprobs.detach(), advantages)
    loss.sum().backward()
    torch.testing.assert_close(logprobs.grad, -advantages)


def _independent_aggregate(loss: torch.Tensor, mask: torch.Tensor, loss_type: str, max_len: int) -> float:
    rows = [[(v, m) for v, m in zip(lr, mr, strict=True)] for lr, mr in zip(loss.tolist(), mask.tolist(), strict=True)]
    sums = [sum(v * m for v, m in row) for row in rows]
    lengths = [sum(m for _, m in row) for row in rows]
    if loss_type == "grpo":
        return sum(s / n for s, n in zip(sums, lengths, strict=True)) / len(rows)
    if loss_type in ("bnpo", "dapo"):
        return sum(sums) / sum(lengths)
    return sum(sums) / (len(rows) * max_len)  # dr_grpo


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_token_aggregation_matches_its_definition_on_masked_tokens(loss_type: str) -> None:
    loss = torch.arange(16, dtype=torch.float32).view(4, 4) - 5
    got = aggregate_token_loss(loss, MASK, loss_type, max_completion_length=6)
    assert got.item() == pytest.approx(_independent_aggregate(loss, MASK, loss_type, max_len=6))


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo", "bnpo"])
def test_accumulated_micro_batch_gradients_equal_the_full_batch_gradient(loss_type: str) -> None:
    """Two micro-batches of 2 sequences (5 + 5 tokens, then 4 + 6 tokens) against one batch of 4."""
    torch.manual_seed(0)
    weights = torch.randn(4, 4)
    for mask in (MASK, MASK[[0, 3, 1, 2]]):  # micro-batches with 5+5 tokens, then 4+6 tokens
        param = torch.ones(4, 4, requires_grad=True)
        full = aggregate_token_loss(param * weights, mask, loss_type, max_completion_length=6)
        (full_grad,) = torch.autograd.grad(full, param)

        param.grad = None
        totals = {"num_sequences": 4, "num_tokens": mask.sum().item(), "accumulation_steps": 2}
        for rows in (slice(0, 2), slice(2, 4)):
            micro = aggregate_token_loss(
                (param * weights)[rows], mask[rows], loss_type, max_completion_length=6, **totals
            )
            micro.backward()
        micro_tokens = [mask[:2].sum().item(), mask[2:].sum().item()]
        if loss_type == "bnpo" and micro_tokens[0] != micro_tokens[1]:
            # bnpo normalises by each micro-batch's tokens: the mean of the micro-batch token means.
            expected = torch.cat([weights[:2] * mask[:2] / micro_tokens[0], weights[2:] * mask[2:] / micro_tokens[1]])
            torch.testing.assert_close(param.grad, expected / 2)
            assert not torch.allclose(param.grad, full_grad)
        else:
            torch.testing.assert_close(param.grad, full_grad)


def test_gae_matches_a_loop_over_each_sequence() -> None:
    rewards = torch.tensor([[0.0, 0.1, 1.0, 9.0], [0.5, -1.0, 0.0, 0.0]])
    values = torch.tensor([[0.3, 0.2, 0.4, 7.0], [0.1, 0.6, 5.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    gamma, lam = 0.9, 0.8
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    for b in range(2):
        n = int(mask[b].sum())
        r, v = rewards[b, :n].tolist(), [*values[b, :n].tolist(), 0.0]
        expected = [0.0] * n
        running = 0.0
        for t in reversed(range(n)):
            running = r[t] + gamma * v[t + 1] - v[t] + gamma * lam * running
            expected[t] = running
        torch.testing.assert_close(advantages[b, :n], torch.tensor(expected))
        torch.testing.assert_close(returns[b, :n], torch.tensor(expected) + values[b, :n])
        assert advantages[b, n:].abs().sum() == 0 and returns[b, n:].abs().sum() == 0


def test_value_loss_takes_the_larger_of_clipped_and_unclipped_errors() -> None:
    values = torch.tensor([[1.0, 0.0, 0.5]])
    old_values = torch.tensor([[0.0, 0.0, 0.4]])
    returns = torch.tensor([[2.0, 1.0, 0.0]])
    loss, clipped = value_loss(values, old_values, returns, cliprange_value=0.2)
    expected, expected_clipped = [], []
    for v, o, ret in zip(values[0].tolist(), old_values[0].tolist(), returns[0].tolist(), strict=True):
        v_clip = o + min(max(v - o, -0.2), 0.2)
        expected.append(0.5 * max((v - ret) ** 2, (v_clip - ret) ** 2))
        expected_clipped.append((v_clip - ret) ** 2 > (v - ret) ** 2)
    torch.testing.assert_close(loss, torch.tensor([expected]))
    assert clipped.tolist() == [expected_clipped]


def test_masked_whiten_uses_only_masked_positions() -> None:
    values = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, -50.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    whitened = masked_whiten(values, mask)
    kept = torch.tensor([1.0, 2.0, 3.0, 4.0])
    expected = (kept - kept.mean()) / torch.sqrt(kept.var(unbiased=False) + 1e-8)
    torch.testing.assert_close(whitened[mask.bool()], expected)
