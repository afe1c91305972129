"""Mixture-of-experts feed-forward for the static decoder's step (DeepSeek-MoE).

The models' own MoE forward finds the experts a batch hit (`nonzero`, `bincount().tolist()`)
and runs them in a Python loop: a host sync and data-dependent shapes at every layer, so a
decode step can neither be captured as a CUDA graph nor avoid ~64 small kernel launches.
`StaticMoE` computes the same function with static shapes:

- **routing** is the model's own router module, called as is (fp32 softmax, greedy or
  group-limited top-k, `norm_topk_prob`, `routed_scaling_factor`): same experts, same weights;
- **gathered** (very few rows, `3 * rows * top_k <= experts`): each (row, k) pair's expert
  weights are gathered and applied with one batched matmul per projection. The gather copies
  them (read, write, read again by the matmul), so it beats reading every expert once only
  while the chosen copies are under a third of all experts (DeepSeek-OCR: 1-3 rows);
- **dense** (more rows): every row goes through every expert, weighted by a `[rows, experts]`
  matrix that is zero outside the row's top-k. At decode batch sizes the step is bound by
  reading the weights, which this reads exactly once; the extra FLOPs are cheap;
- the **shared experts** are the model's own dense MLP, added to the result.

Expert weights are used as one stacked tensor per projection, `gate_up [E, 2I, H]` (gate
rows, then up rows) and `down [E, H, I]`: transformers' DeepSeek-OCR-2 stores them so; for
a `ModuleList` of expert MLPs (our DeepSeek-OCR port) the weights are moved once into such
tensors and each expert's Linear weights become views of them (no second copy in memory;
the model's own forward is unchanged).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

EXPERT_MLP = {"gate_proj", "up_proj", "down_proj"}


def _children(module: nn.Module) -> set[str]:
    return {name for name, _ in module.named_children()}


def moe_unsupported(mlp: nn.Module) -> Optional[str]:
    """None when `mlp` is a MoE block StaticMoE handles, else why not."""
    names = _children(mlp)
    if not {"gate", "experts"} <= names or names - {"gate", "experts", "shared_experts"}:
        return f"{type(mlp).__name__} is neither a dense gated MLP nor a router + experts MoE"
    experts = mlp.experts
    if isinstance(experts, nn.ModuleList):
        for e in experts:
            if not EXPERT_MLP <= _children(e) or any(getattr(e, n).bias is not None for n in EXPERT_MLP):
                return f"expert {type(e).__name__} is not a bias-free gated MLP"
    elif not (isinstance(getattr(experts, "gate_up_proj", None), torch.Tensor)
              and isinstance(getattr(experts, "down_proj", None), torch.Tensor)):
        return f"experts {type(experts).__name__} have no stacked gate_up_proj/down_proj"
    elif getattr(experts, "has_bias", False) or hasattr(experts, "gate_up_proj_bias"):
        return "experts with biases"
    shared = getattr(mlp, "shared_experts", None)
    if shared is not None and not EXPERT_MLP <= _children(shared):
        return f"shared experts {type(shared).__name__} are not a gated MLP"
    return None


def _stack_expert_weights(experts: nn.ModuleList) -> tuple[torch.Tensor, torch.Tensor]:
    """Move a ModuleList of expert MLPs into stacked tensors; the experts keep views of them."""
    first = experts[0]
    inter = first.gate_proj.out_features
    stacked = getattr(experts, "_chatvlm_stacked", None)
    if stacked is not None and stacked[0].data_ptr() == first.gate_proj.weight.data_ptr():
        return stacked                                      # already moved (a second decoder)
    with torch.no_grad():
        gate_up = torch.stack([torch.cat([e.gate_proj.weight, e.up_proj.weight]) for e in experts])
        down = torch.stack([e.down_proj.weight for e in experts])
        for i, e in enumerate(experts):
            e.gate_proj.weight.data = gate_up[i, :inter]
            e.up_proj.weight.data = gate_up[i, inter:]
            e.down_proj.weight.data = down[i]
    experts._chatvlm_stacked = (gate_up, down)
    return gate_up, down


class StaticMoE:
    """A MoE block's forward with static shapes: `moe(x)` for x [..., hidden]."""

    def __init__(self, mlp: nn.Module, mode: str = "auto"):
        reason = moe_unsupported(mlp)
        if reason:
            raise ValueError(reason)
        if mode not in ("auto", "gather", "dense"):
            raise ValueError(f"unknown MoE mode {mode!r}")
        self.router = mlp.gate
        self.shared = getattr(mlp, "shared_experts", None)
        experts = mlp.experts
        if isinstance(experts, nn.ModuleList):
            self.gate_up, self.down = _stack_expert_weights(experts)
            self.act = experts[0].act_fn
        else:
            self.gate_up, self.down = experts.gate_up_proj, experts.down_proj
            self.act = experts.act_fn
        self.num_experts, self.hidden = self.gate_up.shape[0], self.gate_up.shape[2]
        self.inter = self.down.shape[2]
        self.mode = mode

    def route(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(expert ids [rows, k] long, weights [rows, k] float) from the model's own router."""
        out = self.router(flat)
        out = out if isinstance(out, (tuple, list)) else (out,)
        idx = next((t for t in out if isinstance(t, torch.Tensor) and not t.is_floating_point()), None)
        if idx is None:
            raise ValueError(f"router {type(self.router).__name__} returned no expert ids")
        weights = next(t for t in out if isinstance(t, torch.Tensor) and t.is_floating_point()
                       and t.shape == idx.shape)
        return idx, weights

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.hidden)
        idx, weights = self.route(flat)
        rows, top_k = idx.shape
        gather = self.mode == "gather" or (self.mode == "auto" and 3 * rows * top_k <= self.num_experts)
        routed = self._gathered(flat, idx, weights) if gather else self._dense(flat, idx, weights)
        out = routed.to(x.dtype).reshape(x.shape)
        if self.shared is not None:
            out = out + self.shared(x)
        return out

    def _gathered(self, flat, idx, weights):
        """Each (row, k) pair through its own expert: one bmm per projection on gathered weights."""
        rows, top_k = idx.shape
        pick = idx.reshape(-1)                                               # [rows*k]
        xs = flat.repeat_interleave(top_k, dim=0).unsqueeze(-1)              # [rows*k, H, 1]
        gate, up = torch.bmm(self.gate_up[pick], xs).squeeze(-1).chunk(2, dim=-1)
        h = (self.act(gate) * up).unsqueeze(-1)                              # [rows*k, I, 1]
        y = torch.bmm(self.down[pick], h).squeeze(-1)                        # [rows*k, H]
        y = y.float() * weights.reshape(-1, 1).float()
        return y.view(rows, top_k, -1).sum(dim=1)

    def _dense(self, flat, idx, weights):
        """Every row through every expert, weighted by the router (zero outside the top-k)."""
        rows = flat.shape[0]
        dense_w = torch.zeros(rows, self.num_experts, dtype=torch.float32, device=flat.device)
        dense_w.scatter_(1, idx, weights.float())
        gu = F.linear(flat, self.gate_up.reshape(-1, self.hidden))           # [rows, E*2I]
        gate, up = gu.view(rows, self.num_experts, 2, self.inter).unbind(dim=2)
        h = (self.act(gate) * up).transpose(0, 1)                            # [E, rows, I]
        y = torch.bmm(h, self.down.transpose(1, 2))                          # [E, rows, H]
        return (y.float() * dense_w.t().unsqueeze(-1)).sum(dim=0)
