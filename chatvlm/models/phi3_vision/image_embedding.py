"""Phi-3.5-vision image embedding: CLIP features, HD token layout and MLP projection.

Module and parameter names follow the official `Phi3ImageEmbedding`, so the checkpoint loads
by name: `img_processor.vision_model.*` (CLIP), `glb_GN`, `sub_GN`, `img_projection.{0,2}`.

Token layout for one image whose padded HD size is (h_crop*336, w_crop*336), order "sub_glb":

    [sub-crop grid rows, each row = w_crop*12 merged tokens + sub_GN]   h_crop*12 rows
    [glb_GN]
    [global view rows, each row = 12 merged tokens + sub_GN]            12 rows

A merged token concatenates a 2x2 block of CLIP patches along channels (4*C wide).
Total: (h_crop*w_crop + 1)*144 + 1 + (h_crop + 1)*12 tokens, as the processor counts.
"""

from __future__ import annotations

import inspect
import math

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

CROP = 336  # pixel size of one CLIP view; hard-coded by the official processor and model
MERGED = 12  # 24x24 CLIP patches merged 2x2 -> 12x12 tokens per view


def num_image_tokens(h_crop: int, w_crop: int) -> int:
    """Number of placeholder tokens for an image with an h_crop x w_crop sub-crop grid."""
    return (h_crop * w_crop + 1) * MERGED * MERGED + 1 + (h_crop + 1) * MERGED


class _ClipHolder(nn.Module):
    """Keeps the official `img_processor.vision_model.*` names.

    transformers 5's `CLIPVisionModel` dropped its inner `vision_model` level (its own keys
    start at `embeddings.`), so we add that level back here instead of renaming keys.
    """

    def __init__(self, clip_config: CLIPVisionConfig):
        super().__init__()
        self.vision_model = CLIPVisionModel(clip_config)


