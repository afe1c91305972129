"""The chatvlm Python API in one page. Run from the repository root:

    python examples/api_example.py                       # tesseract, offline
    python examples/api_example.py qwen_vl_2b             # a VLM (weights in the HF cache)
    python examples/api_example.py qwen_vl_2b /path/to/checkpoint
"""

from __future__ import annotations

import sys
from pathlib import Path

import chatvlm

HERE = Path(__file__).resolve().parent


def main(name: str = "auto", model_path: str | None = None) -> None:
    # Same choice as the CLI: "auto" = the best model whose weights are here, else tesseract.
    with chatvlm.load_model(name, model_path=model_path) as model:
        print(f"model: {model.name}")

        # One page from a path (also: a PIL image, or the bytes of a PNG/JPEG).
        print(model.ocr(HERE / "english_letter.png"))

        # Markdown, and layout blocks when the model gives boxes.
        print(model.markdown(HERE / "russian_poem.png"))
        if "layout" in model.spec.tasks:
            for block in model.layout(HERE / "english_letter.png")[:3]:
                print(block.category, block.bbox, block.text[:40])

        # PDFs: one page at a time, rendered lazily; many pages batched on the device.
        pages = list(chatvlm.pages(HERE / "two_pages.pdf", dpi=150))
        for number, text in enumerate(model.ocr_batch(pages), 1):
            print(f"--- page {number}\n{text}")

        # Questions about a page (chat-capable models: qwen_vl_2b, qwen3_vl_2b, phi3_vision).
        if model.can_chat:
            question = "What is the total due?"
            answer = model.ask(HERE / "english_letter.png", question)
            print(answer)
            print(model.ask(HERE / "english_letter.png", "In which currency?", history=[(question, answer)]))

        # The names ChatVLMLLM scripts used keep working.
        print(model.process_image(HERE / "noisy_scan.jpg"))
        print(model.parse_document(HERE / "english_letter.png", return_json=True)["markdown"])


if __name__ == "__main__":
    main(*sys.argv[1:3])
