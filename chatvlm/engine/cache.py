"""The static decoder's slot cache: `[layers, slots, kv_heads, length, head_dim]` keys and
values with each slot's key mask, token, position and write slot. Buffers only grow, by
whole buckets; growing drops the graphs (they read the old buffers).
"""

from __future__ import annotations

from typing import Optional

import torch

from .graphs import _round_up, batch_bucket


def _cache_kv(cache, layer: int):
    """(keys, values) [batch, kv_heads, len, head_dim] of one layer of a transformers cache."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return layers[layer].keys, layers[layer].values
    if hasattr(cache, "key_cache"):
        return cache.key_cache[layer], cache.value_cache[layer]
    return cache[layer][0], cache[layer][1]          # legacy tuple of tuples


class SlotCache:
    """The decoder's cache buffers: allocated, grown, filled from a prefill, rows moved."""

    def _ensure_pool(self, batch: int, length: int) -> None:
        """Cache and step buffers for `batch` rows of `length` slots. They only grow, by whole
        buckets (batch buckets, `len_bucket` multiples); growing drops the graphs."""
        pr = self.parts
        need_b = batch_bucket(batch) if self.use_graphs else batch
        need_l = _round_up(length, self.len_bucket) if self.bucketed else length
        if self.k is not None and self.k.shape[1] >= need_b and self.k.shape[3] >= need_l:
            return
        if self.k is not None:
            need_b, need_l = max(need_b, self.k.shape[1]), max(need_l, self.k.shape[3])
        self._drop_graphs()
        self.k = self.v = self.mask = self.tok = self.pos = self.wpos = self.top_pos = self.logits = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        shape = (len(pr.layers), need_b, pr.num_kv_heads, need_l, pr.head_dim)
        self.k = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.v = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.mask = torch.zeros(need_b, need_l, dtype=torch.bool, device=self.device)
        self.tok = torch.zeros(need_b, dtype=torch.long, device=self.device)
        self.pos = torch.zeros(need_b, dtype=torch.long, device=self.device)
        self.wpos = torch.zeros(need_b, dtype=torch.long, device=self.device)
        self.top_pos = torch.zeros(1, dtype=torch.long, device=self.device)
        self.logits = torch.zeros(need_b, pr.lm_head.out_features, dtype=torch.float32, device=self.device)

    def grow_pool(self, batch: int, length: int) -> None:
        """As `_ensure_pool`, keeping what the rows hold (a continuous batch grows its cache
        while rows are mid-decode). Growing drops the graphs, as any reallocation does."""
        old = (self.k, self.v, self.mask, self.tok, self.pos, self.wpos)
        if old[0] is None:
            self._ensure_pool(batch, length)
            return
        self._ensure_pool(batch, length)
        k, v, mask, tok, pos, wpos = old
        if k is self.k:
            return
        b, l = k.shape[1], k.shape[3]
        self.k[:, :b, :, :l].copy_(k)
        self.v[:, :b, :, :l].copy_(v)
        self.mask[:b, :l].copy_(mask)
        self.tok[:b].copy_(tok)
        self.pos[:b].copy_(pos)
        self.wpos[:b].copy_(wpos)

    def load_rows(self, slots: list[int], cache, attention: torch.Tensor, first: torch.Tensor,
                  next_pos: torch.Tensor, rows: Optional[list[int]] = None) -> None:
        """Rows `rows` (default: all) of a prefilled batch into cache rows `slots`: the prompt
        KV in slots [0, prompt_len) (left padding masked), the rest zeroed; the first
        generated token, the next position and the next write slot (prompt_len) set."""
        prompt_len = attention.shape[1]
        rows = list(range(attention.shape[0])) if rows is None else list(rows)
        n = len(rows)
        if slots == list(range(slots[0], slots[0] + n)) and rows == list(range(rows[0], rows[0] + n)):
            pairs = [(slice(slots[0], slots[0] + n), slice(rows[0], rows[0] + n))]
        else:
            pairs = list(zip(slots, rows))
        for i in range(len(self.parts.layers)):
            keys, values = _cache_kv(cache, i)
            for dst, src in pairs:
                self.k[i, dst, :, :prompt_len].copy_(keys[src, :, -prompt_len:])
                self.v[i, dst, :, :prompt_len].copy_(values[src, :, -prompt_len:])
        idx = torch.tensor(slots, dtype=torch.long, device=self.device)
        src = torch.tensor(rows, dtype=torch.long, device=self.device)
        self.k[:, idx, :, prompt_len:] = 0
        self.v[:, idx, :, prompt_len:] = 0
        mask = torch.zeros(n, self.mask.shape[1], dtype=torch.bool, device=self.device)
        mask[:, :prompt_len] = attention.to(self.device).bool()[src]
        self.mask[idx] = mask
        self.tok[idx] = first.to(self.device, torch.long)[src]
        self.pos[idx] = next_pos.to(self.device, torch.long)[src]
        self.wpos[idx] = prompt_len

    def _move(self, src: list[int], b: int) -> None:
        """Slots [:b] <- slots `src` (a gather through a temporary: sources may overlap)."""
        idx = torch.tensor(src, dtype=torch.long, device=self.device)
        self.k[:, :b] = self.k[:, idx]
        self.v[:, :b] = self.v[:, idx]
        self.mask[:b] = self.mask[idx]
        self.tok[:b] = self.tok[idx]
        self.pos[:b] = self.pos[idx]
        self.wpos[:b] = self.wpos[idx]
