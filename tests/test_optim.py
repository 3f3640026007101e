"""Single-process oracles for distml.optim.

torch is not a dependency, so the references below are the update rules of
torch.optim.SGD / Adam / AdamW as the torch documentation states them,
written out independently here, element by element in float64 (Python
scalars), for a handful of elements and steps. The optimizers under test run
on float64 arrays (tight tolerance) and float32 arrays (float32 tolerance).
If torch is installed the same trajectories are also compared against it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from distml import optim

STEPS = 7


def _trajectory(seed: int, n: int = 5, steps: int = STEPS):
    rng = np.random.default_rng(seed)
    p0 = rng.normal(size=n)
    grads = [rng.normal(size=n) for _ in range(steps)]
    return p0, grads


# ---- references: one element at a time, float64 -----------------------------


def ref_sgd(p0, grads, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
    out = []
    for j in range(len(p0)):
        p, buf = float(p0[j]), None
        for t, G in enumerate(grads):
            g = float(G[j]) + weight_decay * p
            if momentum:
                buf = g if buf is None else momentum * buf + (1 - dampening) * g
                g = g + momentum * buf if nesterov else buf
            p = p - lr * g
        out.append(p)
    return np.array(out)


def ref_adam(p0, grads, lr, b1, b2, eps, weight_decay=0.0, decoupled=False):
    out, ms, vs = [], [], []
    for j in range(len(p0)):
        p, m, v = float(p0[j]), 0.0, 0.0
        for t, G in enumerate(grads, start=1):
            g = float(G[j])
            if decoupled:
                p = p * (1 - lr * weight_decay)
            elif weight_decay:
                g = g + weight_decay * p
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            m_hat = m / (1 - b1 ** t)
            v_hat = v / (1 - b2 ** t)
            # torch writes this as lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)
            p = p - lr * m_hat / (math.sqrt(v_hat) + eps)
        out.append(p)
        ms.append(m)
        vs.append(v)
    return np.array(out), np.array(ms), np.array(vs)


def _run(opt_cls, p0, grads, dtype, **kw):
    p = p0.astype(dtype)
    opt = opt_cls([p], **kw)
    for g in grads:
        opt.step([g.astype(dtype)])
    return p, opt


TOL = {np.float64: 1e-12, np.float32: 2e-5}

SGD_CASES = [
    dict(lr=0.1),
    dict(lr=0.1, momentum=0.9),
    dict(lr=0.05, momentum=0.9, dampening=0.5),
    dict(lr=0.05, momentum=0.8, nesterov=True),
    dict(lr=0.1, momentum=0.9, weight_decay=0.01),
    dict(lr=0.1, momentum=0.9, weight_decay=0.1, nesterov=True),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kw", SGD_CASES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_sgd_matches_reference(kw, dtype):
    p0, grads = _trajectory(1)
    got, _ = _run(optim.SGD, p0, grads, dtype, **kw)
    np.testing.assert_allclose(got, ref_sgd(p0, grads, **kw), rtol=TOL[dtype], atol=TOL[dtype])


ADAM_CASES = [
    dict(lr=1e-3),
    dict(lr=0.1, betas=(0.8, 0.99), eps=1e-6),
    dict(lr=0.01, weight_decay=0.1),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("decoupled", [False, True], ids=["Adam", "AdamW"])
@pytest.mark.parametrize("kw", ADAM_CASES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_adam_matches_reference(kw, decoupled, dtype):
    p0, grads = _trajectory(2)
    cls = optim.AdamW if decoupled else optim.Adam
    kw = dict(kw)
    if decoupled and "weight_decay" not in kw:
        kw["weight_decay"] = 1e-2  # AdamW's default
    got, opt = _run(cls, p0, grads, dtype, **kw)
    b1, b2 = kw.get("betas", (0.9, 0.999))
    want, m, v = ref_adam(p0, grads, kw["lr"], b1, b2, kw.get("eps", 1e-8), kw.get("weight_decay", 0.0), decoupled)
    np.testing.assert_allclose(got, want, rtol=TOL[dtype], atol=TOL[dtype])
    np.testing.assert_allclose(opt.state[0]["exp_avg"], m, rtol=TOL[dtype], atol=TOL[dtype])
    np.testing.assert_allclose(opt.state[0]["exp_avg_sq"], v, rtol=TOL[dtype], atol=TOL[dtype])
    assert opt.steps == [STEPS]


def test_adamw_default_weight_decay():
    assert optim.AdamW([np.zeros(2)]).weight_decay == 1e-2
    assert optim.Adam([np.zeros(2)]).weight_decay == 0.0


def test_none_gradient_skips_parameter():
    a, b = np.ones(3), np.ones(2)
    opt = optim.Adam([a, b], lr=0.1)
    opt.step([np.ones(3), None])
    assert opt.steps == [1, 0]
    np.testing.assert_array_equal(b, np.ones(2))
    assert not np.array_equal(a, np.ones(3))


def test_multiple_parameters_equal_flat_parameter():
    # Element-wise state: an optimizer over the concatenation computes the
    # same as one over the pieces (what ShardedOptimizer relies on).
    rng = np.random.default_rng(3)
    shapes = [(3, 4), (5,), (2, 2, 2)]
    ps = [rng.normal(size=s) for s in shapes]
    flat = np.concatenate([p.ravel() for p in ps])
    a = optim.AdamW([p.copy() for p in ps], lr=0.05)
    b = optim.AdamW([flat.copy()], lr=0.05)
    for _ in range(4):
        gs = [rng.normal(size=s) for s in shapes]
        a.step(gs)
        b.step([np.concatenate([g.ravel() for g in gs])])
    np.testing.assert_allclose(np.concatenate([p.ravel() for p in a.params]), b.params[0], rtol=1e-14)


@pytest.mark.parametrize("cls,kw", [(optim.SGD, dict(lr=0.1, momentum=0.9)), (optim.Adam, dict(lr=0.01))])
def test_state_dict_round_trip_continues_identically(cls, kw):
    p0, grads = _trajectory(4, steps=6)
    full, _ = _run(cls, p0, grads, np.float64, **kw)
    p = p0.copy()
    first = cls([p], **kw)
    for g in grads[:3]:
        first.step([g])
    sd = first.state_dict()
    for g in grads[3:]:
        first.step([g * 100])  # state_dict must be a copy, unaffected by later steps
    q = p.copy()
    second = cls([q], **kw)
    for k in list(sd["hyperparameters"]):
        second.defaults[k] = 0.0 if k == "lr" else second.defaults[k]
    second.load_state_dict(sd)
    # rewind the parameter to where the state was saved
    p_mid, _ = _run(cls, p0, grads[:3], np.float64, **kw)
    np.copyto(q, p_mid)
    for g in grads[3:]:
        second.step([g])
    np.testing.assert_array_equal(q, full)
    assert second.lr == kw["lr"]


def test_invalid_arguments():
    with pytest.raises(ValueError):
        optim.SGD([np.zeros(2)], lr=0.1, nesterov=True)
    with pytest.raises(ValueError):
        optim.Adam([np.zeros(2)], betas=(1.0, 0.9))
    with pytest.raises(TypeError):
        optim.SGD([np.zeros(2, dtype=np.int32)], lr=0.1)
    with pytest.raises(ValueError):
        optim.SGD([], lr=0.1)
    opt = optim.SGD([np.zeros(2)], lr=0.1)
    with pytest.raises(ValueError):
        opt.step([np.zeros(3)])
    with pytest.raises(ValueError):
        opt.step([])


def test_lr_is_settable():
    p = np.ones(2)
    opt = optim.SGD([p], lr=0.1)
    opt.lr = 0.5
    opt.step([np.ones(2)])
    np.testing.assert_allclose(p, 0.5)


def test_against_torch_if_installed():
    torch = pytest.importorskip("torch")
    p0, grads = _trajectory(5)
    cases = [(optim.SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
             (optim.Adam, torch.optim.Adam, dict(lr=0.01, weight_decay=0.1)),
             (optim.AdamW, torch.optim.AdamW, dict(lr=0.01, weight_decay=0.1))]
    for ours, theirs, kw in cases:
        got, _ = _run(ours, p0, grads, np.float64, **kw)
        t = torch.tensor(p0, dtype=torch.float64, requires_grad=True)
        o = theirs([t], **kw)
        for g in grads:
            t.grad = torch.tensor(g, dtype=torch.float64)
            o.step()
        np.testing.assert_allclose(got, t.detach().numpy(), rtol=1e-12, atol=1e-12)
