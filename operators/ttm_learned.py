"""The learned Token Turing Machine memory: TokenLearner v1.1 read and write (Ryoo et al., CVPR 2023).

Structure as in google-research/scenic ``projects/token_turing/model.py`` (``TokenTuringMachineUnit``,
memory mode ``TL``), restated in PyTorch:

- ``S_k`` is TokenLearner v1.1 (``projects/token_learner/model.py::TokenLearnerModuleV11``):
  ``A = softmax_over_tokens(MLP(LayerNorm(X)))`` with the MLP ``D → hidden (GELU) → k`` logits, and
  ``S_k(X) = Aᵀ·X``: each of the k outputs is a convex mix of the input tokens.
- one step: read ``Z = S_r([M ‖ I])``, process ``O = Proc(Z)``, write ``M' = S_m([M ‖ I ‖ O])``; the
  memory starts at zeros. With ``use_positional_embedding`` a learned embedding per position of
  ``[M ‖ I]`` (read) and ``[M ‖ I ‖ O]`` (write) is added first ("location-based addressing").

Where it differs from the reference, and why:

- ``Proc`` is a stack of pre-norm residual MLP blocks on the r read tokens, not a 4-layer ViT: the
  engine's consumer is an LLM, and the processor here only has to make the write trainable end to end
  (TTM also offers MLP and Mixer processors).
- No dropout, and plain PyTorch modules (``nn.Linear``, ``nn.LayerNorm``) instead of Flax's.

The training-free memory (:mod:`streamzip.operators.memory`) is the engine's default: it needs no
training data and keeps each token's time span. ``examples/train_ttm.py`` trains this module on a
synthetic task (recall which event happened in which window) on which it beats the training-free write.
This module registers no pipeline stage.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LearnedMemory", "ResidualMLP", "TokenLearnerV11"]


class TokenLearnerV11(nn.Module):
    """``S_k``: ``(B, n, D)`` → ``(B, k, D)``, each output a softmax-weighted mix of the n inputs.

    Args:
        dim: token dimension D.
        num_tokens: k, the number of output tokens.
        hidden_dim: width of the scoring MLP (64 in scenic's TokenLearner v1.1).
    """

    def __init__(self, dim: int, num_tokens: int, hidden_dim: int = 64) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.norm = nn.LayerNorm(dim)
        self.score = nn.Sequential(nn.Linear(dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, num_tokens))

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """``A``: ``(B, k, n)``, each row a distribution over the n input tokens."""
        return self.score(self.norm(x)).transpose(1, 2).softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weights(x) @ x


class ResidualMLP(nn.Module):
    """``Proc``: pre-norm residual MLP blocks on ``(B, r, D)``."""

    def __init__(self, dim: int, num_layers: int = 1, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))
            for _ in range(num_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + block(x)
        return x


class LearnedMemory(nn.Module):
    """One TTM unit: ``(memory (B, m, D), inputs (B, n, D))`` → ``(read output (B, r, D), memory (B, m, D))``.

    Args:
        dim: token dimension D.
        memory_tokens: m (scenic's unit default 64; the paper's main setting 96).
        read_tokens: r (scenic's default 8; the paper's 16).
        input_tokens: n, the tokens per step; needed for the positional embeddings.
        hidden_dim: width of the TokenLearner scoring MLPs.
        process_layers: residual MLP blocks in ``Proc`` (0 = identity).
        use_positional_embedding: add learned position embeddings before read and write.
    """

    def __init__(self, dim: int, *, memory_tokens: int = 64, read_tokens: int = 8, input_tokens: int | None = None,
                 hidden_dim: int = 64, process_layers: int = 1, use_positional_embedding: bool = True) -> None:
        super().__init__()
        if memory_tokens < 1 or read_tokens < 1:
            raise ValueError(f"memory_tokens and read_tokens must be >= 1, got {memory_tokens} and {read_tokens}")
        if use_positional_embedding and input_tokens is None:
            raise ValueError("use_positional_embedding needs input_tokens (the tokens per step)")
        self.dim, self.memory_tokens, self.read_tokens = dim, memory_tokens, read_tokens
        self.input_tokens = input_tokens
        self.read = TokenLearnerV11(dim, read_tokens, hidden_dim)
        self.write = TokenLearnerV11(dim, memory_tokens, hidden_dim)
        self.process = ResidualMLP(dim, process_layers)
        self.read_pos: nn.Parameter | None = None
        self.write_pos: nn.Parameter | None = None
        if use_positional_embedding:
            assert input_tokens is not None
            self.read_pos = nn.Parameter(0.02 * torch.randn(memory_tokens + input_tokens, dim))
            self.write_pos = nn.Parameter(0.02 * torch.randn(memory_tokens + input_tokens + read_tokens, dim))

    def initial_memory(self, batch: int, *, device: torch.device | None = None) -> torch.Tensor:
        """``(batch, m, D)`` zeros, as TTM starts, on ``device`` (the module's when None)."""
        device = self.read.norm.weight.device if device is None else device
        return torch.zeros(batch, self.memory_tokens, self.dim, device=device)

    def forward(self, memory: torch.Tensor, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.input_tokens is not None and self.read_pos is not None and inputs.shape[1] != self.input_tokens:
            raise ValueError(f"this memory was built for {self.input_tokens} input tokens per step, "
                             f"got {inputs.shape[1]}")
        x = torch.cat([memory, inputs], dim=1)
        z = self.read(x + self.read_pos if self.read_pos is not None else x)
        out = self.process(z)
        y = torch.cat([x, out], dim=1)
        new_memory = self.write(y + self.write_pos if self.write_pos is not None else y)
        return out, new_memory

    def run(self, steps: torch.Tensor, memory: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Loop over ``steps`` ``(B, T, n, D)``; returns the read outputs ``(B, T, r, D)`` and the last memory."""
        if memory is None:
            memory = self.initial_memory(steps.shape[0], device=steps.device)
        outs = []
        for t in range(steps.shape[1]):
            out, memory = self(memory, steps[:, t])
            outs.append(out)
        return torch.stack(outs, dim=1), memory
