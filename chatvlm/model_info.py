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
    from .weights import cached_snapshot, folder_size_gb
    folder = cached_snapshot(spec)
    if folder is None:
        return False, _("weights not downloaded ({gb} GB); use --model-path DIR or let --model {name} download them").format(
            gb=spec.download_gb, name=spec.name)
    return True, _("in HF cache ({gb:.1f} GB)").format(gb=folder_size_gb(folder))


def attention_here() -> str:
    """The attention kernel a VLM would use on this machine."""
    try:
        import torch
    except ImportError:
        return "–"
    if torch.cuda.is_available():
        try:
            import flash_attn  # noqa: F401
            major, _minor = torch.cuda.get_device_capability()
            if major >= 8:
                return "flash_attention_2"
        except ImportError:
            pass
    return "sdpa"


def print_models() -> None:
    from rich.table import Table
    from .ui import stdout

    attn = attention_here()
    table = Table(title=_("known models"), title_justify="left")
    table.add_column(_("name"), no_wrap=True, style="bold")
    for col in (_("backend"), _("checkpoint"), _("tasks"), _("attention"), _("usable here")):
        table.add_column(col)
    for spec in all_specs():
        usable, note = model_status(spec)
        table.add_row(
            spec.name,
            spec.backend.rsplit(".", 1)[-1].split(":")[0],
            f"{spec.repo_id}@{spec.revision}" if spec.repo_id else "–",
            ", ".join(spec.tasks),
            "–" if spec.repo_id is None else attn,
            ("[green]" + _("yes") + "[/] " if usable else "[yellow]" + _("no") + "[/] ") + note,
        )
    stdout.print(table)
