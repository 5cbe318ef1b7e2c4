"""Fidelity of a compressed token stream to the encoder's original tokens.

``fidelity`` is the mean, over every original token, of the cosine between the original and the
output token that represents it (``Tokens.assignment``); an original that was dropped, or that no
output covers, counts 0. ``reduction`` is ``1 − tokens_out / tokens_in`` (0.9 = ten times fewer
tokens). Together they draw the fidelity-vs-budget curve every operator is compared on.

:class:`FidelityMeter` computes them incrementally for a run: add the encoder's packets as they are
produced and the final outputs as they come out; each original is freed as soon as an output accounts
for it, so memory stays bounded by what is in flight. An output packet may cover originals from
several encoder packets (a window), and the originals of one encoder packet may be spread over several
outputs. Ids are per stream and modality, as the encoders number them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from streamzip.devices import torch_threads
from streamzip.packets import Tokens
from streamzip.tokens import cosine_to_represented

__all__ = ["FidelityMeter", "fidelity"]


@dataclass
class _Chunk:
    ids: torch.Tensor    # (m,) sorted original ids
    data: torch.Tensor   # (m, D) their tokens
    done: torch.Tensor   # (m,) bool, accounted for
    left: int


class FidelityMeter:
    """Accumulates fidelity and reduction over a stream of original and output packets."""

    def __init__(self) -> None:
        self._chunks: dict[tuple[str, str], list[_Chunk]] = {}
        self._sum = 0.0
        self.tokens_in = 0
        self.tokens_out = 0
        self.unmatched = 0          # output provenance ids with no pending original (already counted)
        self.missing_provenance = False

    @property
    def pending(self) -> int:
        """Originals held, waiting for an output to account for them."""
        return sum(c.left for chunks in self._chunks.values() for c in chunks)

    @torch_threads(1)  # small ops, as the stages of small ops (Operator.threads)
    def add_originals(self, tokens: Tokens) -> None:
        """Add encoder output (``src`` = the tokens' own ids, each representing itself)."""
        if tokens.num_tokens == 0:
            return
        if tokens.src is None or tokens.assignment is None:
            raise ValueError("original tokens need src ids (encoder output); got tokens without provenance")
        n = tokens.num_tokens
        a = tokens.assignment
        if a.numel() == n and bool((a == torch.arange(n)).all()) and bool((tokens.src[1:] > tokens.src[:-1]).all()):
            # Fresh encoder output (each token itself, ids ascending): keep the tensors as they are.
            ids, data = tokens.src, tokens.data  # float32 already (Tokens.data's dtype)
        else:
            live = a >= 0
            ids = tokens.src[live]
            data = tokens.data[a[live]]
            order = torch.argsort(ids)
            ids, data = ids[order], data[order].to(torch.float32)
        self.tokens_in += int(ids.numel())
        if ids.numel() == 0:
            return
        self._chunks.setdefault((tokens.stream, tokens.modality), []).append(
            _Chunk(ids=ids, data=data, done=torch.zeros(ids.numel(), dtype=torch.bool), left=int(ids.numel())))

    @torch_threads(1)
    def add_outputs(self, tokens: Tokens) -> None:
        """Account for the originals an output packet covers (its ``src``/``assignment``)."""
        self.tokens_out += tokens.num_tokens
        if tokens.src is None or tokens.assignment is None:
            self.missing_provenance = True
            return
        chunks = self._chunks.get((tokens.stream, tokens.modality), [])
        for i, chunk in enumerate(chunks):
            # The encoder's own packet came through untouched (nothing merged it): every original is
            # its own representative, cosine 1 (0 for an all-zero token), with no gather at all.
            if (chunk.data is tokens.data and chunk.left == chunk.ids.numel() and torch.equal(chunk.ids, tokens.src)
                    and bool((tokens.assignment == torch.arange(tokens.num_tokens)).all())):
                self._sum += float((torch.count_nonzero(tokens.data, dim=1) > 0).sum())
                del chunks[i]
                return
        matched = torch.zeros(tokens.src.numel(), dtype=torch.bool)
        for chunk in chunks:
            at = torch.searchsorted(chunk.ids, tokens.src).clamp(max=chunk.ids.numel() - 1)
            hit = (chunk.ids[at] == tokens.src) & ~chunk.done[at] & ~matched
            if not bool(hit.any()):
                continue
            positions = hit.nonzero().squeeze(1)
            self._sum += float(cosine_to_represented(chunk.data[at[hit]], tokens, positions).to(torch.float64).sum())
            chunk.done[at[hit]] = True
            chunk.left -= int(positions.numel())
            matched |= hit
        self.unmatched += int((~matched).sum())
        chunks[:] = [c for c in chunks if c.left > 0]

    def result(self) -> dict[str, Any]:
        """``fidelity`` (None without provenance), ``reduction``, ``tokens_in``, ``tokens_out``."""
        fid = None
        if not self.missing_provenance and self.tokens_in:
            fid = self._sum / self.tokens_in
        red = 1.0 - self.tokens_out / self.tokens_in if self.tokens_in else None
        return {"fidelity": fid, "reduction": red, "tokens_in": self.tokens_in, "tokens_out": self.tokens_out}


def fidelity(originals: Tokens, outputs: Sequence[Tokens]) -> dict[str, Any]:
    """Fidelity and reduction of ``outputs`` against the encoder's ``originals`` (see the module doc)."""
    meter = FidelityMeter()
    meter.add_originals(originals)
    for out in outputs:
        meter.add_outputs(out)
    return meter.result()
