"""Shared mechanics for backends that run a model through Hugging Face transformers.

`HFBackend` is the model adapter of the generation engine (chatvlm.engine.runner
.ModelAdapter): it loads the checkpoint folder chatvlm.weights locates (every origin loaded
the same way), picks device / dtype / attention kernel (chatvlm.devices), and says what
only the model knows: its inputs for a batch of pages, stop tokens, logits processors, how
ids become text. The engine's `GenerationRunner` runs the batches (continuous batching,
the static decoder, `generate` as the fallback) and `BatchSizer` sizes them.

A model backend subclasses `HFBackend` and says only:

    build_inputs(pages, task, params) -> dict of tensors   (the processor call, one batch)
    postprocess(page, raw, task)       -> PageResult        (pure string work)

and optionally overrides the class attributes and hooks documented on `HFBackend`
(model class, attention support, stop tokens/strings, decode, logits processors).
Nothing here imports torch or transformers at module level, so reading a backend's
class attributes (`chatvlm models`) stays cheap.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Any, Optional

from ..config import BackendOptions, GenerationParams
from ..devices import choose_attention, choose_device, choose_dtype
from ..engine.memory import BatchSizer, MemoryMeter, memory_meter
from ..engine.runner import RUN_OPTION_KEYS, GenerationRunner
from ..errors import ChatVLMError, ModelUnavailableError
from ..i18n import _
from ..records import Page, PageResult, RawOutput
from ..registry import ModelSpec
from ..weights import checkpoint_facts, load_transformers_model, locate, release, revision_used, short_reason
from .base import Backend


# --------------------------------------------------------------------------- output helpers

def strip_code_fence(text: str) -> str:
    """Remove one ```markdown ... ``` fence wrapping the whole output (chat models add it)."""
    m = re.fullmatch(r"\s*```[a-zA-Z]*\n(.*?)\n?```\s*", text, flags=re.S)
    return m.group(1) if m else text


# --------------------------------------------------------------------------- the base backend

class HFBackend(Backend):
    """A transformers model run in left-padded greedy batches (by chatvlm.engine).

    Class attributes a subclass may set:
        auto_class        transformers class name used to load (default AutoModelForImageTextToText)
        processor_class   default AutoProcessor
        attn_support      kernels the model accepts, in any order (default all three)
        default_gpu_batch default batch size on a GPU when --batch-size is not given
        skip_special_tokens  decode flag (DeepSeek decodes with specials and strips them itself)

    Hooks (override as needed):
        build_inputs(pages, task, params) -> dict     REQUIRED: one processor call for the batch
        to_device(inputs) -> dict                      tensors onto the model's device and dtype
        stop_token_ids() -> list[int]                 default: generation_config / tokenizer EOS
        stop_strings() -> list[str]                   default: none
        pad_token_id() -> int / bos_token_id() -> int | None
        logits_processors(task, params, inputs) -> list   model-specific anti-repetition, etc.
        repetition_penalty(params) -> float            default: params, else spec.extra, else 1.0
        decode(ids) -> str                             default: tokenizer decode + strip
        decode_raw(ids) -> str                         specials kept (stop strings, loop guard)
        attn_argument(kind) -> str | dict              what from_pretrained gets for attn_implementation
        load_processor(path) / load_model(path, dtype, attn)
        after_load()                                   e.g. set the pixel budget on the processor
    """

    auto_class: str = "AutoModelForImageTextToText"
    processor_class: str = "AutoProcessor"
    attn_support: tuple[str, ...] = ("flash_attention_2", "sdpa", "eager")
    default_gpu_batch: int = 8
    skip_special_tokens: bool = True
    # decode = auto | fast | hf, the static decoder's and the batch probe's settings (chatvlm.engine)
    option_keys = RUN_OPTION_KEYS

    def __init__(self, spec: ModelSpec, options: Optional[BackendOptions] = None):
        super().__init__(spec, options)
        self.model = None
        self.processor = None
        self.path: Optional[Path] = None
        self._checkpoint: Optional[Path] = None     # what weights.locate gave; released on close
        self.device: str = "cpu"
        self.dtype = None
        self.attn: Optional[str] = None
        self._facts: dict[str, Any] = {}
        # loop-guard thresholds (loop_guard.GenerationTracker keywords); tests lower them
        self.loop_settings: dict[str, Any] = {}
        self.runner = GenerationRunner(self, self.options, self._facts)
        self.sizer = BatchSizer(self._facts)

    @property
    def peak_memory_bytes(self) -> int:
        return self.runner.peak_memory_bytes

    # ----------------------------------------------------------------- loading
    def load(self) -> None:
        if self.model is not None:
            return
        path = self._checkpoint = locate(self.spec, self.options)
        self._facts.update(checkpoint_facts(path))      # e.g. the weights are random (bench --synthetic)
        t_import = time.perf_counter()
        try:
            import torch  # noqa: F401
            import transformers  # noqa: F401
        except ImportError as exc:
            raise ModelUnavailableError(_("model '{name}' needs torch and transformers: {reason}").format(
                name=self.spec.name, reason=exc)) from None
        t0 = time.perf_counter()
        self._facts["import_s"] = round(t0 - t_import, 3)
        self.device = choose_device(self.options)
        self.dtype = choose_dtype(self.spec, self.options, self.device)
        dtype_name = str(self.dtype).replace("torch.", "")
        self.attn = choose_attention(self.attn_support, self.device, dtype_name, self.options.attn)
        try:
            self.processor = self.load_processor(path)
            self.model = self.load_model(path, self.dtype, self.attn)
        except ChatVLMError:
            raise
        except Exception as exc:
            raise ModelUnavailableError(_(
                "model '{name}': could not load the checkpoint at {path} ({reason}); is it a copy of {repo}?").format(
                name=self.spec.name, path=path, reason=short_reason(exc), repo=self.spec.repo_id)) from None
        self.model.eval()
        self.path = path
        self.after_load()
        self.load_s = time.perf_counter() - t0

    def load_processor(self, path: Path):
        import transformers
        cls = getattr(transformers, self.processor_class)
        return cls.from_pretrained(str(path))

    def load_model(self, path: Path, dtype, attn: str):
        import transformers
        cls = getattr(transformers, self.auto_class)
        return load_transformers_model(cls, path, self.device, dtype=dtype, attn_implementation=self.attn_argument(attn))

    def attn_argument(self, kind: str):
        return kind

    def after_load(self) -> None:
        """Subclasses: adjust the processor (pixel budget) or the model after loading."""

    def close(self) -> None:
        self.runner.release()
        self.runner.decoder = None
        self.model = None
        self.processor = None
        release(self._checkpoint)     # a temporary (synthetic) folder goes
        self._checkpoint = None
        if "torch" in sys.modules:
            import torch
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    # ----------------------------------------------------------------- facts
    @property
    def tokenizer(self):
        return getattr(self.processor, "tokenizer", self.processor)

    def describe(self) -> dict[str, Any]:
        facts: dict[str, Any] = {
            "engine": "transformers",
            "model_class": type(self.model).__name__ if self.model is not None else None,
            "checkpoint": str(self.path) if self.path else None,
            "repo_id": self.spec.repo_id,
            "revision": revision_used(self.spec, self.path),   # the commit loaded, where known
            "device": self.device,
            "device_name": None,
            "dtype": str(self.dtype).replace("torch.", "") if self.dtype is not None else None,
            "attention": self.attn,
            "load_s": round(self.load_s, 3),
            "peak_gpu_memory_bytes": self.peak_memory_bytes or None,
        }
        try:
            import torch
            import transformers
            facts["torch"] = torch.__version__
            facts["transformers"] = transformers.__version__
            if self.device.startswith("cuda") and torch.cuda.is_available():
                facts["device_name"] = torch.cuda.get_device_name(torch.device(self.device))
                facts["peak_gpu_memory_bytes"] = int(torch.cuda.max_memory_allocated(torch.device(self.device)))
            elif self.device == "cpu":
                facts["device_name"] = "cpu"
        except Exception:
            pass
        facts.update(self.runner.report_facts())   # decode_slots and why, even where no engine ran
        return facts

    # ----------------------------------------------------------------- batch sizing (chatvlm.engine.memory)
    def default_batch_size(self, params: GenerationParams) -> int:
        """--batch-size, else on a GPU the largest batch the free memory holds (`auto`), else 1.

        `auto` is measured: a probe batch runs prefill and a few decode steps on the loaded
        model, and its peak memory, scaled to the free memory with a safety margin, sets the
        size (`measure_batch_size`). Where the probe cannot run, an estimate from the KV-cache
        size stands in (`page_memory_bytes`)."""
        meter = self.memory_meter() if not params.batch_size else None
        size = self.sizer.choose(params.batch_size, self.max_new_tokens(params), meter,
                                 lambda: self.measure_batch_size(params, meter),
                                 lambda: self.estimated_batch_size(params, meter), self.release_memory)
        self.runner.batch_size = size      # the continuous engine's default row count (decode_slots)
        return size

    def memory_meter(self) -> Optional[MemoryMeter]:
        """The accelerator's memory counters, or None on a CPU (no probe there)."""
        return memory_meter(self.device)

    def estimated_batch_size(self, params: GenerationParams, meter: MemoryMeter) -> int:
        return self.sizer.estimate(meter, lambda: self.page_memory_bytes(params), self.default_gpu_batch)

    def probe_task(self) -> str:
        return "markdown" if "markdown" in self.spec.tasks else self.spec.tasks[0]

    def measure_batch_size(self, params: GenerationParams, meter: MemoryMeter) -> int:
        """The measured probe on this model: `probe_pages` A4 pages through `generate_batch`
        for `probe_tokens` new tokens."""
        import dataclasses

        def run_probe(pages: list[Page], tokens: int):
            probe = dataclasses.replace(params, max_new_tokens=tokens, batch_size=len(pages))
            return self.generate_batch(pages, self.probe_task(), probe)

        return self.sizer.measure(run_probe, meter, self.release_memory, max_new_tokens=self.max_new_tokens(params),
                                  kv_bytes_per_token=self.kv_bytes_per_token, settings=self.options.extra)

    def release_memory(self) -> None:
        """After an out-of-memory error: drop the static decoder's KV pool and graphs (they
        are rebuilt, at the size needed, by the next batch)."""
        self.runner.release()

    def kv_bytes_per_token(self) -> int:
        """Keys and values of one token of one page across the language model's layers."""
        from ..engine.memory import kv_bytes_per_token
        return kv_bytes_per_token(self.model.config, 2 if "16" in str(self.dtype) else 4)

    def prompt_tokens_estimate(self) -> int:
        """Prompt length of a typical page: image tokens at the pixel budget plus the text.

        Qwen-style models give one token per 28x28 pixels (32x32 for Qwen3); backends with a
        different rule override this.
        """
        pixels = self.spec.max_pixels or 1_003_520
        return int(pixels / (28 * 28)) + 64

    def page_memory_bytes(self, params: GenerationParams) -> int:
        """GPU memory one page costs in a batch: its KV cache for prompt + new tokens, with
        the same again for activations (vision tower, attention workspace, logits)."""
        from ..engine.memory import page_memory_bytes
        return page_memory_bytes(self.prompt_tokens_estimate(), self.max_new_tokens(params), self.kv_bytes_per_token())

    # ----------------------------------------------------------------- the adapter's hooks (ModelAdapter)
    def build_inputs(self, pages: list[Page], task: str, params: GenerationParams) -> dict:
        raise NotImplementedError

    def to_device(self, inputs) -> dict:
        import torch

        data = dict(inputs)
        for key, value in data.items():
            if isinstance(value, torch.Tensor):
                if value.is_floating_point():
                    data[key] = value.to(self.device, dtype=self.dtype)
                else:
                    data[key] = value.to(self.device)
        return data

    def generation_config_value(self, key: str, default=None):
        gc = getattr(self.model, "generation_config", None)
        value = getattr(gc, key, None) if gc is not None else None
        return default if value is None else value

    def stop_token_ids(self) -> list[int]:
        ids = self.generation_config_value("eos_token_id")
        if ids is None:
            ids = getattr(self.tokenizer, "eos_token_id", None)
        if ids is None:
            return []
        return [int(i) for i in (ids if isinstance(ids, (list, tuple)) else [ids])]

    def stop_strings(self) -> list[str]:
        return []

    def pad_token_id(self) -> int:
        pad = getattr(self.tokenizer, "pad_token_id", None)
        if pad is None:
            pad = self.generation_config_value("pad_token_id")
        if pad is None:
            stops = self.stop_token_ids()
            pad = stops[0] if stops else 0
        return int(pad)

    def bos_token_id(self) -> Optional[int]:
        return self.generation_config_value("bos_token_id")

    def repetition_penalty(self, params: GenerationParams) -> float:
        if params.repetition_penalty is not None:
            return float(params.repetition_penalty)
        return float(self.spec.extra.get("repetition_penalty", 1.0))

    def logits_processors(self, task: str, params: GenerationParams, inputs: dict) -> list:
        return []

    def max_new_tokens(self, params: GenerationParams) -> int:
        return int(params.max_new_tokens or self.spec.max_new_tokens)

    def text_loop_settings(self) -> dict[str, Any]:
        """trim_repetition keywords matching the token-level settings (scaled ~2 chars/token)."""
        from ..engine.generation import text_loop_settings
        return text_loop_settings(self.loop_settings)

    def max_positions(self) -> Optional[int]:
        """The language model's context length, to cap max_new_tokens (None: no cap)."""
        config = getattr(self.model, "config", None)
        text = getattr(config, "text_config", None) or config
        value = getattr(text, "max_position_embeddings", None)
        return int(value) if value else None

    def decode_raw(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens,
                                     clean_up_tokenization_spaces=False)

    # ----------------------------------------------------------------- generation (chatvlm.engine.runner)
    def generate_batch(self, pages: list[Page], task: str, params: GenerationParams) -> list[RawOutput]:
        if not pages:
            return []
        if self.model is None:
            self.load()
        return self.runner.generate(pages, task, params)

    def generate_stream(self, pages, task: str, params: GenerationParams, *, on_shrink=None, fallback=None,
                        hold=None):
        """The continuous engine over a stream of pages (GenerationRunner.generate_stream)."""
        if self.model is None:
            self.load()
        return self.runner.generate_stream(pages, task, params, on_shrink=on_shrink, fallback=fallback, hold=hold)

    def generate_inputs(self, inputs: dict, task: str, params: GenerationParams,
                        preprocess_s: float = 0.0, row_targets: Optional[list[int]] = None) -> list[RawOutput]:
        """One batch of processor outputs through the engine's batch path (e.g. a chat turn)."""
        return self.runner.generate_inputs(inputs, task, params, preprocess_s=preprocess_s, row_targets=row_targets)

    def decode_slots(self) -> int:
        """Rows the continuous engine keeps decoding (GenerationRunner.decode_slots)."""
        return self.runner.decode_slots()

    def static_decoder(self, params: GenerationParams):
        """The chatvlm static decoder for this request, or None for transformers `generate`
        (GenerationRunner.static_decoder)."""
        return self.runner.static_decoder(params)

    # ----------------------------------------------------------------- helpers for subclasses
    def page_result(self, page: Page, raw: RawOutput, **fields) -> PageResult:
        width, height = page.size
        timings = dict(page.timings)
        result = PageResult(page=page, model=self.spec.name, width=width, height=height,
                            finish_reason=raw.finish_reason, input_tokens=raw.input_tokens,
                            output_tokens=raw.output_tokens, timings=timings, **fields)
        if raw.error:
            result.status, result.error = "error", raw.error
        return result
