"""The static decoder's names at their former import path. They live in `chatvlm.engine`:
`decoder` (StaticDecoder), `lm` (find_lm, unsupported_reason, Unsupported, STATIC, HF),
`graphs` (CudaGraphs, GraphSet, batch_bucket), `rope` (next_positions), `cache`, `moe`."""

from .engine.decoder import DecodeStats, StaticDecoder, select_processor_rows
from .engine.graphs import BATCH_BUCKETS, CudaGraphs, GraphSet, batch_bucket
from .engine.lm import HF, STATIC, LMParts, Unsupported, find_lm, unsupported_reason
from .engine.rope import next_positions

__all__ = ["DecodeStats", "StaticDecoder", "select_processor_rows", "BATCH_BUCKETS", "CudaGraphs", "GraphSet",
           "batch_bucket", "HF", "STATIC", "LMParts", "Unsupported", "find_lm", "unsupported_reason",
           "next_positions"]
