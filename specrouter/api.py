"""User-facing API: a chain spec and text in, text and statistics out.

    sr = SpecRouter.from_chain("0.5b>1.5b")              # draft 0.5B, target 1.5B
    out = sr.generate(["def fib(n):"], SamplingParams(max_new_tokens=64))

Chain syntax: levels joined by ``>``, lowest (drafter) first, target last. A level is ``ngram``,
a default model name (``0.5b``, ``qwen2.5-coder-1.5b``…), an HF folder or a GGUF file. A single
level is the target alone.

Boundary: this layer owns text (tokenizer, chat template, stop strings); the engine owns ids.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from .drafters.model_drafter import ModelDrafter
from .drafters.ngram import NgramDrafter
from .engine import Generation, SpeculativeEngine
from .model.loader import LoadedModel, check_same_vocab, load_model
from .sampling import SamplingParams
from .speclen import parse_length_policy
from .tokenizer import Tokenizer


def parse_chain(chain: str) -> list[str]:
    levels = [x.strip() for x in chain.split(">")]
    if not chain.strip() or any(not x for x in levels):
        raise ValueError(f"invalid chain {chain!r}: expected levels joined by '>', e.g. 'ngram>0.5b>1.5b'")
    if levels[-1] == "ngram":
        raise ValueError("the last level of a chain is the target and must be a model, not 'ngram'")
    if "ngram" in levels[1:]:
        raise ValueError("'ngram' can only be the lowest level of a chain")
    return levels


@dataclass
class Output:
    text: str
    tokens: list[int]
    finish_reason: str
    prompt_tokens: int
    stats: object  # GenerationStats

    @property
    def mean_accepted_length(self) -> float:
        return self.stats.mean_accepted_length(len(self.tokens))


class SpecRouter:
    def __init__(self, models: dict[str, LoadedModel], levels: list[str], spec_len: str = "heuristic",
                 max_seq_len: int = 4096, max_batch: int = 8, ngram: tuple[int, int] = (3, 2)):
        self.models, self.levels = models, levels
        self.target = models[levels[-1]]
        self.tokenizer: Tokenizer = self.target.tokenizer
        chain_models = [models[x] for x in levels if x != "ngram"]
        check_same_vocab(chain_models)
        vocab = min(m.args.vocab_size for m in chain_models)
        self.max_seq_len = min(max_seq_len, *(m.args.max_position for m in chain_models))
        drafter = None
        if len(levels) == 2:
            low = levels[0]
            drafter = (NgramDrafter(vocab, *ngram) if low == "ngram" else
                       ModelDrafter(models[low].model, models[low].name, vocab, self.max_seq_len))
        elif len(levels) > 2:
            raise NotImplementedError("chains of more than two levels are not supported by this engine yet")
        policy = parse_length_policy(spec_len if drafter else "fixed:0")
        self.engine = SpeculativeEngine(self.target.model, drafter, policy, self.tokenizer.eos_ids, vocab,
                                        self.max_seq_len, max_batch)

    @classmethod
    def from_chain(cls, chain: str, dtype: str = "auto", device: str = "cpu", progress: bool = True,
                   **kw) -> "SpecRouter":
        levels = parse_chain(chain)
        models = {}
        for name in levels:
            if name != "ngram" and name not in models:
                if progress:
                    print(f"loading {name} ({dtype}) ...", file=sys.stderr, flush=True)
                models[name] = load_model(name, dtype=dtype, device=device, progress=progress)
        return cls(models, levels, **kw)

    # ------------------------------------------------------------------ prompts
    def encode_prompt(self, prompt: str | list[dict], chat: bool = True) -> list[int]:
        """A string is sent as one user message when ``chat``; a list of messages always is a chat."""
        if isinstance(prompt, list):
            return self.tokenizer.chat(prompt)
        if chat and getattr(self.tokenizer.hf, "chat_template", None) is not None:
            return self.tokenizer.chat([{"role": "user", "content": prompt}])
        return self.tokenizer.encode(prompt)

    def stop_check(self, stop: tuple[str, ...]):
        """Engine callback for stop strings: decodes only a tail of the generated ids."""
        if not stop:
            return None
        window = max(16, 4 * max(len(s) for s in stop))

        def check(ids: list[int]) -> bool:
            tail = self.tokenizer.decode(ids[-window:])
            return any(s in tail for s in stop)
        return check

    def finish_text(self, tokens: list[int], stop: tuple[str, ...]) -> str:
        text = self.tokenizer.decode(tokens)
        cut = min((text.find(s) for s in stop if s in text), default=-1)
        return text[:cut] if cut >= 0 else text

    def generate_ids(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams],
                     on_tokens=None) -> list[Generation]:
        plist = params if isinstance(params, list) else [params] * len(prompts)
        return self.engine.generate(prompts, plist, [self.stop_check(p.stop) for p in plist], on_tokens)

    def generate(self, prompts: list[str | list[dict]], params: SamplingParams | list[SamplingParams],
                 chat: bool = True, on_tokens=None) -> list[Output]:
        ids = [self.encode_prompt(p, chat) for p in prompts]
        plist = params if isinstance(params, list) else [params] * len(prompts)
        gens = self.generate_ids(ids, plist, on_tokens)
        return [Output(self.finish_text(g.tokens, sp.stop), g.tokens, g.finish_reason, len(g.prompt), g.stats)
                for g, sp in zip(gens, plist)]
