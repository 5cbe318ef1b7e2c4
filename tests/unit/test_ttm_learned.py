from __future__ import annotations

import pytest
import torch
from torch import nn

from streamzip.operators.ttm_learned import LearnedMemory, TokenLearnerV11


@pytest.fixture(autouse=True)
def one_thread():  # type: ignore[no-untyped-def]
    # These tensors are tiny: intra-op threads only add contention (20x slower on a busy 2-core box).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_token_learner_outputs_are_convex_mixes_of_the_inputs() -> None:
    torch.manual_seed(0)
    tl = TokenLearnerV11(dim=6, num_tokens=3, hidden_dim=8)
    x = torch.randn(2, 5, 6)
    a = tl.weights(x)
    assert a.shape == (2, 3, 5)
    assert torch.allclose(a.sum(-1), torch.ones(2, 3)) and bool((a >= 0).all())
    assert torch.allclose(tl(x), a @ x)
    same = torch.randn(1, 1, 6).expand(1, 7, 6)
    assert torch.allclose(tl(same), same[:, :3], atol=1e-6)  # a mix of identical tokens is that token


def test_learned_memory_shapes_stay_fixed_over_steps() -> None:
    torch.manual_seed(0)
    mem = LearnedMemory(8, memory_tokens=4, read_tokens=2, input_tokens=3, hidden_dim=8)
    assert torch.equal(mem.initial_memory(2), torch.zeros(2, 4, 8))
    outs, memory = mem.run(torch.randn(2, 11, 3, 8))
    assert outs.shape == (2, 11, 2, 8) and memory.shape == (2, 4, 8)
    with pytest.raises(ValueError, match="3 input tokens"):
        mem(memory, torch.randn(2, 5, 8))
    free = LearnedMemory(8, memory_tokens=4, read_tokens=2, use_positional_embedding=False)
    assert free(free.initial_memory(1), torch.randn(1, 5, 8))[1].shape == (1, 4, 8)


@pytest.mark.parametrize("kwargs", [{"memory_tokens": 0}, {"read_tokens": 0}, {"input_tokens": None}])
def test_learned_memory_rejects_bad_sizes(kwargs: dict) -> None:
    args = {"memory_tokens": 4, "read_tokens": 2, "input_tokens": 3, **kwargs}
    with pytest.raises(ValueError):
        LearnedMemory(8, **args)


def test_training_a_few_steps_lowers_the_loss_and_reaches_read_and_write() -> None:
    """A tiny "which event was in window i" task: the loss must go down through read and write."""
    torch.manual_seed(0)
    windows, n, d, classes = 3, 4, 8, 4
    events = nn.functional.normalize(torch.randn(classes, d), dim=1)
    y = torch.randint(0, classes, (32, windows))
    x = 0.3 * torch.randn(32, windows, n, d)
    x[:, :, 0] = events[y]
    mem = LearnedMemory(d, memory_tokens=3, read_tokens=2, input_tokens=n, hidden_dim=16)
    time_emb = nn.Parameter(0.5 * torch.randn(windows, d))
    head = nn.Linear(3 * d, windows * classes)
    params = [*mem.parameters(), time_emb, *head.parameters()]
    opt = torch.optim.Adam(params, lr=1e-2)
    losses = []
    for _ in range(40):
        _, memory = mem.run(x + time_emb[None, :, None, :])
        logits = head(memory.flatten(1)).reshape(-1, classes)
        loss = nn.functional.cross_entropy(logits, y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        if not losses:
            for module in (mem.read, mem.write):
                assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in module.parameters())
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5
