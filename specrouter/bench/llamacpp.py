"""llama.cpp as a ``specrouter bench`` baseline: the target's GGUF decoded by llama.cpp.

Optional: needs ``llama-cpp-python`` (``pip install 'specrouter[llamacpp]'``; it compiles
llama.cpp from source, about 5 minutes on 2 cores). Boundary: a bench system like ours, ids in,
ids out: prompts are tokenized by our tokenizer (same chat template) and handed to llama.cpp as
token ids, so both decode the same prompt tokens. Greedy (temperature 0, no penalties), the same
token budget, stop at the same EOS ids (none under ``bench --ignore-eos``), ``n_threads`` = torch's
thread count, and a fresh KV cache per prompt (llama-cpp-python would otherwise reuse the common
chat-template prefix, a prefill saving our runtime does not get). One llama.cpp forward per token:
"steps" = tokens.

llama.cpp computes with the GGUF's own quantized blocks (Q4_K_M for the default models) while our
levels use the dequantized weights in bf16 or re-quantized int8/int4, so its greedy text can
differ from the target's; the bench's match column shows how often.
"""

from __future__ import annotations

from pathlib import Path

from ..model.loader import parse_level
from ..model.registry import find_default, model_path


class LlamaCppUnavailable(RuntimeError):
    """The baseline cannot run here (not installed, or the target has no GGUF); bench skips it."""


def target_gguf(level: str) -> Path:
    """The GGUF file behind a chain's target level (any ``@quant`` suffix is ignored: the file is
    what llama.cpp runs)."""
    spec, _ = parse_level(level)
    default = find_default(spec)
    path = model_path(default) if default is not None else Path(spec).expanduser()
    if path.suffix.lower() != ".gguf":
        raise LlamaCppUnavailable(f"the target {level!r} is not a GGUF file or a default model")
    if not path.exists():
        raise LlamaCppUnavailable(f"{path} does not exist (run: specrouter pull {spec})")
    return path


class LlamaCppBaseline:
    """Callable bench system: (list of prompt ids, max_new) -> list of (tokens, steps)."""

    def __init__(self, gguf: Path, n_threads: int, eos_ids, n_ctx: int = 4096):
        try:
            from llama_cpp import Llama
        except ImportError:
            raise LlamaCppUnavailable("llama-cpp-python is not installed: pip install 'specrouter[llamacpp]' "
                                      "(builds llama.cpp from source, ~5 minutes)") from None
        self.eos_ids = frozenset(eos_ids)
        self.llm = Llama(model_path=str(gguf), n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads,
                         verbose=False)

    def generate(self, ids: list[int], max_new: int) -> list[int]:
        if len(ids) + max_new > self.llm.n_ctx():
            raise ValueError(f"prompt of {len(ids)} tokens + {max_new} new exceeds llama.cpp's context "
                             f"of {self.llm.n_ctx()}")
        self.llm.reset()  # no prefix reuse across prompts
        out: list[int] = []
        for tok in self.llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
            out.append(int(tok))
            if tok in self.eos_ids or len(out) >= max_new:
                break
        return out

    def __call__(self, prompts: list[list[int]], max_new: int) -> list[tuple[list[int], int]]:
        outs = [self.generate(ids, max_new) for ids in prompts]
        return [(o, len(o)) for o in outs]
