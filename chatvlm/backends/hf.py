"""Shared mechanics for backends that run a model through Hugging Face transformers.

One place for: loading the checkpoint folder chatvlm.weights locates (real or synthetic,
loaded the same way), device / dtype / attention-kernel choice, and batched greedy generation with left
padding, per-row finish reasons (stop / length / loop), token counts and timings.

A model backend subclasses `HFBackend` and says only:

    build_inputs(pages, task, params) -> dict of tensors   (the processor call, one batch)
    postprocess(page, raw, task)       -> PageResult        (pure string work)

and optionally overrides the class attributes and hooks documented on `HFBackend`
(model class, attention support, stop tokens/strings, decode, logits processors).
Nothing here imports torch or transformers at module level, so reading a backend's
class attributes (`chatvlm models`) stays cheap.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Optional

from ..collate import collate_left  # noqa: F401  (re-exported for the model backends)
from ..config import BackendOptions, GenerationParams
from ..errors import ChatVLMError, ModelUnavailableError
from ..i18n import _
from ..layout import markdown_to_text  # noqa: F401  (re-exported for the model backends)
from ..records import Page, PageResult, RawOutput
from ..registry import ModelSpec
from ..engine.memory import MemoryMeter, memory_meter
from ..weights import is_synthetic, load_transformers_model, locate, release, short_reason
from .base import Backend

ATTN_ORDER = ("flash_attention_2", "sdpa", "eager")


# --------------------------------------------------------------------------- device, dtype, attention

def gpu_info() -> Optional[dict[str, Any]]:
    """{"name", "capability"} of GPU 0, or None. Uses torch if already imported, else nvidia-smi."""
    if "torch" in sys.modules:
        import torch
        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return {"name": torch.cuda.get_device_name(0), "capability": major + minor / 10}
        return None
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        return None
    if not out:
        return None
    name, _, cap = out[0].rpartition(",")
    try:
        return {"name": name.strip(), "capability": float(cap)}
    except ValueError:
        return {"name": out[0].strip(), "capability": 0.0}


def flash_attn_importable() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def choose_device(options: BackendOptions) -> str:
    if options.device:
        return options.device
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def choose_dtype(spec: ModelSpec, options: BackendOptions, device: str):
    """CUDA: the spec's dtype (bf16; fp16 where the GPU lacks bf16). CPU: fp32. --dtype overrides."""
    import torch

    names = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
             "half": torch.float16, "float32": torch.float32, "fp32": torch.float32, "float": torch.float32}
    if options.dtype:
        try:
            return names[options.dtype.lower()]
        except KeyError:
            raise ChatVLMError(_("unknown dtype {dtype}; use bfloat16, float16 or float32").format(dtype=repr(options.dtype))) from None
    if not device.startswith("cuda"):
        return torch.float32
    dtype = names.get((spec.dtype or "bfloat16").lower(), torch.bfloat16)
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        return torch.float16
    return dtype


def choose_attention(supported: Iterable[str], device: str, dtype_name: str = "bfloat16",
                     requested: Optional[str] = None, gpu: Optional[dict] = None) -> str:
    """flash_attention_2 if it imports and the GPU supports it, else sdpa, else eager.

    `requested` (--attn) wins when the model supports it; otherwise a clear error.
    """
    supported = tuple(supported)
    if requested:
        if requested not in supported:
            raise ChatVLMError(_("attention '{kind}' is not supported by this model; choose from: {known}").format(
                kind=requested, known=", ".join(supported)))
        if requested == "flash_attention_2" and not flash_attn_importable():
            raise ChatVLMError(_("--attn flash_attention_2 needs the flash-attn package, which is not installed"))
        return requested
    for kind in ATTN_ORDER:
        if kind not in supported:
            continue
        if kind == "flash_attention_2":
            on_gpu = device.startswith("cuda")
            info = gpu if gpu is not None else (gpu_info() if on_gpu else None)
            if not (on_gpu and flash_attn_importable() and info and info.get("capability", 0) >= 8.0
                    and dtype_name in ("bfloat16", "float16")):
                continue
        return kind
    return "eager"


