"""RoPE for the static decoder's step: cos/sin tables computed once by the model's own
rotary module, each row's position, and LongRoPE's two factor sets (short within the
original context, long beyond; see the decoder's notes for which set a row uses).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from .graphs import _round_up


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def next_positions(pos_ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """Each row's position for its first generated token: its largest real prompt position
    + 1 (all M-RoPE sections together); `pos_ids` as the rotary module received them."""
    batch = attention.shape[0]
    mrope = pos_ids.dim() == 3
    valid = attention.bool().to(pos_ids.device)
    p = pos_ids if mrope else pos_ids.expand(batch, -1).unsqueeze(0)
    p = p.masked_fill(~valid.unsqueeze(0), -1)
    return p.amax(dim=(0, 2)) + 1


class RopeTables:
    """The decoder's cos/sin tables (`rope_cos`, `rope_sin`) and the row each step reads."""

    def _ensure_rope(self, positions: int, mrope: bool) -> None:
        """cos/sin for positions [0, positions): built once large enough (at least the model's
        context up to 32k positions), so it is rarely rebuilt; rebuilding drops the graphs."""
        if self.rope_cos is not None and self._rope_rows() >= positions and self._rope_mrope == mrope:
            return
        context = int(getattr(getattr(self.parts.text_model, "config", None), "max_position_embeddings", 0) or 0)
        size = _round_up(max(positions, min(context, 32768), 1), 4096)
        if self.rope_cos is not None and self._rope_mrope == mrope:
            size = max(size, self._rope_rows())
        self._drop_graphs()
        self.rope_cos = self.rope_sin = None
        dummy = torch.zeros(1, dtype=self.dtype, device=self.device)
        original = self.parts.longrope_original
        if original:
            # LongRoPE: the rotary module picks its factor set from the largest position it is
            # called with; rows [0, size) get the long set, rows [size, 2*size) the short one.
            size = max(size, _round_up(original + 1, 4096))
            ids = torch.arange(size, device=self.device)
            with torch.no_grad():
                long_cos, long_sin = self.parts.rotary(dummy, ids.view(1, -1))
                short_cos, short_sin = self.parts.rotary(dummy, ids[:original].view(1, -1))
            pad = (0, 0, 0, size - original)
            self.rope_cos = torch.cat([long_cos.reshape(size, -1), F.pad(short_cos.reshape(original, -1), pad)])
            self.rope_sin = torch.cat([long_sin.reshape(size, -1), F.pad(short_sin.reshape(original, -1), pad)])
            self._rope_mrope = mrope
            return
        ids = torch.arange(size, device=self.device)
        ids = ids.view(1, 1, -1).expand(3, 1, -1) if mrope else ids.view(1, -1)
        with torch.no_grad():
            cos, sin = self.parts.rotary(dummy, ids)
        self.rope_cos = cos.reshape(size, -1).contiguous()
        self.rope_sin = sin.reshape(size, -1).contiguous()
        self._rope_mrope = mrope

    def _rope_rows(self) -> int:
        """Positions the RoPE table covers (LongRoPE keeps two sets of that many rows)."""
        rows = self.rope_cos.shape[0]
        return rows // 2 if self.parts.longrope_original else rows

    def _rope_index(self, b: int) -> torch.Tensor:
        if not self.parts.longrope_original:
            return self.pos[:b]
        # transformers' LongRoPE picks the set from the largest position of the call, plus one:
        # the short set while it stays within the original context, the long set beyond. The
        # batch path keeps `top_pos` at the batch's largest position (one set for all rows, as
        # in a batched `generate`); the continuous engine keeps it at 0, so each row follows
        # its own position (as its page alone). A tensor expression: graph-safe.
        selector = torch.maximum(self.pos[:b], self.top_pos)
        short = (selector < self.parts.longrope_original).long()         # position + 1 <= original
        return self.pos[:b] + short * self._rope_rows()
