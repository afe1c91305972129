"""Small pieces every port needs in the same form."""

from __future__ import annotations

import torch


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids for a left-padded batch: each row's first real token is position 0.

    generate() numbers positions this way, so a plain forward over a padded row sees the
    same positions as the unpadded prompt; padding slots get 0 (they are masked anyway).
    """
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.masked_fill(attention_mask == 0, 0)


def chunk_positions(attention_mask: torch.Tensor, length: int) -> torch.Tensor:
    """Position ids of the `length` tokens a forward step adds to a left-padded batch.

    The mask spans the cached tokens too, so its last `length` columns are this chunk's.
    """
    return positions_from_mask(attention_mask)[:, -length:]
