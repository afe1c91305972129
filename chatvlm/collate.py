"""Left-padded batches, built one way for every backend and model port.

Batched generation pads on the LEFT: every row's last prompt token sits in the last column,
so the first generated token of every row lands in the same step. Padding slots get the pad
id in `input_ids` and 0 in `attention_mask` (position ids then come from the mask).

torch is imported inside the functions, so importing this module (the backends do, to
list their attributes) stays cheap.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence


def _left_pad(rows: Sequence[Any], fill: Any) -> Any:
    """1-D tensors of different lengths -> one [len(rows), longest] tensor, right-aligned;
    the dtype is the first row's, the free slots hold `fill`."""
    width = max(int(r.shape[0]) for r in rows)
    out = rows[0].new_full((len(rows), width), fill)
    for i, row in enumerate(rows):
        if row.shape[0]:
            out[i, width - row.shape[0]:] = row
    return out


def pad_left(rows: Sequence[Sequence[int]], pad_id: int) -> dict:
    """Token id lists -> input_ids / attention_mask [batch, longest], padded on the left."""
    import torch

    tensors = [torch.as_tensor(list(r), dtype=torch.long) for r in rows]
    return {"input_ids": _left_pad(tensors, int(pad_id)),
            "attention_mask": _left_pad([torch.ones_like(t) for t in tensors], 0)}


def collate_left(features: list[dict], pad_id: int, seq_keys: Iterable[str] = ()) -> dict:
    """Single-sample processor outputs -> one left-padded batch.

    input_ids / attention_mask ([L] or [1, L]) are left-padded with `pad_id` / 0, an existing
    mask's zeros kept. Keys in `seq_keys` run along the tokens (e.g. a mask of image-token
    slots) and are left-padded with zeros / False. Other tensors are concatenated along
    dim 0 (per-image or per-tile tensors; scalars become one entry per sample); lists are
    joined into one list for the batch; anything else is collected, one value per sample.
    """
    import torch

    ids = [f["input_ids"].reshape(-1) for f in features]
    masks = [f["attention_mask"].reshape(-1) if f.get("attention_mask") is not None else torch.ones_like(row)
             for f, row in zip(features, ids)]
    batch = {"input_ids": _left_pad(ids, pad_id), "attention_mask": _left_pad(masks, 0)}
    for key in seq_keys:
        batch[key] = _left_pad([f[key].reshape(-1) for f in features], 0)
    for key in features[0]:
        if key in batch:
            continue
        values = [f[key] for f in features if f.get(key) is not None]
        if not values:
            continue
        if isinstance(values[0], list):
            batch[key] = [item for value in values for item in value]
        elif not isinstance(values[0], torch.Tensor):
            batch[key] = values
        else:
            batch[key] = torch.cat([v.reshape(1) if v.dim() == 0 else v for v in values])
    return batch
