"""The `chatvlm ui` page. Streamlit runs this file top to bottom on every interaction.

Upload images or PDFs, pick a model, a task and pages; the page and its result are
shown side by side, and the results can be downloaded. Model loading is cached, so a
model is loaded once per process, not once per click.
"""

from __future__ import annotations

import os

import streamlit as st

from chatvlm.i18n import _, detect_language, set_language
from chatvlm.web import ENV_DEVICE, ENV_MODEL, ENV_MODEL_PATH
from chatvlm.web import work

LANGUAGES = {"en": "English", "ru": "Русский"}
UPLOAD_TYPES = ["png", "jpg", "jpeg", "tif", "tiff", "webp", "gif", "bmp", "pdf"]


@st.cache_resource(show_spinner=False, max_entries=1)
def cached_model(name: str, model_path: str, device: str):
    # One model in memory at a time: switching models frees the previous one.
    return work.load(name, model_path or None, device or None)


def task_label(task: str) -> str:
    return {"text": _("Text"), "markdown": _("Markdown"), "layout": _("Layout"), "ask": _("Ask a question")}[task]


def main() -> None:
    st.set_page_config(page_title="chatvlm", layout="wide")
    lang = st.session_state.get("lang") or detect_language()
    set_language(lang)

    start = st.session_state.get("start_model")
    if start is None:
        start = st.session_state["start_model"] = work.resolve_start_model(os.environ.get(ENV_MODEL, "auto"))

    with st.sidebar:
        st.radio(_("Language"), list(LANGUAGES), format_func=LANGUAGES.get, key="lang", horizontal=True,
                 index=list(LANGUAGES).index(lang))
        model_name = st.selectbox(_("Model"), work.model_choices(start), key="model")
        spec = work.get_spec(model_name)
        st.caption(spec.description)
        task = st.radio(_("Task"), work.tasks_for(spec), format_func=task_label, key="task")
        pages = st.text_input(_("Pages"), placeholder="1-3,7", key="pages",
                              help=_("Pages of every document, e.g. 1-3,7.")).strip()

    st.title(_("chatvlm: try a model on your pages"))
    files = st.file_uploader(_("Images or PDFs"), type=UPLOAD_TYPES, accept_multiple_files=True, key="files")
    question = ""
    if task == "ask":
        question = st.text_input(_("Question"), key="question", placeholder=_("What is the total amount?"))
    ready = bool(files) and (task != "ask" or bool(question.strip()))
    if st.button(_("Ask") if task == "ask" else _("Recognise"), type="primary", disabled=not ready, key="run"):
        run(model_name, start, task, question, pages, [(f.name, f.getvalue()) for f in files])
    show_results()


def run(model_name: str, start: str, task: str, question: str, pages: str, files: list[tuple[str, bytes]]) -> None:
    items, problems = work.read_pages(files, pages or None)
    for problem in problems:
        st.error(problem)
    if not items:
        st.session_state.pop("results", None)
        return
    with st.spinner(_("Loading {model}...").format(model=model_name)):
        try:
            own_path = os.environ.get(ENV_MODEL_PATH, "") if model_name == start else ""
            model = cached_model(model_name, own_path, os.environ.get(ENV_DEVICE, ""))
        except Exception as exc:  # a model that cannot load here: say why, keep the page
            st.error(_("cannot load model '{name}': {reason}").format(name=model_name, reason=exc))
            return
    bar = st.progress(0.0, text=_("{done} of {total} pages").format(done=0, total=len(items)))

    def progress(done: int, total: int) -> None:
        bar.progress(done / total, text=_("{done} of {total} pages").format(done=done, total=total))

    answers = work.run_task(model, items, task, question, progress)
    bar.empty()
    st.session_state["results"] = {"task": task, "question": question, "answers": answers}


def show_results() -> None:
    results = st.session_state.get("results")
    if not results:
        return
    task, question, answers = results["task"], results["question"], results["answers"]
    failed = sum(1 for a in answers if a.error)
    st.success(_("{ok} of {total} pages done").format(ok=len(answers) - failed, total=len(answers)))
    columns = st.columns(2)
    for i, (label, name, data, mime) in enumerate(work.downloads(answers, task, question)):
        columns[i % 2].download_button(label, data, file_name=name, mime=mime, key=f"download-{name}")
    for answer in answers:
        st.subheader(_("{path} page {page}").format(path=answer.file, page=answer.page))
        left, right = st.columns(2)
        left.image(answer.image, width="stretch")
        with right:
            if answer.error:
                st.error(answer.error)
            elif task == "ask":
                st.markdown(f"**{question}**")
                st.info(answer.text or _("(empty answer)"))
            elif task == "text":
                st.text(answer.text)
            else:
                st.markdown(answer.text)
                if task == "layout":
                    with st.expander(_("{n} layout blocks").format(n=len(answer.blocks))):
                        st.json(answer.blocks)


main()
