"""`chatvlm models`: what each known model is and whether it can run here."""

from __future__ import annotations

from typing import Optional

from .i18n import _
from .models.resize import smart_resize
from .registry import ModelSpec, all_specs

# What each model reads of an A4 page rendered at the default 200 DPI (1654 x 2339 px).
A4_PAGE = (1654, 2339)
RENDER_DPI = 200
# Models with a pixel budget (min_pixels..max_pixels, `--max-pixels` overrides it): the
# page is smart-resized to a multiple of this many pixels per image token side.
PIXEL_BUDGET_PATCH = {"qwen_vl_2b": 28, "qwen3_vl_2b": 32, "dots_ocr": 28}
# Models with fixed views, for an A4 page: (size of the page as read (w, h), image tokens).
# tests/test_model_info.py checks these against the processors that do the work.
FIXED_VIEWS = {
    "got_ocr_hf": ((1024, 1024), 256),      # one 1024x1024 view (tiled only when aspect >= 1.8)
    "phi3_vision": ((950, 1344), 1933),     # num_crops 16: 3x4 crops of 336 px + a global view
    "deepseek_ocr": ((1280, 1920), 903),    # gundam: 1024 global view + 2x3 tiles of 640 px
    "deepseek_ocr2": ((1536, 2304), 1121),  # 1024 global view + 2x3 tiles of 768 px
}


def a4_reading(spec: ModelSpec, max_pixels: Optional[int] = None) -> Optional[dict]:
    """How this model reads an A4 page (200-DPI render): {"size": (w, h), "tokens", "dpi",
    "adjustable"}; `max_pixels` as --max-pixels would set it. None for engines without
    image tokens (tesseract reads the render as it is)."""
    page_w, page_h = A4_PAGE
    if spec.name in PIXEL_BUDGET_PATCH:
        patch = PIXEL_BUDGET_PATCH[spec.name]
        h, w = smart_resize(page_h, page_w, patch, int(spec.min_pixels or patch * patch),
                            int(max_pixels or spec.max_pixels or 12_845_056))
        size, tokens, adjustable = (w, h), w * h // (patch * patch), True
    elif spec.name in FIXED_VIEWS:
        size, tokens = FIXED_VIEWS[spec.name]
        adjustable = False
    else:
        return None
    dpi = RENDER_DPI * min(size[0] / page_w, size[1] / page_h)
    return {"size": size, "tokens": tokens, "dpi": round(dpi), "adjustable": adjustable}


def model_status(spec: ModelSpec) -> tuple[bool, str]:
    """(usable here, a short human note)."""
    if spec.repo_id is None:
        try:
            from .backends.tesseract import available_languages, find_tessdata
            import tesserocr  # noqa: F401
        except ImportError:
            return False, _("tesserocr not installed")
        data = find_tessdata()
        if data is None:
            return False, _("no Tesseract language data")
        return True, _("languages: {langs}").format(langs="+".join(l for l in available_languages(data) if l != "osd"))
    from .weights import weights_available
    found = weights_available(spec)
    if found is None:
        return False, _("not downloaded ({gb} GB)").format(gb=spec.download_gb)
    return True, _("in HF cache ({gb:.1f} GB)").format(gb=found["bytes"] / 1e9)


def print_models() -> None:
    from rich.table import Table
    from .ui import stdout

    from .devices import planned_attention
    from rich import box
    table = Table(title=_("known models"), title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column(_("name"), no_wrap=True, style="bold")
    table.add_column(_("backend"), no_wrap=True)
    table.add_column(_("checkpoint"), overflow="fold")
    table.add_column(_("tasks"))
    table.add_column(_("attention"), no_wrap=True)
    table.add_column(_("usable here"))
    for spec in all_specs():
        usable, note = model_status(spec)
        table.add_row(
            spec.name,
            spec.backend.rsplit(".", 1)[-1].split(":")[0],
            f"{spec.repo_id}@{spec.revision}" if spec.repo_id else "–",
            " ".join({"text": "txt", "markdown": "md"}.get(t, t) for t in spec.tasks),
            "–" if spec.repo_id is None else planned_attention(spec),
            ("[green]" + _("yes") + "[/] " if usable else "[yellow]" + _("no") + "[/] ") + note,
        )
    stdout.print(table)
    stdout.print(_("Weights that are not here: `chatvlm ocr --model NAME` downloads them, or point --model-path at a local copy."))
    print_page_budgets()


def print_page_budgets() -> None:
    """What each model reads of an A4 page: a chatvlm speed/accuracy choice, shown as such."""
    from rich import box
    from rich.table import Table
    from .ui import stdout

    table = Table(title=_("what each model reads of an A4 page (rendered at {dpi} DPI: {w} x {h} px)").format(
        dpi=RENDER_DPI, w=A4_PAGE[0], h=A4_PAGE[1]), title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column(_("name"), no_wrap=True, style="bold")
    table.add_column(_("image seen"), no_wrap=True)
    table.add_column(_("image tokens"), justify="right")
    table.add_column(_("≈ DPI"), justify="right")
    table.add_column(_("set by"))
    for spec in all_specs():
        reading = a4_reading(spec)
        if reading is None:
            continue
        w, h = reading["size"]
        if reading["adjustable"]:
            how = _("budget up to {mp:.1f} MP (--max-pixels)").format(mp=(spec.max_pixels or 0) / 1e6)
        else:
            how = _("fixed views")
        table.add_row(spec.name, f"{w} x {h}", f"{reading['tokens']:,}", str(reading["dpi"]), how)
    stdout.print(table)
    stdout.print(_("Budgets are chatvlm's speed/accuracy choice, not the models' limits: more pixels read small "
                   "print better and cost more tokens. Raise one with --max-pixels N (pixels per page), e.g. "
                   "--max-pixels 4000000 reads an A4 page at about 200 DPI. qwen3_vl_2b's text task uses the "
                   "same budget as its markdown task."))
