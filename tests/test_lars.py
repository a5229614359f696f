"""Tests for util.optim.LARS: the official MAE linear-probe LARS update, hand-computed, and how timm's Lars differs."""
import io

import pytest
import torch
import timm.optim

from util.optim import LARS

LR, MOM, TC = 0.5, 0.9, 0.01
W0 = torch.tensor([[3.0, 0.0], [0.0, 4.0]], dtype=torch.float64)   # ||W0|| = 5
B0 = torch.tensor([1.0, -1.0], dtype=torch.float64)
GRADS_W = [torch.tensor([[0.6, 0.8], [0.0, 0.0]], dtype=torch.float64),   # ||.|| = 1
           torch.tensor([[-1.0, 2.0], [0.5, 0.0]], dtype=torch.float64)]
GRADS_B = [torch.tensor([0.1, 0.2], dtype=torch.float64),
           torch.tensor([-0.3, 0.4], dtype=torch.float64)]


def _params() -> tuple[torch.nn.Parameter, torch.nn.Parameter]:
    return torch.nn.Parameter(W0.clone()), torch.nn.Parameter(B0.clone())


def _step(opt: torch.optim.Optimizer, params, grads) -> None:
    for p, g in zip(params, grads):
        p.grad = g.clone()
    opt.step()


def _l2(x: torch.Tensor) -> torch.Tensor:
    return (x ** 2).sum().sqrt()


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_two_steps_match_hand_computation(wd):
    """Weight: decay, trust ratio on the decayed update, momentum; bias: plain momentum SGD."""
    w, b = _params()
    opt = LARS([w, b], lr=LR, weight_decay=wd, momentum=MOM, trust_coefficient=TC)

    # Step 1 (momentum buffers start at zero).
    d1 = GRADS_W[0] + wd * W0
    mu_w = (TC * _l2(W0) / _l2(d1)) * d1
    w1 = W0 - LR * mu_w
    mu_b = GRADS_B[0]
    b1 = B0 - LR * mu_b
    _step(opt, (w, b), (GRADS_W[0], GRADS_B[0]))
    torch.testing.assert_close(w.detach(), w1)
    torch.testing.assert_close(b.detach(), b1)
    if wd == 0.0:
        # q = 0.01 * 5 / 1 = 0.05, so W1 = W0 - 0.5 * 0.05 * g1.
        torch.testing.assert_close(w.detach(), torch.tensor([[2.985, -0.02], [0.0, 4.0]], dtype=torch.float64))
    torch.testing.assert_close(w.grad, GRADS_W[0])   # the gradient itself is left alone

    # Step 2 (ratio from the updated weight; momentum carries step 1's scaled update).
    d2 = GRADS_W[1] + wd * w1
    mu_w = MOM * mu_w + (TC * _l2(w1) / _l2(d2)) * d2
    w2 = w1 - LR * mu_w
    mu_b = MOM * mu_b + GRADS_B[1]
    b2 = b1 - LR * mu_b
    _step(opt, (w, b), (GRADS_W[1], GRADS_B[1]))
    torch.testing.assert_close(w.detach(), w2)
    torch.testing.assert_close(b.detach(), b2)


def test_zero_weight_gets_unit_trust_ratio():
    """||p|| == 0 -> q = 1: the first step is plain SGD on the (decayed) gradient, no NaN."""
    w = torch.nn.Parameter(torch.zeros(2, 2, dtype=torch.float64))
    opt = LARS([w], lr=LR, weight_decay=0.1, momentum=MOM, trust_coefficient=TC)
    _step(opt, [w], [GRADS_W[0]])
    torch.testing.assert_close(w.detach(), -LR * GRADS_W[0])


def test_zero_update_gets_unit_trust_ratio():
    """||dp|| == 0 (zero grad, no decay) -> q = 1 rather than 0/0: the weight stays put."""
    w = torch.nn.Parameter(W0.clone())
    opt = LARS([w], lr=LR, weight_decay=0.0, momentum=MOM, trust_coefficient=TC)
    _step(opt, [w], [torch.zeros(2, 2, dtype=torch.float64)])
    torch.testing.assert_close(w.detach(), W0)


