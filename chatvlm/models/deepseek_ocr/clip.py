"""CLIP-L half of DeepEncoder: a pre-LN ViT whose patch tokens are the SAM features.

Names follow the official checkpoint (``model.vision_model.*``). The CLIP patch conv
(``embeddings.patch_embedding``) is kept so the checkpoint loads, but DeepSeek-OCR never
runs it: the flattened SAM map replaces it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .configuration import CLIP_LN_EPS, DeepseekOCRConfig


class ClipEmbeddings(nn.Module):
    def __init__(self, width: int, image_size: int, patch_size: int) -> None:
        super().__init__()
        self.grid = image_size // patch_size
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.patch_embedding = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.position_embedding = nn.Embedding(self.grid * self.grid + 1, width)

    def _positions(self, grid: int) -> torch.Tensor:
        table = self.position_embedding.weight
        if grid == self.grid:
            return table
        # Keep the CLS row; resize the 16x16 part in float32 (antialiased bicubic, as the reference).
        cls, patch = table[:1], table[1:]
        patch = patch.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2).float()
        patch = F.interpolate(patch, size=(grid, grid), mode="bicubic", antialias=True, align_corners=False)
        patch = patch.to(table.dtype).permute(0, 2, 3, 1).reshape(grid * grid, -1)
        return torch.cat([cls, patch], dim=0)

    def forward(self, sam_features: torch.Tensor) -> torch.Tensor:
        n, _, h, w = sam_features.shape
        if h != w:
            raise ValueError(f"DeepEncoder views are square; got a {h}x{w} feature map")
        tokens = sam_features.flatten(2).transpose(1, 2)  # row-major patch tokens
        cls = self.class_embedding.to(tokens.dtype).expand(n, 1, -1)
        return torch.cat([cls, tokens], dim=1) + self._positions(h)


class ClipAttention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv_proj = nn.Linear(width, width * 3)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        # The fused projection is laid out as [3, heads, head_dim].
        q, k, v = self.qkv_proj(x).reshape(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, -1))


class ClipMLP(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        return self.fc2(h * torch.sigmoid(1.702 * h))  # quick_gelu


class ClipBlock(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(width, eps=CLIP_LN_EPS)
        self.self_attn = ClipAttention(width, heads)
        self.layer_norm2 = nn.LayerNorm(width, eps=CLIP_LN_EPS)
        self.mlp = ClipMLP(width, 4 * width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class ClipTransformer(nn.Module):
    def __init__(self, width: int, heads: int, layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(ClipBlock(width, heads) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class ClipVisionModel(nn.Module):
    """SAM features [N,C,g,g] -> [N, 1+g*g, C] (CLS first, no final LayerNorm)."""

    def __init__(self, config: DeepseekOCRConfig) -> None:
        super().__init__()
        clip = config.clip
        self.embeddings = ClipEmbeddings(clip["width"], clip["image_size"], clip["patch_size"])
        self.pre_layrnorm = nn.LayerNorm(clip["width"], eps=CLIP_LN_EPS)  # (sic) official name
        self.transformer = ClipTransformer(clip["width"], clip["heads"], clip["layers"])

    def forward(self, sam_features: torch.Tensor) -> torch.Tensor:
        return self.transformer(self.pre_layrnorm(self.embeddings(sam_features)))
