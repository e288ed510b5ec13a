import math

import numpy as np
import torch
from torch import nn

from vitok.train.optim import EMA, build_adamw, param_groups, warmup_constant, warmup_cosine


def test_schedule_shape():
    lrs = [warmup_cosine(s, 10, 110) for s in range(110)]
    assert lrs[0] == 0.1 and lrs[9] == 1.0
    assert math.isclose(lrs[60], 0.5, abs_tol=1e-12)  # half way through the cosine
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert math.isclose(warmup_cosine(110, 10, 110, min_ratio=0.1), 0.1)
    assert [warmup_constant(s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_no_decay_on_norms_and_biases():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Conv2d(4, 4, 3))
    decay, no_decay = param_groups(list(model.named_parameters()), 0.1)
    assert {p.dim() for p in decay["params"]} == {2, 4}
    assert {p.dim() for p in no_decay["params"]} == {1} and no_decay["weight_decay"] == 0.0
    opt = build_adamw(list(model.named_parameters()), 1e-3, (0.9, 0.95), 1e-4, fused=True)
    assert opt.defaults["betas"] == (0.9, 0.95) and opt.defaults["fused"]
    # A device-side found_inf flag makes the fused kernel skip the update (no host sync needed).
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.found_inf = torch.tensor(1.0)
    opt.step()
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    opt.found_inf = torch.tensor(0.0)
    opt.step()
    assert not any(torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_ema_matches_a_float64_recurrence():
    rng = np.random.default_rng(0)
    target = {"w": torch.zeros(5)}
    source = {"w": torch.tensor(rng.normal(size=5), dtype=torch.float32)}
    ema = EMA(target, source, decay=0.9)
    ref = source["w"].double().clone()
    for n in range(30):
        source["w"].copy_(torch.tensor(rng.normal(size=5)))
        d = min(0.9, (1 + n) / (10 + n))
        ref = d * ref + (1 - d) * source["w"].double()
        ema.update(source)
    assert torch.allclose(target["w"].double(), ref, atol=1e-6)
    # keep=0 leaves the shadow alone; keep=1 is the ordinary update.
    frozen = target["w"].clone()
    ema.update(source, keep=torch.tensor(0.0))
    assert torch.equal(target["w"], frozen)
    ema.num_updates -= 1  # keep the reference recurrence's count
    state = ema.state_dict()
    other = EMA({"w": torch.zeros(5)}, source, decay=0.5)
    other.load_state_dict(state)
    assert other.num_updates == 30 and torch.equal(other.shadow["w"], target["w"])
