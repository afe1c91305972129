"""`chatvlm models`: what each known model is and whether it can run here."""

from __future__ import annotations

from .i18n import _
from .registry import ModelSpec, all_specs


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
    from .backends.hf import weights_available
    found = weights_available(spec)
    if found is None:
        return False, _("not downloaded ({gb} GB)").format(gb=spec.download_gb)
    return True, _("in HF cache ({gb:.1f} GB)").format(gb=found["bytes"] / 1e9)


def print_models() -> None:
    from rich.table import Table
    from .ui import stdout

    from .backends.hf import planned_attention
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
