"""The ODPO and R-DPO formulas against an independent float64 computation written from the papers, with gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dpo_recipes.train.losses import dpo_logratio, odpo_loss, odpo_offset, rdpo_length_margin, rdpo_loss


def _log1p_exp(x: float) -> float:
    """log(1 + e^x) in plain Python floats, stable for large |x|."""
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def _pairs(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    logps = [(-40.0 * torch.rand(n, generator=g, dtype=torch.float64) - 1.0) for _ in range(4)]
    s_l = 5.0 * torch.rand(n, generator=g, dtype=torch.float64) + 0.1
    s_w = s_l + 3.0 * torch.rand(n, generator=g, dtype=torch.float64) + 0.05  # s_w > s_l > 0
    len_w = torch.randint(1, 60, (n,), generator=g).to(torch.float64)
    len_l = torch.randint(1, 60, (n,), generator=g).to(torch.float64)
    return logps, s_w, s_l, len_w, len_l


def _reference_logit(pc, pr, rc, rr, beta):
    # Written from the DPO definition: beta * [log pi/pi_ref (y_w) - log pi/pi_ref (y_l)]
    return beta * ((pc - rc) - (pr - rr))


@pytest.mark.parametrize("ratio", [False, True])
@pytest.mark.parametrize("beta,alpha", [(0.1, 1.0), (0.5, 0.5), (2.0, 3.0)])
def test_odpo_loss_matches_hand_computation_in_float64(ratio, beta, alpha):
    (pc, pr, rc, rr), s_w, s_l, _, _ = _pairs()
    got = odpo_loss(pc, pr, rc, rr, s_w, s_l, beta=beta, alpha=alpha, ratio=ratio)
    for i in range(len(pc)):
        gap = math.log(s_w[i].item() / s_l[i].item()) if ratio else math.log(s_w[i].item() - s_l[i].item())
        z = _reference_logit(pc[i].item(), pr[i].item(), rc[i].item(), rr[i].item(), beta) - alpha * gap
        assert got[i].item() == pytest.approx(_log1p_exp(-z), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("beta,alpha", [(0.1, 0.01), (0.5, 0.2), (1.0, -0.05)])
def test_rdpo_loss_matches_hand_computation_in_float64(beta, alpha):
    (pc, pr, rc, rr), _, _, len_w, len_l = _pairs(seed=1)
    got = rdpo_loss(pc, pr, rc, rr, len_w, len_l, beta=beta, alpha=alpha)
    for i in range(len(pc)):
        z = _reference_logit(pc[i].item(), pr[i].item(), rc[i].item(), rr[i].item(), beta)
        z += alpha * (len_w[i].item() - len_l[i].item())
        assert got[i].item() == pytest.approx(_log1p_exp(-z), rel=1e-12, abs=1e-12)


def test_odpo_gradients_match_the_analytic_derivative():
    (pc, pr, rc, rr), s_w, s_l, _, _ = _pairs(seed=2)
    beta, alpha = 0.3, 1.5
    leaves = [t.clone().requires_grad_(True) for t in (pc, pr, rc, rr, s_w, s_l)]
    odpo_loss(*leaves, beta=beta, alpha=alpha).sum().backward()
    for i in range(len(pc)):
        z = _reference_logit(pc[i].item(), pr[i].item(), rc[i].item(), rr[i].item(), beta)
        gap = s_w[i].item() - s_l[i].item()
        z -= alpha * math.log(gap)
        w = _sigmoid(-z)  # dL/dz = -sigma(-z)
        expected = [-beta * w, beta * w, beta * w, -beta * w, alpha * w / gap, -alpha * w / gap]
        for leaf, e in zip(leaves, expected):
            assert leaf.grad[i].item() == pytest.approx(e, rel=1e-10, abs=1e-12)


def test_rdpo_gradients_match_the_analytic_derivative():
    (pc, pr, rc, rr), _, _, len_w, len_l = _pairs(seed=3)
    beta, alpha = 0.2, 0.05
    leaves = [t.clone().requires_grad_(True) for t in (pc, pr, rc, rr)]
    rdpo_loss(*leaves, len_w, len_l, beta=beta, alpha=alpha).sum().backward()
    for i in range(len(pc)):
        z = _reference_logit(pc[i].item(), pr[i].item(), rc[i].item(), rr[i].item(), beta)
        z += alpha * (len_w[i].item() - len_l[i].item())
        w = _sigmoid(-z)
        for leaf, e in zip(leaves, [-beta * w, beta * w, beta * w, -beta * w]):
            assert leaf.grad[i].item() == pytest.approx(e, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("ratio", [False, True])
def test_odpo_passes_gradcheck(ratio):
    (pc, pr, rc, rr), s_w, s_l, _, _ = _pairs(n=4, seed=4)
    inputs = tuple(t.clone().requires_grad_(True) for t in (pc / 10, pr / 10, rc / 10, rr / 10, s_w, s_l))
    assert torch.autograd.gradcheck(lambda *x: odpo_loss(*x, beta=0.7, alpha=1.0, ratio=ratio), inputs)


def test_rdpo_passes_gradcheck():
    (pc, pr, rc, rr), _, _, len_w, len_l = _pairs(n=4, seed=5)
    inputs = tuple(t.clone().requires_grad_(True) for t in (pc / 10, pr / 10, rc / 10, rr / 10))
    assert torch.autograd.gradcheck(lambda *x: rdpo_loss(*x, len_w, len_l, beta=0.7, alpha=0.03), inputs)


def test_alpha_zero_gives_dpo_sigmoid_bit_for_bit():
    (pc, pr, rc, rr), s_w, s_l, len_w, len_l = _pairs(seed=6)
    pc, pr, rc, rr = (t.float() for t in (pc, pr, rc, rr))
    beta = 0.1
    # TRL's sigmoid term: -logsigmoid(beta * (chosen_logratios - rejected_logratios))
    dpo = -F.logsigmoid(beta * ((pc - rc) - (pr - rr)))
    assert torch.equal(odpo_loss(pc, pr, rc, rr, s_w, s_l, beta=beta, alpha=0.0), dpo)
    assert torch.equal(rdpo_loss(pc, pr, rc, rr, len_w, len_l, beta=beta, alpha=0.0), dpo)


def test_odpo_offset_ratio_and_difference_forms():
    s_w, s_l = torch.tensor([3.0, 10.0]), torch.tensor([1.0, 2.0])
    assert torch.allclose(odpo_offset(s_w, s_l, alpha=2.0), 2.0 * torch.log(torch.tensor([2.0, 8.0])))
    assert torch.allclose(odpo_offset(s_w, s_l, alpha=1.0, ratio=True), torch.log(torch.tensor([3.0, 5.0])))


def test_larger_score_gap_demands_a_larger_reward_margin():
    # Same policy/reference log-probs; the pair with the larger score gap has the larger loss (its offset is larger).
    z = torch.zeros(2)
    loss = odpo_loss(z, z, z, z, torch.tensor([2.0, 10.0]), torch.tensor([1.0, 1.0]), beta=0.1)
    assert loss[1] > loss[0]


def test_rdpo_downweights_pairs_whose_chosen_is_longer():
    # The gradient on h is beta * sigma(-z); a longer chosen raises z, so it shrinks the push towards the chosen answer.
    pc = torch.zeros(3, requires_grad=True)
    zeros = torch.zeros(3)
    rdpo_loss(pc, zeros, zeros, zeros, torch.tensor([10.0, 30.0, 60.0]), torch.tensor([30.0, 30.0, 30.0]),
              beta=0.1, alpha=0.05).sum().backward()
    push = -pc.grad  # how hard each pair pushes log pi(y_w) up
    assert push[0] > push[1] > push[2] > 0


def test_seed_regularizer_outside_the_sigmoid_has_zero_gradient():
    # L_DPO + lambda * E[Len(y_w) - Len(y_l)]: the added term is a constant of the data, so the policy gradient is
    # exactly the DPO gradient. This is why the hook implements R-DPO's in-sigmoid form instead.
    (pc, pr, rc, rr), _, _, len_w, len_l = _pairs(seed=7)
    grads = []
    for lam in (0.0, 5.0):
        leaves = [t.clone().requires_grad_(True) for t in (pc, pr)]
        loss = (-F.logsigmoid(0.1 * dpo_logratio(leaves[0], leaves[1], rc, rr))).mean()
        loss = loss + lam * (len_w - len_l).mean()
        loss.backward()
        grads.append([leaf.grad.clone() for leaf in leaves])
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_rdpo_length_margin_is_per_token():
    assert rdpo_length_margin(torch.tensor([12.0]), torch.tensor([2.0]), alpha=0.01).item() == pytest.approx(0.1)


@pytest.mark.parametrize("share", [0.6, 0.8, 0.9])
@pytest.mark.parametrize("alpha", [0.0, 0.01, 0.05])
def test_on_length_only_pairs_rdpo_optimum_is_dpo_minus_alpha_times_gap(share, alpha):
    # Pairs that differ only in a `gap`-token elaboration; the long answer wins a share p of them. One free parameter
    # theta = h(long over short). The minimum of the mean loss is at beta*theta = log(p / (1 - p)) for DPO (alpha 0)
    # and at log(p / (1 - p)) - alpha * gap for R-DPO: R-DPO explains the length preference by length, not by the
    # policy. experiments/length_bias.py measures this on the real model.
    beta, gap, n = 0.1, 50.0, 10
    n_long = round(share * n)
    long_wins = torch.tensor([1.0] * n_long + [-1.0] * (n - n_long), dtype=torch.float64)  # sign of h and of the gap
    theta = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([theta], lr=1.0, max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-15,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        h = long_wins * theta  # policy log-ratio of (chosen over rejected), reference at 0
        zeros = torch.zeros(n, dtype=torch.float64)
        loss = rdpo_loss(h, zeros, zeros, zeros, gap * (long_wins > 0), gap * (long_wins < 0), beta=beta,
                         alpha=alpha).mean()
        loss.backward()
        return loss

    optimizer.step(closure)
    p = n_long / n
    assert beta * theta.item() == pytest.approx(math.log(p / (1 - p)) - alpha * gap, abs=1e-6)
