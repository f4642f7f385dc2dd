"""Tokenizer and chat template: the only place text turns into ids and back.

Boundary: the engine works on ids only; the CLI, bench and server use this module around it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


class Tokenizer:
    def __init__(self, hf_tokenizer, name: str, extra_eos: tuple[int, ...] = ()):
        self.hf = hf_tokenizer
        self.name = name
        eos = {i for i in (hf_tokenizer.eos_token_id, *extra_eos) if i is not None}
        # Chat models end a turn with an end-of-turn token that is often not the tokenizer's EOS.
        for tok in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "</s>"):
            tid = hf_tokenizer.convert_tokens_to_ids(tok) if tok in hf_tokenizer.get_vocab() else None
            if tid is not None:
                eos.add(tid)
        self.eos_ids: frozenset[int] = frozenset(eos)

    @classmethod
    def from_folder(cls, folder: str | Path, name: str | None = None) -> "Tokenizer":
        from transformers import AutoTokenizer

        folder = Path(folder)
        extra: tuple[int, ...] = ()
        gen_cfg = folder / "generation_config.json"
        if gen_cfg.exists():
            e = json.loads(gen_cfg.read_text()).get("eos_token_id")
            extra = tuple(e) if isinstance(e, list) else ((e,) if e is not None else ())
        return cls(AutoTokenizer.from_pretrained(str(folder)), name or folder.name, extra)

    def __len__(self) -> int:
        return len(self.hf)

    def fingerprint(self) -> str:
        """Hash of the token -> id map: two tokenizers with equal fingerprints tokenize alike."""
        items = sorted(self.hf.get_vocab().items())
        return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(ids, skip_special_tokens=True)

    def chat(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        if not messages:
            raise ValueError("messages must not be empty")
        if getattr(self.hf, "chat_template", None) is None:
            raise ValueError(f"tokenizer {self.name!r} has no chat template; send a plain prompt instead")
        out = self.hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
        if isinstance(out, dict) or hasattr(out, "keys"):
            out = out["input_ids"]
        return list(out)


class StreamDecoder:
    """Incremental detokenization: feed ids, get only the new, complete text."""

    def __init__(self, tokenizer: Tokenizer):
        self.tok = tokenizer
        self.ids: list[int] = []
        self.emitted = 0

    def push(self, ids: list[int]) -> str:
        self.ids.extend(ids)
        text = self.tok.decode(self.ids)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
            return ""
        new, self.emitted = text[self.emitted:], len(text)
        return new
