"""SAM ViT-B image encoder of DeepEncoder (the "high-resolution" half).

Module and parameter names follow the official checkpoint (``model.sam_model.*``):
``patch_embed.proj``, ``pos_embed``, ``blocks.{i}.{norm1,attn,norm2,mlp}``, ``neck.{0..3}``,
``net_2``, ``net_3``. Everything runs in the model dtype except the position-table resizes,
which the reference does in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .configuration import (SAM_IMAGE_SIZE, SAM_LN_EPS, SAM_MLP_RATIO, SAM_NECK_CHANNELS,
                            SAM_PATCH_SIZE, SAM_WINDOW_SIZE, DeepseekOCRConfig)


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of an NCHW map (SAM neck)."""

    def __init__(self, channels: int, eps: float = SAM_LN_EPS) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class PatchEmbed(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=SAM_PATCH_SIZE, stride=SAM_PATCH_SIZE)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.proj(pixels).permute(0, 2, 3, 1)  # NCHW -> NHWC


def _resize_rel_pos(table: torch.Tensor, length: int) -> torch.Tensor:
    """Linearly resize a [L, C] relative-position table to `length` rows (global blocks on
    grids other than 64)."""
    if table.shape[0] == length:
        return table
    resized = F.interpolate(table.t()[None], size=length, mode="linear")
    return resized[0].t()


def _rel_pos_lookup(size: int, table: torch.Tensor) -> torch.Tensor:
    """[size, size, C] embeddings for every (query, key) offset along one axis (q and k
    grids are equal here, so no coordinate rescaling is needed)."""
    table = _resize_rel_pos(table, 2 * size - 1)
    coords = torch.arange(size, device=table.device)
    offsets = coords[:, None] - coords[None, :] + (size - 1)
    return table[offsets]


class SamAttention(nn.Module):
    """Multi-head attention with the decomposed (height + width) relative-position bias."""

    def __init__(self, dim: int, heads: int, rel_size: int) -> None:
        super().__init__()
        self.heads = heads
        head_dim = dim // heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * rel_size - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * rel_size - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # [b, heads, h*w, d]
        # The bias uses the *unscaled* query, as in SAM / MViTv2.
        rh = _rel_pos_lookup(h, self.rel_pos_h)  # [h, h, d]
        rw = _rel_pos_lookup(w, self.rel_pos_w)  # [w, w, d]
        q_grid = q.reshape(b, self.heads, h, w, -1)
        bias_h = torch.einsum("bnhwc,hkc->bnhwk", q_grid, rh)
        bias_w = torch.einsum("bnhwc,wkc->bnhwk", q_grid, rw)
        bias = (bias_h[..., :, None] + bias_w[..., None, :]).reshape(b, self.heads, h * w, h * w)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = out.permute(0, 2, 1, 3).reshape(b, h, w, -1)
        return self.proj(out)


class MLPBlock(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(F.gelu(self.lin1(x)))


def _window_partition(x: torch.Tensor, win: int) -> tuple[torch.Tensor, int, int]:
    # Zero-pad bottom/right to a multiple of the window; the padding is NOT masked, as in SAM.
    b, h, w, c = x.shape
    ph, pw = (win - h % win) % win, (win - w % win) % win
    if ph or pw:
        x = F.pad(x, (0, 0, 0, pw, 0, ph))
    hp, wp = h + ph, w + pw
    x = x.reshape(b, hp // win, win, wp // win, win, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, win, win, c), hp, wp


def _window_unpartition(windows: torch.Tensor, win: int, hp: int, wp: int, h: int, w: int) -> torch.Tensor:
    b = windows.shape[0] // ((hp // win) * (wp // win))
    x = windows.reshape(b, hp // win, wp // win, win, win, -1).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, hp, wp, -1)[:, :h, :w, :]


class SamBlock(nn.Module):
    def __init__(self, dim: int, heads: int, window_size: int) -> None:
        super().__init__()
        self.window_size = window_size  # 0 = global attention
        grid = SAM_IMAGE_SIZE // SAM_PATCH_SIZE
        self.norm1 = nn.LayerNorm(dim, eps=SAM_LN_EPS)
        self.attn = SamAttention(dim, heads, window_size if window_size else grid)
        self.norm2 = nn.LayerNorm(dim, eps=SAM_LN_EPS)
        self.mlp = MLPBlock(dim, dim * SAM_MLP_RATIO)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size:
            h, w = x.shape[1], x.shape[2]
            x, hp, wp = _window_partition(x, self.window_size)
            x = self.attn(x)
            x = _window_unpartition(x, self.window_size, hp, wp, h, w)
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class SamEncoder(nn.Module):
    """pixels [N,3,S,S] -> features [N, downsample_channels[1], S/64, S/64]."""

    def __init__(self, config: DeepseekOCRConfig) -> None:
        super().__init__()
        sam = config.sam
        dim, grid = sam["width"], SAM_IMAGE_SIZE // SAM_PATCH_SIZE
        c2, c3 = sam["downsample_channels"]
        self.patch_embed = PatchEmbed(dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, dim))
        self.blocks = nn.ModuleList(
            SamBlock(dim, sam["heads"], 0 if i in sam["global_attn_indexes"] else SAM_WINDOW_SIZE)
            for i in range(sam["layers"]))
        n = SAM_NECK_CHANNELS
        self.neck = nn.Sequential(
            nn.Conv2d(dim, n, kernel_size=1, bias=False), LayerNorm2d(n),
            nn.Conv2d(n, n, kernel_size=3, padding=1, bias=False), LayerNorm2d(n))
        self.net_2 = nn.Conv2d(n, c2, kernel_size=3, stride=2, padding=1, bias=False)
        self.net_3 = nn.Conv2d(c2, c3, kernel_size=3, stride=2, padding=1, bias=False)

    def _pos_embed(self, size: int) -> torch.Tensor:
        if self.pos_embed.shape[1] == size:
            return self.pos_embed
        # Resized in float32 with antialiased bicubic, exactly as the reference does.
        grid = self.pos_embed.permute(0, 3, 1, 2).float()
        grid = F.interpolate(grid, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
        return grid.to(self.pos_embed.dtype).permute(0, 2, 3, 1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixels)
        x = x + self._pos_embed(x.shape[1])
        for block in self.blocks:
            x = block(x)
        x = self.neck(x.permute(0, 3, 1, 2))
        return self.net_3(self.net_2(x))
