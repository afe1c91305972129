"""A small fake backend registered through the real registry, for pipeline and CLI tests
(the `fake_backend` fixture registers it for one test and removes it after).

It "recognises" a page by reporting its size; it can be told (through BackendOptions.extra)
to sleep per page, to fail (or kill its process) on pages of a given width, to find no text
on pages of a given width (an empty answer, as a VLM gives for a blank page), or to raise out-of-memory for
batches larger than a limit, so the pipeline's error paths run for real.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import Iterator

from chatvlm.backends.base import Backend
from chatvlm.paths import path_text
from chatvlm.records import LayoutBlock, PageResult, RawOutput
from chatvlm.registry import ModelSpec, register, unregister

NAME = "fake_echo"


class FakeOutOfMemory(RuntimeError):
    def __init__(self):
        super().__init__("CUDA out of memory. Tried to allocate 2.00 GiB")


class FakeBackend(Backend):
    uses_gpu = False

    def load(self) -> None:
        self.calls: list[int] = []
        if self.options.extra.get("fail_load"):
            from chatvlm.errors import ModelUnavailableError
            raise ModelUnavailableError("fake model cannot load: told to fail")

    def default_batch_size(self, params):
        return params.batch_size or int(self.options.extra.get("batch", 4))

    def generate_batch(self, pages, task, params):
        self.calls.append(len(pages))
        oom_above = self.options.extra.get("oom_above")
        if oom_above and len(pages) > oom_above:
            raise FakeOutOfMemory()
        outs = []
        for page in pages:
            time.sleep(float(self.options.extra.get("sleep", os.environ.get("CHATVLM_FAKE_SLEEP", 0))))
            w, h = page.image.size
            if self.options.extra.get("fail_width") == w:
                raise ValueError(f"cannot handle width {w}")
            if self.options.extra.get("empty_width") == w:
                outs.append(RawOutput(text="", input_tokens=w, output_tokens=1))
                continue
            if self.options.extra.get("crash_width") == w:
                os._exit(17)   # the whole worker process dies, as on a segfault or the OOM killer
            name = path_text(page.source.name)
            outs.append(RawOutput(text=f"{name} p{page.page} {w}x{h}", input_tokens=w, output_tokens=h))
        return outs

    def postprocess(self, page, raw, task):
        w, h = page.image.size
        if not raw.text:
            return PageResult(page=page, model=self.spec.name, text="", markdown="", layout=[], width=w, height=h,
                              finish_reason=raw.finish_reason, input_tokens=raw.input_tokens, output_tokens=raw.output_tokens)
        return PageResult(page=page, model=self.spec.name, text=raw.text + "\n", markdown=f"# {raw.text}\n",
                          layout=[LayoutBlock(bbox=[0, 0, w, h], category="Text", text=raw.text)],
                          width=w, height=h, finish_reason=raw.finish_reason,
                          input_tokens=raw.input_tokens, output_tokens=raw.output_tokens)

    def describe(self):
        return {"engine": "fake", "device": "cpu"}


def register_fake() -> None:
    """Put the fake backend into the registry of this process (a child process that runs the
    CLI calls this; tests use the `fake_backend` fixture, which also takes it out again)."""
    register(ModelSpec(name=NAME, backend="tests.fake_backend:FakeBackend", tasks=("text", "markdown", "layout")),
             replace=True)


@contextmanager
def registered() -> Iterator[str]:
    """The fake backend registered for the duration of the block, removed after it."""
    register_fake()
    try:
        yield NAME
    finally:
        unregister(NAME)