def _run_encoder_layer(layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    # The encoder-layer call signature moved across transformers 5.x releases (the
    # `causal_attention_mask` argument went away); pass what this release expects.
    params = inspect.signature(layer.forward).parameters
    kwargs = {"attention_mask": None}
    if "causal_attention_mask" in params:
        kwargs["causal_attention_mask"] = None
    out = layer(hidden, **kwargs)
    return out[0] if isinstance(out, tuple) else out


class Phi3ImageEmbedding(nn.Module):
    """Pixels of the HD views -> projected image features, one tensor per image."""

    def __init__(self, hidden_size: int, image_dim_out: int, clip_config: CLIPVisionConfig, layer_idx: int = -2):
        super().__init__()
        if clip_config.hidden_size != image_dim_out:
            raise ValueError(
                f"img_processor.image_dim_out ({image_dim_out}) must equal the CLIP width ({clip_config.hidden_size})"
            )
        self.image_dim_out = image_dim_out
        self.layer_idx = layer_idx
        self.img_processor = _ClipHolder(clip_config)
        merged_dim = 4 * image_dim_out
        # Learnable separators; the official init is zeros (weights come from the checkpoint).
        self.glb_GN = nn.Parameter(torch.zeros(1, 1, merged_dim))
        self.sub_GN = nn.Parameter(torch.zeros(1, 1, 1, merged_dim))
        # Index 0 and 2 carry weights, index 1 is the (exact, erf) GELU: official names.
        self.img_projection = nn.Sequential(
            nn.Linear(merged_dim, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size)
        )

    # ---- stage 1: CLIP -------------------------------------------------------------

    def clip_features(self, views: torch.Tensor) -> torch.Tensor:
        """[V, 3, 336, 336] -> [V, 576, C]: hidden_states[layer_idx] of CLIP, CLS dropped.

        Runs only the encoder layers needed for `layer_idx` (-2 skips the last layer, whose
        output the official model discards) and never the post-layernorm.
        """
        vm = self.img_processor.vision_model
        hidden = vm.pre_layrnorm(vm.embeddings(views.to(vm.embeddings.patch_embedding.weight.dtype)))
        layers = vm.encoder.layers
        # hidden_states has len(layers)+1 entries (index 0 = embeddings after pre_layrnorm).
        n_run = len(layers) + 1 + self.layer_idx if self.layer_idx < 0 else self.layer_idx
        for layer in layers[:n_run]:
            hidden = _run_encoder_layer(layer, hidden)
        return hidden[:, 1:]

    # ---- stage 2: HD token layout --------------------------------------------------

    @staticmethod
    def merge_2x2(features: torch.Tensor) -> torch.Tensor:
        """[N, 576, C] -> [N, 12, 12, 4C]; token (i, j) = patches (2i,2j),(2i,2j+1),(2i+1,2j),(2i+1,2j+1)."""
        n, length, c = features.shape
        side = math.isqrt(length)
        if side * side != length or side != 2 * MERGED:
            raise ValueError(f"expected 24x24 CLIP patches per view, got {length}")
        half = side // 2
        return (
            features.reshape(n, half, 2, half, 2, c)
            .permute(0, 1, 3, 2, 4, 5)  # n, i, j, row-in-block, col-in-block, c
            .reshape(n, half, half, 4 * c)
        )

    def _rows_with_newline(self, grid: torch.Tensor) -> torch.Tensor:
        """[rows, cols, D] -> [rows*(cols+1), D] with `sub_GN` closing every row."""
        rows, _, dim = grid.shape
        newline = self.sub_GN.reshape(1, 1, dim).to(grid.dtype).expand(rows, 1, dim)
        return torch.cat([grid, newline], dim=1).reshape(-1, dim)

    def hd_tokens(self, view_features: torch.Tensor, h_crop: int, w_crop: int) -> torch.Tensor:
        """Features of one image's real views ([1 + h_crop*w_crop, 576, C], global first)
        -> the merged token sequence [num_image_tokens(h_crop, w_crop), 4C] ("sub_glb")."""
        n_sub = h_crop * w_crop
        if view_features.shape[0] < 1 + n_sub:
            raise ValueError(f"image needs {1 + n_sub} views, got {view_features.shape[0]}")
        merged = self.merge_2x2(view_features[: 1 + n_sub])
        dim = merged.shape[-1]
        glb = self._rows_with_newline(merged[0])
        # Crops come row-major from the processor; tile them into one (h*12) x (w*12) grid.
        sub = (
            merged[1:]
            .reshape(h_crop, w_crop, MERGED, MERGED, dim)
            .permute(0, 2, 1, 3, 4)
            .reshape(h_crop * MERGED, w_crop * MERGED, dim)
        )
        sub = self._rows_with_newline(sub)
        return torch.cat([sub, self.glb_GN.reshape(1, dim).to(sub.dtype), glb], dim=0)

    # ---- stage 3: projection -------------------------------------------------------

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.img_projection(tokens.to(self.img_projection[0].weight.dtype))

    # ---- all stages ----------------------------------------------------------------

    def forward(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor) -> list[torch.Tensor]:
        """pixel_values [B, V, 3, 336, 336] (views padded with zeros to a common V),
        image_sizes [B, 2] = padded HD (height, width) -> list of B tensors [T_i, hidden].

        Zero padding views are skipped: the official model runs CLIP on them and then drops
        their features, so leaving them out changes nothing but the cost.
        """
        if pixel_values.ndim != 5 or pixel_values.shape[-3:] != (3, CROP, CROP):
            raise ValueError(f"pixel_values must be [images, views, 3, 336, 336], got {tuple(pixel_values.shape)}")
        sizes = [(int(h) // CROP, int(w) // CROP) for h, w in image_sizes.reshape(-1, 2).tolist()]
        if len(sizes) != pixel_values.shape[0]:
            raise ValueError(f"{pixel_values.shape[0]} images in pixel_values but {len(sizes)} image_sizes")
        counts = [1 + h * w for h, w in sizes]
        if max(counts) > pixel_values.shape[1]:
            raise ValueError("image_sizes ask for more views than pixel_values holds")
        views = torch.cat([pixel_values[i, :n] for i, n in enumerate(counts)], dim=0)
        features = self.clip_features(views).split(counts, dim=0)
        tokens = [self.hd_tokens(f, h, w) for f, (h, w) in zip(features, sizes)]
        # One projection call over all images: the MLP is per-token.
        projected = self.project(torch.cat(tokens, dim=0))
        return list(projected.split([t.shape[0] for t in tokens], dim=0))
