"""The one left-padding collation every backend and model port uses."""

import torch
from PIL import Image

from chatvlm.collate import collate_left, pad_left
from chatvlm.models import deepseek_ocr


def test_token_rows_are_padded_on_the_left_with_a_zero_mask():
    batch = pad_left([[5, 6, 7], [8, 9, 10, 11, 12], [-1]], pad_id=2)
    assert batch["input_ids"].tolist() == [[2, 2, 5, 6, 7], [8, 9, 10, 11, 12], [2, 2, 2, 2, -1]]
    assert batch["attention_mask"].tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]]
    assert batch["input_ids"].dtype == batch["attention_mask"].dtype == torch.long


def test_samples_are_left_padded_and_their_other_keys_joined():
    a = {"input_ids": torch.tensor([[5, 6, 7]]), "attention_mask": torch.tensor([[0, 1, 1]]),
         "pixel_values": torch.zeros(1, 3, 4, 4), "seq": torch.tensor([[False, True, False]]),
         "images": ["a"], "grid": torch.tensor([[1, 1]]), "n": torch.tensor(4)}
    b = {"input_ids": torch.tensor([8, 9, 10, 11, 12]),  # 1-D, no mask: all real tokens
         "pixel_values": torch.ones(3, 3, 4, 4), "seq": torch.tensor([[True, True, False, False, False]]),
         "images": ["b"], "grid": torch.tensor([[2, 3]]), "n": torch.tensor(9)}
    batch = collate_left([a, b], pad_id=0, seq_keys=("seq",))
    assert batch["input_ids"].tolist() == [[0, 0, 5, 6, 7], [8, 9, 10, 11, 12]]
    # the sample's own masked slot stays masked; the padding is masked too
    assert batch["attention_mask"].tolist() == [[0, 0, 0, 1, 1], [1, 1, 1, 1, 1]]
    assert batch["seq"].tolist() == [[False, False, False, True, False], [True, True, False, False, False]]
    assert batch["pixel_values"].shape == (4, 3, 4, 4) and batch["pixel_values"][1:].eq(1).all()
    assert batch["images"] == ["a", "b"]
    assert batch["grid"].tolist() == [[1, 1], [2, 3]]
    assert batch["n"].tolist() == [4, 9]


def test_the_ports_batch_through_the_same_collation():
    proc = deepseek_ocr.DeepseekOCRProcessor(vocab_size=300)
    singles = [proc(images=[Image.new("RGB", (64, 48), "white")], prompt=deepseek_ocr.PROMPT_FREE_OCR, mode="tiny"),
               proc(images=[Image.new("RGB", (64, 48), "gray")], prompt=deepseek_ocr.PROMPT_MARKDOWN, mode="tiny")]
    batch = deepseek_ocr.collate(singles, pad_token_id=proc.pad_token_id)
    assert singles[0]["input_ids"].shape[1] != singles[1]["input_ids"].shape[1]
    width = batch["input_ids"].shape[1]
    for row, single in enumerate(singles):
        n = single["input_ids"].shape[1]
        assert batch["input_ids"][row, width - n:].equal(single["input_ids"][0])
        assert batch["images_seq_mask"][row, width - n:].equal(single["images_seq_mask"][0])
        assert not batch["images_seq_mask"][row, :width - n].any()
        assert batch["images"][row] is single["images"][0]
    assert batch["images_spatial_crop"].tolist() == [[1, 1], [1, 1]]