def test_1d_params_get_no_decay_and_no_trust_scaling():
    """Even with heavy decay and a tiny trust coefficient a 1-D param moves by exactly -lr * grad."""
    b = torch.nn.Parameter(B0.clone())
    opt = LARS([b], lr=LR, weight_decay=10.0, momentum=MOM, trust_coefficient=1e-6)
    _step(opt, [b], [GRADS_B[0]])
    torch.testing.assert_close(b.detach(), B0 - LR * GRADS_B[0])


def test_state_dict_round_trip_continues_identically():
    """An optimizer reloaded (through torch.save) after step 2 gives the same params after step 3."""
    def make(params):
        return LARS(params, lr=LR, weight_decay=0.05, momentum=MOM, trust_coefficient=TC)

    grads = list(zip(GRADS_W, GRADS_B)) + [(GRADS_W[0] - GRADS_W[1], GRADS_B[1] * 2)]
    ref = _params()
    ref_opt = make(ref)
    for g in grads:
        _step(ref_opt, ref, g)

    cut = _params()
    cut_opt = make(cut)
    for g in grads[:2]:
        _step(cut_opt, cut, g)
    buf = io.BytesIO()
    torch.save(cut_opt.state_dict(), buf)
    buf.seek(0)
    resumed = tuple(torch.nn.Parameter(p.detach().clone()) for p in cut)
    resumed_opt = make(resumed)
    resumed_opt.load_state_dict(torch.load(buf))
    _step(resumed_opt, resumed, grads[2])

    for p, q in zip(ref, resumed):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=0)


def test_param_without_grad_is_untouched():
    w, b = _params()
    opt = LARS([w, b], lr=LR, weight_decay=0.1, momentum=MOM, trust_coefficient=TC)
    w.grad = GRADS_W[0].clone()
    opt.step()
    torch.testing.assert_close(b.detach(), B0, rtol=0, atol=0)
    assert b not in opt.state


def test_step_returns_closure_loss():
    w = torch.nn.Parameter(W0.clone())
    opt = LARS([w], lr=LR)

    def closure():
        opt.zero_grad()
        loss = (w ** 2).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == pytest.approx(25.0)


@pytest.mark.parametrize("timm_kwargs", [
    dict(weight_decay=0.0, always_adapt=False),   # the linear-probe setting: timm does not adapt at all
    dict(weight_decay=0.0, always_adapt=True),    # adapts, but also scales the 1-D bias
    dict(weight_decay=0.1, always_adapt=False),   # ||g|| + wd*||p|| (+ eps) instead of ||g + wd*p||
])
def test_timm_lars_differs(timm_kwargs):
    """Why util.optim.LARS exists: no timm.optim.Lars setting reproduces the official update."""
    ours, theirs = _params(), _params()
    ours_opt = LARS(ours, lr=LR, weight_decay=timm_kwargs["weight_decay"], momentum=MOM, trust_coefficient=TC)
    timm_opt = timm.optim.Lars(theirs, lr=LR, momentum=MOM, trust_coeff=TC, **timm_kwargs)
    for g in zip(GRADS_W, GRADS_B):
        _step(ours_opt, ours, g)
        _step(timm_opt, theirs, g)
    assert any(not torch.allclose(p, q) for p, q in zip(ours, theirs))
    if timm_kwargs == dict(weight_decay=0.0, always_adapt=False):
        # timm is plain momentum SGD here: one step moves W by -lr * g.
        w = torch.nn.Parameter(W0.clone())
        _step(timm.optim.Lars([w], lr=LR, momentum=MOM, trust_coeff=TC, **timm_kwargs), [w], [GRADS_W[0]])
        torch.testing.assert_close(w.detach(), W0 - LR * GRADS_W[0])
