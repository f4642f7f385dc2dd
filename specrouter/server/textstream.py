"""Streaming text for one request: deltas that never show a stop string and add up to the final text.

Guarantees, for the ids of one generation pushed in order and the final text computed the
non-streaming way (``SpecRouter.finish_text``: decode everything, cut at the first stop string):
  * no emitted delta contains any part of a stop string that later completes (text that could be the
    start of a stop string is held back until it no longer can be);
  * ``"".join(deltas) + finish(final) == final``.

Boundary: text only; ids come from the engine, the final text from ``SpecRouter``.
"""

from __future__ import annotations

import logging

from ..tokenizer import StreamDecoder, Tokenizer

log = logging.getLogger("specrouter.server")


class TextStream:
    def __init__(self, tokenizer: Tokenizer, stop: tuple[str, ...] = ()):
        self.decoder = StreamDecoder(tokenizer)
        self.stop = stop
        self.text = ""  # complete characters decoded so far
        self.sent = 0  # characters of self.text already emitted

    def push(self, ids: list[int]) -> str:
        """New committed ids -> the text that is now safe to send (possibly "")."""
        self.text += self.decoder.push(ids)
        end = len(self.text)
        if self.stop:
            # A stop string never starts inside the sent text (it would have been held), so search after it.
            hits = [i for s in self.stop if (i := self.text.find(s, self.sent)) >= 0]
            end = min(hits) if hits else end - self._held()
        if end <= self.sent:
            return ""
        out, self.sent = self.text[self.sent:end], end
        return out

    def finish(self, final: str) -> str:
        """The rest of ``final`` after what was sent (held-back text, a trailing partial character)."""
        if not final.startswith(self.text[:self.sent]):  # only a tokenizer whose decode is not prefix-stable
            log.warning("streamed text is not a prefix of the final text; the stream will differ from it")
        return final[self.sent:]

    def _held(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of some stop string."""
        tail = self.text[self.sent:]
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(tail)), best, -1):
                if tail.endswith(s[:n]):
                    best = n
                    break
        return best