def planned_attention(spec: ModelSpec) -> str:
    """The kernel this model would use on this machine (for `chatvlm models`); no torch import."""
    try:
        cls = spec.backend_class()
    except Exception:
        return "n/a"
    supported = getattr(cls, "attn_support", None)
    if not supported:
        return "n/a"
    gpu = gpu_info()
    return choose_attention(supported, "cuda" if gpu else "cpu", spec.dtype if gpu else "float32", gpu=gpu)


# --------------------------------------------------------------------------- output helpers

def strip_code_fence(text: str) -> str:
    """Remove one ```markdown ... ``` fence wrapping the whole output (chat models add it)."""
    m = re.fullmatch(r"\s*```[a-zA-Z]*\n(.*?)\n?```\s*", text, flags=re.S)
    return m.group(1) if m else text


# --------------------------------------------------------------------------- the base backend

class HFBackend(Backend):
    """A transformers model run in left-padded greedy batches.

    Class attributes a subclass may set:
        auto_class        transformers class name used to load (default AutoModelForImageTextToText)
        processor_class   default AutoProcessor
        attn_support      kernels the model accepts, in any order (default all three)
        default_gpu_batch default batch size on a GPU when --batch-size is not given
        skip_special_tokens  decode flag (DeepSeek decodes with specials and strips them itself)

    Hooks (override as needed):
        build_inputs(pages, task, params) -> dict     REQUIRED: one processor call for the batch
        stop_token_ids() -> list[int]                 default: generation_config / tokenizer EOS
        stop_strings() -> list[str]                   default: none
        pad_token_id() -> int
        logits_processors(task, params, inputs) -> list   model-specific anti-repetition, etc.
        repetition_penalty(params) -> float            default: params, else spec.extra, else 1.0
        decode(ids) -> str                             default: tokenizer decode + strip
        attn_argument(kind) -> str | dict              what from_pretrained gets for attn_implementation
        load_processor(path) / load_model(path, dtype, attn)
        after_load()                                   e.g. set the pixel budget on the processor
    """

    auto_class: str = "AutoModelForImageTextToText"
    processor_class: str = "AutoProcessor"
    attn_support: tuple[str, ...] = ("flash_attention_2", "sdpa", "eager")
    default_gpu_batch: int = 8
    skip_special_tokens: bool = True
    # decode = auto | fast | hf; the rest tune our static decode loop (see static_decoder)
    option_keys = frozenset({"decode", "decode_graphs", "decode_len_bucket", "decode_sync_every", "decode_max_len",
                             "decode_slots", "decode_refill_chunk",
                             "probe_pages", "probe_tokens", "probe_margin"})

    def __init__(self, spec: ModelSpec, options: Optional[BackendOptions] = None):
        super().__init__(spec, options)
        self.model = None
        self.processor = None
        self.path: Optional[Path] = None
        self._checkpoint: Optional[Path] = None     # what weights.locate gave; released on close
        self.device: str = "cpu"
        self.dtype = None
        self.attn: Optional[str] = None
        self.peak_memory_bytes: int = 0
        self._facts: dict[str, Any] = {}
        # loop-guard thresholds (loop_guard.GenerationTracker keywords); tests lower them
        self.loop_settings: dict[str, Any] = {}

    # ----------------------------------------------------------------- loading
    def load(self) -> None:
        if self.model is not None:
            return
        path = self._checkpoint = locate(self.spec, self.options)
        if is_synthetic(path):
            self._facts["synthetic"] = True      # reported: the weights are random
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
        if getattr(self, "_static_decoder", None) is not None:
            self._static_decoder.release()
        self._static_decoder = None
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
            "revision": self.spec.revision,
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
        facts.update(self._facts)
        return facts

    def default_batch_size(self, params: GenerationParams) -> int:
        """--batch-size, else on a GPU the largest batch the free memory holds (`auto`), else 1.

        `auto` is measured: a probe batch runs prefill and a few decode steps on the loaded
        model, and its peak memory, scaled to the free memory with a safety margin, sets the
        size (`measure_batch_size`). Where the probe cannot run, an estimate from the KV-cache
        size stands in (`page_memory_bytes`)."""
        size = self._choose_batch_size(params)
        self._run_batch_size = size      # the continuous engine's default row count (decode_slots)
        return size

    def _choose_batch_size(self, params: GenerationParams) -> int:
        if params.batch_size:
            return params.batch_size
        meter = self.memory_meter()
        if meter is None:
            return 1
        key = self.max_new_tokens(params)
        known = getattr(self, "_auto_batch", {})
        if key in known:
            return known[key]
        from ..engine.memory import probed_batch_size
        size, failure = probed_batch_size(lambda: self.measure_batch_size(params, meter),
                                          lambda: self.estimated_batch_size(params, meter), self.release_memory)
        if failure:
            self._facts["auto_batch_probe"] = failure
        self._facts["auto_batch_size"] = size
        self._auto_batch = {**known, key: size}
        return size

    def memory_meter(self) -> Optional["MemoryMeter"]:
        """The accelerator's memory counters, or None on a CPU (no probe there)."""
        return memory_meter(self.device)

    def estimated_batch_size(self, params: GenerationParams, meter: "MemoryMeter") -> int:
        from ..engine.memory import estimated_batch_size
        size, per_page = estimated_batch_size(meter, lambda: self.page_memory_bytes(params), self.default_gpu_batch)
        if per_page is not None:
            self._facts["estimated_page_memory_mb"] = round(per_page / 2**20, 1)
        return size

    def probe_task(self) -> str:
        return "markdown" if "markdown" in self.spec.tasks else self.spec.tasks[0]

    def measure_batch_size(self, params: GenerationParams, meter: "MemoryMeter") -> int:
        """The measured probe (chatvlm.engine.memory.measure_batch_size) on this model:
        `probe_pages` A4 pages through `generate_batch` for `probe_tokens` new tokens."""
        import dataclasses

        from ..engine.memory import measure_batch_size

        extra = self.options.extra

        def run_probe(pages: list[Page], tokens: int):
            probe = dataclasses.replace(params, max_new_tokens=tokens, batch_size=len(pages))
            return self.generate_batch(pages, self.probe_task(), probe)

        size, facts = measure_batch_size(
            run_probe, meter, self.release_memory, max_new_tokens=self.max_new_tokens(params),
            kv_bytes_per_token=self.kv_bytes_per_token, probe_pages=int(extra.get("probe_pages", 2)),
            probe_tokens=int(extra.get("probe_tokens", 8)), margin=float(extra.get("probe_margin", 0.8)))
        self._facts["auto_batch_probe"] = facts
        return size

    def release_memory(self) -> None:
        """After an out-of-memory error: drop the static decoder's KV pool and graphs (they
        are rebuilt, at the size needed, by the next batch)."""
        decoder = getattr(self, "_static_decoder", None)
        if decoder is not None:
            decoder.release()

    def kv_bytes_per_token(self) -> int:
        """Keys and values of one token of one page across the language model's layers."""
        from ..scheduler import kv_cache_bytes_per_token
        config = self.model.config
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        heads = int(getattr(text, "num_attention_heads"))
        kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
        head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // heads)
        dtype_bytes = 2 if "16" in str(self.dtype) else 4
        return kv_cache_bytes_per_token(int(text.num_hidden_layers), kv_heads, head_dim, dtype_bytes)

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

    # ----------------------------------------------------------------- generation hooks
    def build_inputs(self, pages: list[Page], task: str, params: GenerationParams) -> dict:
        raise NotImplementedError

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

    def _decode_raw(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens,
                                     clean_up_tokenization_spaces=False)

    # ----------------------------------------------------------------- the batch
    def generate_batch(self, pages: list[Page], task: str, params: GenerationParams) -> list[RawOutput]:
        if not pages:
            return []
        if self.model is None:
            self.load()
        results = self._generate_continuous(pages, task, params)
        if results is not None:
            return results
        try:
            return self._generate_batches(pages, task, params)
        except Exception as exc:
            from ..scheduler import is_out_of_memory
            slots = self.decode_slots()
            if slots and len(pages) > 1 and is_out_of_memory(exc):
                # as after an engine's out-of-memory error: fewer rows from now on
                self._slots_cap = max(1, min(slots, len(pages)) // 2)
                self._facts["decode_slots_lowered_to"] = self._slots_cap
            raise

    def _generate_batches(self, pages: list[Page], task: str, params: GenerationParams) -> list[RawOutput]:
        """The batch path: with continuous slots (a batch the engine does not serve),
        `slots` pages decode at a time, as many as the memory was sized for."""
        slots = self.decode_slots()
        if slots and len(pages) > slots:
            return [raw for i in range(0, len(pages), slots)
                    for raw in self._generate_pages(pages[i:i + slots], task, params)]
        return self._generate_pages(pages, task, params)

    def _generate_pages(self, pages: list[Page], task: str, params: GenerationParams) -> list[RawOutput]:
        t0 = time.perf_counter()
        inputs = self.build_inputs(pages, task, params)
        preprocess_s = time.perf_counter() - t0
        return self.generate_inputs(inputs, task, params, preprocess_s=preprocess_s,
                                    row_targets=self.synthetic_targets(pages, params))

    def synthetic_targets(self, pages: list[Page], params: GenerationParams) -> Optional[list[int]]:
        """bench --synthetic --tokens A-B: each page's own token count (options.extra
        "synthetic_tokens" = [A, B, seed]), at most max_new_tokens; None otherwise."""
        spec = self.options.extra.get("synthetic_tokens") if self.options.synthetic else None
        if not spec:
            return None
        from ..synthetic import page_token_target

        low, high, seed = (int(v) for v in spec)
        cap = self.max_new_tokens(params)
        return [min(cap, page_token_target(p.doc_key, p.page, low, high, seed)) for p in pages]

    def decode_slots(self) -> int:
        """Rows the continuous engine keeps decoding (0: off). A batch of more pages than
        slots decodes continuously: a finished page's slot is refilled with the next page (at
        most `decode_refill_chunk` pages per prefill, default: as many as rows are free).

        On by default wherever the static decoder serves the model: as many rows as the run's
        batch size (`default_batch_size`: --batch-size or the measured auto size; a size of
        one has nothing to refill alongside). `-O decode_slots=N` sets the rows, 0 turns the
        engine off; `-O decode=hf` (transformers' generate) has none. After an out-of-memory
        error in the engine the rows are halved (`_slots_cap`)."""
        extra = self.options.extra
        if str(extra.get("decode", "auto")).lower() == "hf":
            return 0
        if extra.get("decode_slots") not in (None, ""):
            slots = int(extra["decode_slots"])
        else:
            slots = self._default_slots()
        cap = getattr(self, "_slots_cap", None)
        return min(slots, cap) if slots and cap else slots

    def _default_slots(self) -> int:
        size = int(getattr(self, "_run_batch_size", None) or 0)
        if size < 2 or self.model is None or getattr(self, "_decode_disabled", None) \
                or getattr(self, "_continuous_disabled", None):
            return 0
        known = getattr(self, "_static_supported", None)
        if known is None or known[0] is not self.model:
            from .. import decode as fast
            known = self._static_supported = (self.model, fast.unsupported_reason(self.model) is None)
        return size if known[1] else 0

    def _generate_continuous(self, pages: list[Page], task: str, params: GenerationParams):
        """The batch through the continuous engine (chatvlm.engine), or None where it does
        not apply (few pages, a model or request the static decoder or the engine does not
        serve, an engine that failed once in this run): the caller then decodes the pages
        batch by batch."""
        import torch

        from ..engine import ContinuousEngine, Prepared, continuous_unsupported
        from ..engine.continuous import longrope_crossing

        slots = self.decode_slots()
        if not slots or len(pages) <= slots or getattr(self, "_continuous_disabled", None):
            return None
        decoder = self.static_decoder(params)
        if decoder is None:
            return None
        reason = continuous_unsupported(decoder)
        if reason:
            self._facts["decode_continuous"], self._facts["decode_continuous_reason"] = False, reason
            return None
        preprocess = [0.0]
        input_errors: list[BaseException] = []

        def prepare(group: list[Page]) -> Prepared:
            t0 = time.perf_counter()
            try:
                inputs = self._to_device(self.build_inputs(group, task, params))
            except Exception as exc:
                input_errors.append(exc)    # a bad page, not the engine's failure
                raise
            if inputs.get("attention_mask") is None:
                inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
            preprocess[0] += time.perf_counter() - t0
            prompt_len = inputs["input_ids"].shape[1]
            max_new = self._max_new_within_context(params, prompt_len)
            _tracker, processors, gen_kwargs = self._generation_state(inputs, task, params, max_new, prompt_len)
            return Prepared(inputs, gen_kwargs, processors)

        # bench --synthetic --tokens A-B: each page ends ("length") at its own count
        targets = self.synthetic_targets(pages, params)
        target_of = {id(page): n for page, n in zip(pages, targets)} if targets else {}
        # LongRoPE: when even a one-token prompt with the smallest budget could cross the
        # original context, every page could: decline before preparing any
        smallest = min(targets) if targets else self.max_new_tokens(params)
        crossing = longrope_crossing(decoder.parts.longrope_original, [1], [smallest])
        if crossing:
            self._facts["decode_continuous"] = False
            self._facts["decode_continuous_reason"] = f"continuous engine declined this batch: {crossing}"[:300]
            return None

        def new_tracker(page: Page):
            own = target_of.get(id(page))
            return self._new_tracker(params, 0, 1, row_limits=[own] if own is not None else None)

        engine = ContinuousEngine(decoder, slots=slots, prepare=prepare, new_tracker=new_tracker,
                                  max_new_tokens=self.max_new_tokens(params), max_positions=self.max_positions(),
                                  refill_chunk=int(self.options.extra.get("decode_refill_chunk") or 0) or None,
                                  request_budget=lambda page: target_of.get(id(page)))
        on_cuda = self.device.startswith("cuda") and torch.cuda.is_available()
        t1 = time.perf_counter()
        finished = [None] * len(pages)
        try:
            for done in engine.run(pages):
                finished[done.index] = done
        except Exception as exc:
            from ..decode import Unsupported
            from ..scheduler import is_out_of_memory
            # The engine has freed the decoder's cache, graphs and pool before raising.
            if is_out_of_memory(exc):
                # Fewer rows from now on (as the scheduler lowers its batch size); it splits the batch.
                self._slots_cap = max(1, slots // 2)
                self._facts["decode_slots_lowered_to"] = self._slots_cap
                raise
            if any(exc is e for e in input_errors):
                raise   # a bad page: the scheduler splits the batch and so finds it
            if isinstance(exc, Unsupported):
                self._facts["decode_continuous_reason"] = f"continuous engine declined this batch: {exc}"[:300]
                self._facts["decode_continuous"] = False
                # A request it cannot serve (e.g. one that could cross LongRoPE's original
                # context): the pages already finished stand, the rest take the batch path.
                rest = [page for page, done in zip(pages, finished) if done is None]
                if len(rest) == len(pages):
                    return None
                self._facts.update(decoder.facts())
                made = iter(self._generate_batches(rest, task, params))
                n, spent = len(pages), time.perf_counter() - t1
                return [next(made) if d is None else
                        self._raw_output(d.tokens, d.reason, params, d.input_tokens, spent / n, preprocess[0] / n,
                                         {"batch_size": slots, "batch_generate_s": spent, "continuous": True})
                        for d in finished]
            self._facts["decode_continuous_reason"] = self._continuous_disabled = \
                f"continuous engine failed: {exc.__class__.__name__}: {exc}"[:300]
            self._facts["decode_continuous"] = False
            return None
        if on_cuda:
            torch.cuda.synchronize()
            self.peak_memory_bytes = max(self.peak_memory_bytes,
                                         int(torch.cuda.max_memory_allocated(torch.device(self.device))))
        total_s = time.perf_counter() - t1
        generate_s = total_s - preprocess[0]
        self._facts.update(decoder.facts())
        self._facts.update(engine.facts())
        self._facts.pop("decode_continuous_reason", None)
        n = len(pages)
        return [self._raw_output(d.tokens, d.reason, params, d.input_tokens, generate_s / n, preprocess[0] / n,
                                 {"batch_size": slots, "batch_generate_s": generate_s, "continuous": True})
                for d in finished]

    def generate_inputs(self, inputs: dict, task: str, params: GenerationParams,
                        preprocess_s: float = 0.0, row_targets: Optional[list[int]] = None) -> list[RawOutput]:
        """Greedy (by default) left-padded generation for one batch of processor outputs.

        `row_targets` (bench --synthetic with a token range): each row generates exactly its
        own count, the batch as long as its longest row."""
        import torch

        t0 = time.perf_counter()
        inputs = self._to_device(inputs)
        preprocess_s += time.perf_counter() - t0
        input_ids = inputs["input_ids"]
        if inputs.get("attention_mask") is None:
            inputs["attention_mask"] = torch.ones_like(input_ids)
        attention = inputs["attention_mask"]
        prompt_len = input_ids.shape[1]
        input_counts = attention.sum(dim=1).tolist()
        # bench --synthetic --tokens A-B: the batch runs as long as its longest row's target
        max_new = self._max_new_within_context(params, prompt_len, budget=max(row_targets) if row_targets else None)
        row_limits = [min(n, max_new) for n in row_targets] if row_targets else None

        def fresh_generation_state():
            """Tracker, processors and generate() arguments; both decoders mutate them, so
            a retry gets new ones."""
            return self._generation_state(inputs, task, params, max_new, prompt_len, row_limits=row_limits)

        from ..engine.batch import batch_outputs, decode_batch

        state = fresh_generation_state()
        on_cuda = self.device.startswith("cuda") and torch.cuda.is_available()
        if on_cuda:
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        decoder = self.static_decoder(params)
        out, tracker = decode_batch(inputs, state, decoder=decoder, fresh_state=fresh_generation_state,
                                    generate=self.model.generate, max_new=max_new, pad_token_id=self.pad_token_id(),
                                    facts=self._facts, disable=lambda reason: setattr(self, "_decode_disabled", reason))
        if on_cuda:
            torch.cuda.synchronize()
            self.peak_memory_bytes = max(self.peak_memory_bytes,
                                         int(torch.cuda.max_memory_allocated(torch.device(self.device))))
        generate_s = time.perf_counter() - t1

        def to_raw(ids, reason, input_tokens, generate_s, preprocess_s, extra):
            return self._raw_output(ids, reason, params, input_tokens, generate_s, preprocess_s, extra)

        return batch_outputs(out, prompt_len, tracker, input_counts, to_raw, generate_s, preprocess_s)

    def _stops(self) -> tuple[list[int], list[str]]:
        """Stop token ids and stop strings (none for bench --synthetic: exactly max_new tokens)."""
        if self.options.synthetic:
            return [], []
        return self.stop_token_ids(), self.stop_strings()

    def _max_new_within_context(self, params: GenerationParams, prompt_len: int, budget: Optional[int] = None) -> int:
        """New tokens a batch may generate: `budget` (default max_new_tokens) within the context."""
        from ..engine.generation import max_new_within_context
        max_new = budget if budget is not None else self.max_new_tokens(params)
        return max_new_within_context(max_new, self.max_positions(), prompt_len)

    def _new_tracker(self, params: GenerationParams, prompt_len: int, batch: int,
                     row_limits: Optional[list[int]] = None):
        """Stop tracking for a batch; `row_limits`: each row ends ("length") at its own count."""
        from ..engine.generation import new_tracker

        stop_ids, stop_strings = self._stops()
        return new_tracker(prompt_len, batch, stop_ids=stop_ids, stop_strings=stop_strings,
                           decode_raw=self._decode_raw, loop_guard=params.loop_guard and not self.options.synthetic,
                           row_limits=row_limits, loop_settings=self.loop_settings)

    def _generation_state(self, inputs: dict, task: str, params: GenerationParams, max_new: int, prompt_len: int,
                          row_limits: Optional[list[int]] = None):
        """A fresh tracker, the logits processors and the generate() arguments for a batch."""
        from ..engine.generation import generation_state

        attention = inputs["attention_mask"]
        stop_ids, _stop_strings = self._stops()
        tracker = self._new_tracker(params, prompt_len, attention.shape[0], row_limits)
        model_processors = self.logits_processors(task, params, inputs)
        penalty = self.repetition_penalty(params)
        self._facts["repetition_penalty"] = penalty
        processors, gen_kwargs = generation_state(
            attention, prompt_len, tracker, model_processors, penalty=penalty, max_new=max_new,
            exact_length=self.options.synthetic, do_sample=bool(params.do_sample),
            pad_token_id=self.pad_token_id(), stop_ids=stop_ids,
            bos_token_id=self.generation_config_value("bos_token_id"))
        return tracker, processors, gen_kwargs

    def _raw_output(self, ids: list[int], reason: str, params: GenerationParams, input_tokens: int,
                    generate_s: float, preprocess_s: float, extra: dict) -> RawOutput:
        """One page's generated ids (up to its end) as text, with its finish reason."""
        from ..engine.generation import raw_output

        stop_ids, stop_strings = self._stops()
        return raw_output(ids, reason, decode=self.decode, stop_ids=stop_ids, stop_strings=stop_strings,
                          trim_loops=bool(params.loop_guard and not self.options.synthetic),
                          loop_settings=self.loop_settings, input_tokens=input_tokens,
                          generate_s=generate_s, preprocess_s=preprocess_s, extra=extra)

    def static_decoder(self, params: GenerationParams):
        """The chatvlm static decoder for this request, or None for transformers `generate`.

        `BackendOptions.extra["decode"]`: "auto" (default: ours when the model and request
        are supported), "fast" (same, the fallback still recorded), "hf" (always generate).
        The choice and its reason go to describe(): decode = "chatvlm-static" | "hf-generate".
        """
        from .. import decode as fast

        mode = str(self.options.extra.get("decode", "auto")).lower()
        if mode not in ("auto", "fast", "hf"):
            raise ChatVLMError(_("unknown decode mode {mode!r}; use auto, fast or hf").format(mode=mode))
        reason = None
        if mode == "hf":
            reason = "requested (--decode hf)"
        elif getattr(self, "_decode_disabled", None):
            reason = self._decode_disabled
        else:
            reason = fast.unsupported_reason(self.model, do_sample=bool(params.do_sample))
        if reason is not None:
            self._facts["decode"], self._facts["decode_reason"] = fast.HF, reason
            return None
        decoder = getattr(self, "_static_decoder", None)
        if decoder is None or decoder.model is not self.model:
            opts = self.options.extra
            decoder = fast.StaticDecoder(
                self.model, use_graphs=opts.get("decode_graphs"),
                len_bucket=int(opts.get("decode_len_bucket", 256)),
                sync_every=opts.get("decode_sync_every"),
                max_len=int(opts["decode_max_len"]) if opts.get("decode_max_len") else None)
            self._static_decoder = decoder
        self._facts["decode"] = fast.STATIC
        self._facts.pop("decode_reason", None)
        return decoder

    def _to_device(self, inputs) -> dict:
        import torch

        data = dict(inputs)
        for key, value in data.items():
            if isinstance(value, torch.Tensor):
                if value.is_floating_point():
                    data[key] = value.to(self.device, dtype=self.dtype)
                else:
                    data[key] = value.to(self.device)
        return data

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
