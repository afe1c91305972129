"""Our own greedy decode loop for the language model, after the model's normal prefill.

Why: transformers' `generate` spends most of a decode step on per-step overhead (Python,
kernel launches, mask building) and on memory traffic it creates (sdpa's `repeat_kv`
expands the KV heads; a static cache is read whole every step).

How (`StaticDecoder.generate`):

1. **Prefill is the model's own.** `model.generate(..., max_new_tokens=1)` runs the normal
   forward (vision tower, Qwen2/3-VL M-RoPE positions and `rope_deltas`, deepstack, the
   model's own input preparation), applies the logits processors and stopping criteria and
   returns the first token and the prompt's KV cache. A forward pre-hook on the language
   model's rotary module records the position ids the model used.
2. The prompt KV is copied into a preallocated static cache
   `[layers, batch, kv_heads, max_len, head_dim]` (one pool, reused across batches).
3. **Decode steps are ours**, built from the model's own modules (q/k/v/o projections,
   q/k norms where present, RMSNorms, MLP, final norm, lm_head; DeepSeek-MoE layers through
   `moe.StaticMoE`, static shapes, the model's own router) and the model's own rotary
   module (a cos/sin table computed once by calling it). Positions follow the models'
   rule for text after the prompt: next = (largest prompt position of the row) + 1, all
   three M-RoPE sections together (= text position + `rope_deltas`); plain RoPE models
   (Qwen2, Llama) are the 1-section case.
4. **Attention is GQA-aware without repeating K/V**: for one query token, the query heads
   are reshaped to `[batch, kv_heads, groups, head_dim]` and attend, as `groups` queries,
   to `[batch, kv_heads, length, head_dim]` with one `scaled_dot_product_attention` call
   (no `enable_gqa`, no `repeat_kv`; works with every torch version and SDPA backend).
   It **reads only the filled part of the cache**: eager steps slice it to the current
   length; CUDA-graph steps slice it to a fixed length bucket (multiple of `len_bucket`)
   with a key mask that also hides left padding.
5. **CUDA graphs** (CUDA only, `use_graphs`): the step is captured once per
   (batch-size bucket, length bucket) against static input buffers and replayed; the
   graphs stay valid across batches because the cache pool and buffers are persistent.
   All graphs live in one `GraphSet` with its own private memory-pool handle. The set is
   dropped as a whole (never graph by graph) whenever a buffer it reads is reallocated
   (the cache or the RoPE table grows, `release()`), and the next capture mints a fresh
   handle: a handle whose graphs were all freed must never be captured into again (the
   allocator asserts `use_count > 0`). Buffers only grow, by whole buckets, so rebuilds
   are rare. Capture goes through a small `graph_api` seam (`CudaGraphs` on CUDA) so
   the lifecycle is testable on CPU with a fake. On CPU the step runs eagerly.
6. **Every row has its own write slot** (`wpos`), position and key mask, so rows at
   different lengths share a step: `chatvlm.engine` refills a finished row with a new
   prompt (`load_rows`) while the others decode (continuous batching), growing the
   cache without losing what it holds (`grow_pool`).
7. **Finished rows stop paying**: when rows finish (stop token, stop string, loop guard),
   the batch is compacted: active rows move to the front of the pool and the step runs on
   fewer rows (exact count on CPU; the next batch-size bucket on CUDA, padded with
   finished rows). Finish bookkeeping is the backend's own `GenerationTracker`, replayed
   on the host every `sync_every` steps (1 on CPU; 8 on CUDA to avoid a sync per step).
8. **LongRoPE** (Phi-3): transformers picks the factor set from the largest position of a
   forward, plus one (short within `original_max_position_embeddings`, long beyond; the
   same attention scaling for both), and its Phi-3 drops the KV cache and re-runs the whole
   sequence once, when the sequence first outgrows the original context: from then on
   every cached key has the long rotation. The RoPE table holds both sets. The batch path
   does as a batched `generate`: one set for the whole batch (`top_pos`, the batch's
   largest position) and the recompute at the padded width (`_recompute_and_continue`).
   The continuous engine does as each page alone: each row its own set (`top_pos` 0) and
   its own recompute (`chatvlm.engine.continuous`).

If the decoder cannot serve a batch it raises before the batch's decode starts
(`Unsupported` for a request it does not handle); on any error it first frees its cache,
graphs and pool (`release()`), so an out-of-memory error reaches the caller's
split-and-retry with the memory already returned and other errors leave the batch to
`generate`.

Greedy only. Logits processors run eagerly between steps on the growing token buffer
(processors that index rows must offer `select_rows(rows)` for compaction, else the
batch is not compacted). `unsupported_reason(model, ...)` says why a model or a request
must go through `generate` instead (sampling, beams, non-Llama layers, sliding
window, dynamic RoPE, ...); the backend records the choice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .cache import SlotCache
from .graphs import CudaGraphs, GraphSet, _round_up, batch_bucket
from .lm import Unsupported, _uses_mrope, find_lm
from .rope import RopeTables, _rotate_half, next_positions


def select_processor_rows(processors: list, rows: list[int]) -> Optional[list]:
    """Processors restricted to `rows` (after compaction), or None if one cannot be."""
    out = []
    for p in processors:
        inner = getattr(p, "inner", p)
        if hasattr(inner, "select_rows"):
            new_inner = inner.select_rows(rows)
            if inner is p:
                out.append(new_inner)
            else:
                wrapped = type(p).__new__(type(p))
                wrapped.__dict__.update(p.__dict__)
                wrapped.inner = new_inner
                out.append(wrapped)
        elif getattr(inner, "row_independent", False):
            out.append(p)
        else:
            return None
    return out


@dataclass
class DecodeStats:
    prefill_s: float = 0.0
    decode_s: float = 0.0
    steps: int = 0
    row_steps: int = 0             # sum over steps of rows computed
    compactions: int = 0
    graphs_captured: int = 0
    graph_replays: int = 0
    recomputes: int = 0            # LongRoPE: whole-sequence recomputes at the original context


class StaticDecoder(SlotCache, RopeTables):
    """Greedy decode with a static KV cache and our own step (CUDA graphs on CUDA)."""

    def __init__(self, model: nn.Module, *, use_graphs: Optional[bool] = None, len_bucket: int = 256,
                 sync_every: Optional[int] = None, compact: bool = True, bucketed: Optional[bool] = None,
                 graph_api=None, max_len: Optional[int] = None, moe_mode: str = "auto"):
        from .moe import StaticMoE

        self.model = model
        self.max_len = max_len            # longest prompt + new tokens served (None: no limit)
        self.parts = find_lm(model)
        # each layer's feed-forward: the model's dense MLP, or a static-shape MoE
        self.ffn = [StaticMoE(layer.mlp, moe_mode) if i in self.parts.moe_layers else layer.mlp
                    for i, layer in enumerate(self.parts.layers)]
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        on_cuda = self.device.type == "cuda"
        # graphs need CUDA, or an injected graph API (tests run the lifecycle on CPU with a fake)
        can_graph = on_cuda or graph_api is not None
        self.use_graphs = can_graph if use_graphs is None else (bool(use_graphs) and can_graph)
        self.graph_api = graph_api if graph_api is not None else (CudaGraphs(self.device) if on_cuda else None)
        # fixed-length reads (multiple of len_bucket) + key mask: needed by graphs; tests force it on CPU
        self.bucketed = self.use_graphs if bucketed is None else bool(bucketed) or self.use_graphs
        self.len_bucket = int(len_bucket)
        self.sync_every = int(sync_every or (8 if on_cuda else 1))
        self.compact = compact
        self.groups = self.parts.num_heads // self.parts.num_kv_heads
        # persistent pool (grows; graphs are dropped when it does)
        self.k = self.v = None            # [layers, B, kvh, L, hd]
        self.mask = None                  # [B, L] bool: key slot valid
        self.tok = self.pos = None        # [B] long
        self.wpos = None                  # [B] long: each row's cache slot written by the next step
        self.top_pos = None               # [1] long: LongRoPE's batch-wide position (0: per row)
        self.logits = None                # [B, vocab] float32 (graph output)
        self.rope_cos = self.rope_sin = None   # [P, hd]
        self._rope_mrope = None
        self.graph_set: Optional[GraphSet] = None    # the captured graphs and their pool handle
        self.stats = DecodeStats()

    # ------------------------------------------------------------------ buffers
    def _drop_graphs(self) -> None:
        """Drop every graph together with the pool handle they hold (never one without the other)."""
        if self.graph_set is None:
            return
        self.graph_api.synchronize()        # no replay may still be reading what is freed
        self.graph_set = None
        self.graph_api.empty_cache()

    def _buffers(self) -> tuple:
        return tuple(t.data_ptr() for t in (self.k, self.v, self.mask, self.tok, self.pos, self.wpos,
                                            self.top_pos, self.logits, self.rope_cos, self.rope_sin))

    def step(self, b: int, length: int) -> torch.Tensor:
        """One decode step for rows [:b], reading cache slots [:length]; fills self.logits[:b]."""
        pr = self.parts
        h = pr.embed(self.tok[:b].unsqueeze(1))                      # [b, 1, H]
        rope_at = self._rope_index(b)
        cos = self.rope_cos[rope_at].unsqueeze(1).unsqueeze(1)        # [b, 1, 1, hd]
        sin = self.rope_sin[rope_at].unsqueeze(1).unsqueeze(1)
        # each row writes its own slot (rows of a continuous batch are at different lengths)
        at = self.wpos[:b]
        self.mask[:b].scatter_(1, at.view(b, 1), True)
        kv_at = at.view(b, 1, 1, 1).expand(b, pr.num_kv_heads, 1, pr.head_dim)
        key_mask = self.mask[:b, :length].view(b, 1, 1, length)
        nh, kvh, hd = pr.num_heads, pr.num_kv_heads, pr.head_dim
        for i, layer in enumerate(pr.layers):
            attn = layer.self_attn
            x = layer.input_layernorm(h)
            if pr.fused_qkv:
                q, k, v = attn.qkv_proj(x).split([nh * hd, kvh * hd, kvh * hd], dim=-1)
            else:
                q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
            q, k, v = q.view(b, 1, nh, hd), k.view(b, 1, kvh, hd), v.view(b, 1, kvh, hd)
            if pr.qk_norm:
                q, k = attn.q_norm(q), attn.k_norm(k)
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)   # [b, heads, 1, hd]
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            kc, vc = self.k[i, :b], self.v[i, :b]
            kc.scatter_(2, kv_at, k)
            vc.scatter_(2, kv_at, v)
            o = F.scaled_dot_product_attention(
                q.reshape(b, kvh, self.groups, hd), kc[:, :, :length], vc[:, :, :length],
                attn_mask=key_mask, scale=pr.scaling)                     # [b, kvh, groups, hd]
            h = h + attn.o_proj(o.reshape(b, 1, nh * hd))
            h = h + self.ffn[i](layer.post_attention_layernorm(h))
        h = pr.norm(h)
        self.logits[:b].copy_(pr.lm_head(h[:, -1]).float())
        return self.logits[:b]

    def _read_length(self, filled: int) -> int:
        if self.bucketed:
            return min(_round_up(filled, self.len_bucket), self.k.shape[3])
        return filled

    def _run_step(self, b: int, filled: int) -> torch.Tensor:
        length = self._read_length(filled)
        if not self.use_graphs:
            return self.step(b, length)
        key = (b, length)
        if self.graph_set is None:
            self.graph_set = GraphSet(self.graph_api, self._buffers())
        graph = self.graph_set.graphs.get(key)
        if graph is None:
            # Warm-up runs write the same K/V into the same slot as the real step: idempotent.
            graph = self.graph_set.capture(self.graph_api, key, lambda: self.step(b, length), self._buffers())
            self.stats.graphs_captured += 1
        graph.replay()
        self.stats.graph_replays += 1
        return self.logits[:b]

    # ------------------------------------------------------------------ generation
    def _prefill(self, inputs: dict, gen_kwargs: dict):
        captured: dict[str, torch.Tensor] = {}

        def hook(module, args, kwargs):
            ids = kwargs.get("position_ids", args[1] if len(args) > 1 else None)
            if ids is not None and "ids" not in captured:
                captured["ids"] = ids.detach()

        handle = self.parts.rotary.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            gen_kwargs = dict(gen_kwargs)
            config = gen_kwargs["generation_config"]
            config = type(config).from_dict(config.to_dict())
            config.max_new_tokens = 1
            # A minimum length (bench --synthetic) cannot apply to a one-token prefill; the
            # decode loop below generates the full count itself.
            config.min_new_tokens = None
            config.min_length = 0
            config.return_dict_in_generate = True
            gen_kwargs["generation_config"] = config
            out = self.model.generate(**inputs, **gen_kwargs)
        finally:
            handle.remove()
        cache = getattr(out, "cache", None)
        if cache is None:
            cache = getattr(out, "past_key_values", None)
        if cache is None or "ids" not in captured:
            raise Unsupported("prefill returned no cache or no position ids")
        return out.sequences, cache, captured["ids"]

    @torch.inference_mode()
    def generate(self, inputs: dict, gen_kwargs: dict, *, max_new_tokens: int, tracker,
                 processors: Sequence[Callable] = (), pad_token_id: int = 0) -> torch.Tensor:
        """Token ids [batch, prompt_len + n] like `generate` (rows finished early padded).

        Raises Unsupported before the prefill for a request it cannot serve. On any error the
        cache, graphs and pool are freed first, so an out-of-memory error reaches the caller
        with the memory already returned.
        """
        try:
            self._admit(inputs, max_new_tokens)
            return self._generate(inputs, gen_kwargs, max_new_tokens=max_new_tokens, tracker=tracker,
                                  processors=processors, pad_token_id=pad_token_id)
        except BaseException:
            self.release()
            raise

    def _admit(self, inputs: dict, max_new_tokens: int) -> None:
        """Check the request and allocate everything its decode needs, before any model call."""
        input_ids, attention = inputs.get("input_ids"), inputs.get("attention_mask")
        if input_ids is None or input_ids.dim() != 2:
            raise Unsupported("input_ids must be [batch, length]")
        if attention is None or attention.shape != input_ids.shape:
            raise Unsupported("attention_mask missing or not the shape of input_ids")
        if max_new_tokens < 1:
            raise Unsupported(f"max_new_tokens {max_new_tokens} < 1")
        batch, prompt_len = input_ids.shape
        total = prompt_len + max_new_tokens
        if self.max_len is not None and total > self.max_len:
            raise Unsupported(f"prompt + new tokens ({total}) exceed the decoder's cache limit ({self.max_len})")
        if self.parts.window and total > self.parts.window:
            raise Unsupported(f"prompt + new tokens ({total}) exceed the sliding window ({self.parts.window})")
        self._ensure_pool(batch, total)
        # prompt positions never exceed the prompt's token index (M-RoPE compresses them)
        self._ensure_rope(total + 1, _uses_mrope(self.parts))

    def _generate(self, inputs: dict, gen_kwargs: dict, *, max_new_tokens: int, tracker,
                  processors: Sequence[Callable] = (), pad_token_id: int = 0) -> torch.Tensor:
        t0 = time.perf_counter()
        input_ids = inputs["input_ids"]
        attention = inputs["attention_mask"]
        batch, prompt_len = input_ids.shape
        sequences, cache, pos_ids = self._prefill(inputs, gen_kwargs)
        first = sequences[:, prompt_len:prompt_len + 1]
        out = torch.full((batch, prompt_len + max_new_tokens), int(pad_token_id), dtype=torch.long)
        out[:, :prompt_len + 1] = sequences[:, :prompt_len + 1].cpu()
        if max_new_tokens <= 1 or all(e is not None for e in tracker.ends):
            del cache
            self.stats.prefill_s += time.perf_counter() - t0
            return out[:, :sequences.shape[1]]

        next_pos = next_positions(pos_ids, attention).to(self.device)       # [batch]
        mrope = pos_ids.dim() == 3
        self._ensure_pool(batch, prompt_len + max_new_tokens)
        self._ensure_rope(int(next_pos.max()) + max_new_tokens + 1, mrope)
        self.load_rows(list(range(batch)), cache, attention, first[:, 0], next_pos)
        del cache
        self.top_pos.copy_(next_pos.max().view(1))
        seq = None
        if processors:
            seq = torch.full((batch, prompt_len + max_new_tokens), int(pad_token_id), dtype=torch.long,
                             device=self.device)
            seq[:, :prompt_len + 1].copy_(sequences[:, :prompt_len + 1])
        processors = list(processors)
        base_processors = list(processors)
        can_compact = self.compact and (not processors or select_processor_rows(processors, [0]) is not None)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t1 = time.perf_counter()
        self.stats.prefill_s += t1 - t0

        # slot -> original row; `live[slot]` False for graph-bucket padding copies
        rows, live = list(range(batch)), [True] * batch
        b = batch_bucket(batch) if self.use_graphs else batch
        if b > batch:
            src = list(range(batch)) + [0] * (b - batch)
            self._move(src, b)
            rows, live = src, live + [False] * (b - batch)
            if seq is not None:
                seq = seq[torch.tensor(src, device=seq.device)]
            if processors:
                processors = select_processor_rows(base_processors, src)
        produced = 1                     # tokens in `out` per row so far
        pending: list[torch.Tensor] = []
        recompute_at = self._longrope_recompute_slot(prompt_len)
        restart = False

        def flush() -> bool:
            """Pending tokens into `out`, through the tracker; True when every row is done."""
            nonlocal produced
            chunk = torch.stack(pending, dim=1).cpu()   # [b, k]
            start = produced - len(pending)
            pending.clear()
            for j in range(chunk.shape[1]):
                col = prompt_len + start + j
                for slot, row in enumerate(rows):
                    if live[slot] and tracker.ends[row] is None:
                        out[row, col] = chunk[slot, j]
                done = tracker(out[:, :col + 1])
                if bool(done.all()):
                    produced = start + j + 1
                    return True
            return False

        while produced < max_new_tokens:
            if recompute_at is not None and prompt_len + produced - 1 == recompute_at:
                restart = not (pending and flush())
                break
            filled = prompt_len + produced                 # slots valid after this step's write
            logits = self._run_step(b, filled)
            self.stats.steps += 1
            self.stats.row_steps += b
            if processors:
                logits = logits.clone()
                for proc in processors:
                    logits = proc(seq[:, :prompt_len + produced], logits)
            nxt = logits.argmax(dim=-1)
            self.tok[:b].copy_(nxt)
            if seq is not None:
                seq[:, prompt_len + produced].copy_(nxt)
            self.pos[:b] += 1
            self.top_pos += 1
            self.wpos[:b] += 1
            pending.append(nxt)
            produced += 1
            if len(pending) >= self.sync_every or produced >= max_new_tokens:
                if flush():
                    break
                if can_compact:
                    b, rows, live, seq, processors = self._maybe_compact(
                        b, rows, live, seq, processors, base_processors, tracker)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.stats.decode_s += time.perf_counter() - t1
        if restart:
            return self._recompute_and_continue(inputs, gen_kwargs, out[:, :prompt_len + produced],
                                                max_new_tokens - produced, tracker, base_processors, pad_token_id)
        return out[:, :prompt_len + produced]

    def _longrope_recompute_slot(self, prompt_len: int) -> Optional[int]:
        """The cache slot at which transformers' Phi-3 drops its KV cache and recomputes the whole
        sequence (the sequence first outgrows the original context: from then on every key has
        the long RoPE factors); None when that cannot happen in this decode."""
        original = self.parts.longrope_original
        if not original or prompt_len > original:
            return None              # no LongRoPE, or the prefill already used the long factors
        return original

    def _recompute_and_continue(self, inputs, gen_kwargs, sequences, max_new_tokens, tracker, processors,
                                pad_token_id):
        """As transformers' Phi-3 at the crossing: the model's own prefill over the prompt and the
        tokens so far (finished rows padded, as generate pads them), then our decode on."""
        cont = dict(inputs)
        added = sequences.shape[1] - inputs["input_ids"].shape[1]
        cont["input_ids"] = sequences.to(inputs["input_ids"].device)
        mask = inputs["attention_mask"]
        cont["attention_mask"] = torch.cat([mask, mask.new_ones(mask.shape[0], added)], dim=1)
        self.stats.recomputes += 1
        return self._generate(cont, gen_kwargs, max_new_tokens=max_new_tokens, tracker=tracker,
                              processors=processors, pad_token_id=pad_token_id)

    def _maybe_compact(self, b, rows, live, seq, processors, base_processors, tracker):
        active = [s for s in range(b) if live[s] and tracker.ends[rows[s]] is None]
        if not active:
            return b, rows, live, seq, processors
        target = batch_bucket(len(active)) if self.use_graphs else len(active)
        if target >= b:
            return b, rows, live, seq, processors
        src = active + [active[0]] * (target - len(active))
        self._move(src, target)
        if seq is not None:
            seq = seq[torch.tensor(src, device=seq.device)]
        if processors:
            processors = select_processor_rows(base_processors, [rows[s] for s in src])
        new_rows = [rows[s] for s in src]
        new_live = [True] * len(active) + [False] * (target - len(active))
        self.stats.compactions += 1
        return target, new_rows, new_live, seq, processors

    def release(self) -> None:
        """Free the cache, the captured graphs and their pool (all come back on the next batch)."""
        self._drop_graphs()
        self.k = self.v = self.mask = self.tok = self.pos = self.wpos = self.top_pos = self.logits = None
        self.rope_cos = self.rope_sin = None
        self._rope_mrope = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def facts(self) -> dict:
        s = self.stats
        return {"decode_graphs": self.use_graphs, "decode_len_bucket": self.len_bucket if self.bucketed else None,
                "decode_steps": s.steps, "decode_row_steps": s.row_steps, "decode_compactions": s.compactions,
                "decode_graphs_captured": s.graphs_captured, "decode_recomputes": s.recomputes,
                "decode_prefill_s": round(s.prefill_s, 4),
                "decode_loop_s": round(s.decode_s, 4)}
