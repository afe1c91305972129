"""The dots.ocr vision tower (``DotsVisionTransformer``), our own PyTorch implementation.

NaViT style: every image of a batch is one packed sequence of 14x14 patches
([N_total, C*T*14*14], rows ordered so each 2x2 merge window is 4 consecutive rows).
Attention is block-diagonal per image/frame; we never build an [N, N] mask (the official
eager/sdpa paths do, and run out of memory on full pages): each block is attended on its
own with SDPA (equal-length blocks are stacked into one call), or through flash-attn's
varlen kernel when it is installed and the tensors are on CUDA in half precision.

Module and parameter names mirror the official checkpoint (``vision_tower.*``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .configuration import DotsVisionConfig

try:  # optional; never required
    from flash_attn import flash_attn_varlen_func  # type: ignore
except Exception:  # ImportError, or a broken CUDA build
    flash_attn_varlen_func = None


class RMSNorm(nn.Module):
    """Vision RMSNorm: normalise in float32, cast back, then scale (official order)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.type_as(x) * self.weight


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    # Half-split rotation (not interleaved pairs): cat(-x2, x1).
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [N, heads, hd]; cos/sin: [N, hd] float32. Computed in float32 like upstream."""
    xf = x.float()
    out = xf * cos[:, None, :] + rotate_half(xf) * sin[:, None, :]
    return out.to(x.dtype)


class PatchEmbed(nn.Module):
    """Conv2d 14x14/14 (with bias, whatever ``use_bias`` says) + RMSNorm."""

    def __init__(self, cfg: DotsVisionConfig):
        super().__init__()
        self.cfg = cfg
        self.proj = nn.Conv2d(cfg.num_channels, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.norm = RMSNorm(cfg.embed_dim, eps=cfg.rms_norm_eps)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        # Rows are (C, T, py, px); only the first temporal slice is used (T is 1 for images).
        x = pixel_values.view(-1, c.num_channels, c.temporal_patch_size, c.patch_size, c.patch_size)[:, :, 0]
        x = self.proj(x).view(-1, c.embed_dim)
        return self.norm(x)


class PatchEmbedWrapper(nn.Module):
    """Exists only so the parameter names read ``patch_embed.patchifier.*`` as upstream."""

    def __init__(self, cfg: DotsVisionConfig):
        super().__init__()
        self.patchifier = PatchEmbed(cfg)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.patchifier(pixel_values)


class VisionAttention(nn.Module):
    def __init__(self, cfg: DotsVisionConfig):
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.head_dim = cfg.head_dim
        self.is_causal = cfg.is_causal
        self.qkv = nn.Linear(cfg.embed_dim, 3 * cfg.embed_dim, bias=cfg.use_bias)
        self.proj = nn.Linear(cfg.embed_dim, cfg.embed_dim, bias=cfg.use_bias)

    def forward(self, x: torch.Tensor, cu_seqlens: list[int], cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        # Fused weight rows are [q | k | v].
        q, k, v = self.qkv(x).view(n, 3, self.num_heads, self.head_dim).unbind(1)
        q = apply_rotary(q, cos, sin)
        k = apply_rotary(k, cos, sin)
        out = block_diagonal_attention(q, k, v, cu_seqlens, self.is_causal)
        return self.proj(out.reshape(n, -1))


def block_diagonal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: list[int], is_causal: bool = False
) -> torch.Tensor:
    """Attention restricted to the blocks [cu[i], cu[i+1]). q/k/v: [N, heads, hd] -> [N, heads, hd]."""
    if flash_attn_varlen_func is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        cu = torch.tensor(cu_seqlens, dtype=torch.int32, device=q.device)
        max_len = max(b - a for a, b in zip(cu_seqlens[:-1], cu_seqlens[1:]))
        return flash_attn_varlen_func(q, k, v, cu, cu, max_len, max_len, causal=is_causal)

    out = torch.empty_like(q)
    bounds = list(zip(cu_seqlens[:-1], cu_seqlens[1:]))
    i = 0
    while i < len(bounds):
        # Consecutive blocks of the same length (same-size pages, video frames) are
        # contiguous, so they can be stacked into one batched SDPA call without copies.
        start, end = bounds[i]
        length = end - start
        j = i + 1
        while j < len(bounds) and bounds[j][1] - bounds[j][0] == length:
            j += 1
        stop = bounds[j - 1][1]
        nb = j - i

        def blocks(t: torch.Tensor) -> torch.Tensor:  # [nb*L, H, D] -> [nb, H, L, D]
            return t[start:stop].view(nb, length, t.shape[1], t.shape[2]).transpose(1, 2)

        o = F.scaled_dot_product_attention(blocks(q), blocks(k), blocks(v), is_causal=is_causal)
        out[start:stop] = o.transpose(1, 2).reshape(stop - start, q.shape[1], q.shape[2])
        i = j
    return out


class SwiGLU(nn.Module):
    """fc2(silu(fc1(x)) * fc3(x)): fc1 is the gate, fc3 the up projection."""

    def __init__(self, cfg: DotsVisionConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.embed_dim, cfg.intermediate_size, bias=cfg.use_bias)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.embed_dim, bias=cfg.use_bias)
        self.fc3 = nn.Linear(cfg.embed_dim, cfg.intermediate_size, bias=cfg.use_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.silu(self.fc1(x)) * self.fc3(x))


class VisionBlock(nn.Module):
    def __init__(self, cfg: DotsVisionConfig):
        super().__init__()
        self.norm1 = RMSNorm(cfg.embed_dim, eps=cfg.rms_norm_eps)
        self.attn = VisionAttention(cfg)
        self.norm2 = RMSNorm(cfg.embed_dim, eps=cfg.rms_norm_eps)
        self.mlp = SwiGLU(cfg)

    def forward(self, x: torch.Tensor, cu_seqlens: list[int], cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cu_seqlens, cos, sin)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nn.Module):
    """LayerNorm (eps hard-coded 1e-6 upstream) -> 2x2 windows to one row -> MLP with exact GELU."""

    def __init__(self, cfg: DotsVisionConfig):
        super().__init__()
        self.merged_dim = cfg.embed_dim * cfg.spatial_merge_size**2
        self.ln_q = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(self.merged_dim, self.merged_dim),
            nn.GELU(),  # exact (erf) GELU, as upstream's nn.GELU()
            nn.Linear(self.merged_dim, cfg.hidden_size),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The 4 rows of each merge window are consecutive (processor order), so a view merges them.
        return self.mlp(self.ln_q(x).view(-1, self.merged_dim))


class DotsVisionTransformer(nn.Module):
    def __init__(self, cfg: DotsVisionConfig):
        super().__init__()
        self.config = cfg
        self.patch_embed = PatchEmbedWrapper(cfg)
        self.blocks = nn.ModuleList(VisionBlock(cfg) for _ in range(cfg.num_hidden_layers))
        if cfg.post_norm:
            self.post_trunk_norm = RMSNorm(cfg.embed_dim, eps=cfg.rms_norm_eps)
        self.merger = PatchMerger(cfg)

    # -- positions -------------------------------------------------------------------
    def rot_pos_emb(self, grid_thw: torch.Tensor) -> torch.Tensor:
        """Per-patch rotary angles [N, hd/2] = [h * inv_freq, w * inv_freq], in patch-row order.

        Computed on the fly (no buffer), so it is always float32 whatever the weights' dtype.
        """
        cfg = self.config
        m = cfg.spatial_merge_size
        rot_dim = cfg.head_dim // 2
        device = self.patch_embed.patchifier.proj.weight.device
        inv_freq = 1.0 / (10000.0 ** (torch.arange(0, rot_dim, 2, dtype=torch.float32, device=device) / rot_dim))
        pos = []
        for t, h, w in grid_thw.tolist():
            hh = torch.arange(h, device=device).view(h, 1).expand(h, w)
            ww = torch.arange(w, device=device).view(1, w).expand(h, w)
            # Reorder raster positions into (h_block, w_block, h_in, w_in) = processor row order.
            def order(p: torch.Tensor) -> torch.Tensor:
                return p.reshape(h // m, m, w // m, m).permute(0, 2, 1, 3).flatten()

            hw = torch.stack([order(hh), order(ww)], dim=-1)
            pos.append(hw.repeat(t, 1))  # every frame repeats the same positions
        pos = torch.cat(pos).float()
        return torch.cat([pos[:, :1] * inv_freq, pos[:, 1:] * inv_freq], dim=-1)

    @staticmethod
    def cu_seqlens(grid_thw: torch.Tensor) -> list[int]:
        """Block boundaries: one block per frame (h*w patches, repeated t times)."""
        out = [0]
        for t, h, w in grid_thw.tolist():
            for _ in range(t):
                out.append(out[-1] + h * w)
        return out

    # -- forward ---------------------------------------------------------------------
    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """pixel_values [N, C*T*p*p], grid_thw [num_images, 3] -> features [N / merge^2, hidden]."""
        weight = self.patch_embed.patchifier.proj.weight
        # Upstream casts pixels to the tower dtype (bf16) before the patch embed.
        x = self.patch_embed(pixel_values.to(device=weight.device, dtype=weight.dtype))
        angles = self.rot_pos_emb(grid_thw)
        if angles.shape[0] != x.shape[0]:
            raise ValueError(f"image_grid_thw describes {angles.shape[0]} patches but pixel_values has {x.shape[0]}")
        emb = torch.cat([angles, angles], dim=-1)  # head-dim layout [h, w, h, w]
        cos, sin = emb.cos(), emb.sin()
        cu = self.cu_seqlens(grid_thw)
        for block in self.blocks:
            x = block(x, cu, cos, sin)
        if self.config.post_norm:
            x = self.post_trunk_norm(x)
        return self.merger(x)
