"""Static KV cache with one length per row: rollback is setting a length (gpt-fast style).

Boundary: the cache knows shapes and lengths, nothing about models or speculation.

Rows: a forward over B rows uses slots [row0, row0 + B) (the whole live batch, or one joining row
during its prefill); the engine keeps live rows packed at the front (``move_row`` when one
finishes), so reads and writes are slices, never gathers.

Invariants
----------
* ``k[layer][b, :, :lengths[b]]`` holds the keys of exactly the tokens row ``b`` has seen; entries
  past ``lengths[b]`` are garbage and never attended to (the attention mask stops at the row's own
  positions), so rolling back never has to clear memory.
* ``lengths`` lives on the host: the engine needs the accepted counts on the host once per
  speculative step anyway (control flow depends on them), so keeping them there costs no extra sync.
* ``capacity = max_seq_len + slack``: a ragged forward pads short rows up to the longest one, and
  the padding is written past the row's real tokens (clamped into the slack, which real tokens
  never reach), so those writes stay in bounds and never touch real entries.
"""

from __future__ import annotations

import torch

PAD_SLACK = 64  # positions past max_seq_len that only padding writes land in


class KVCache:
    def __init__(self, n_layers: int, batch_size: int, n_kv_heads: int, head_dim: int, max_seq_len: int,
                 dtype: torch.dtype, device: torch.device | str = "cpu"):
        if batch_size <= 0 or max_seq_len <= 0:
            raise ValueError("batch_size and max_seq_len must be positive")
        self.batch_size = batch_size
        self.max_seq_len = max_seq_len
        self.capacity = max_seq_len + PAD_SLACK
        shape = (batch_size, n_kv_heads, self.capacity, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.lengths: list[int] = [0] * batch_size

    # ------------------------------------------------------------------ bookkeeping
    def rollback(self, row: int, length: int) -> None:
        """Forget everything row ``row`` saw after its first ``length`` tokens."""
        if not 0 <= length <= self.lengths[row]:
            raise ValueError(f"rollback of row {row} to {length}, but it holds {self.lengths[row]} tokens")
        self.lengths[row] = length

    def reset(self, row: int | None = None) -> None:
        if row is None:
            self.lengths = [0] * self.batch_size
        else:
            self.lengths[row] = 0

    def move_row(self, src: int, dst: int) -> None:
        """Copy row ``src`` into slot ``dst`` (batch compaction when a row finishes)."""
        n = self.lengths[src]
        for k, v in zip(self.k, self.v):
            k[dst, :, :n] = k[src, :, :n]
            v[dst, :, :n] = v[src, :, :n]
        self.lengths[dst] = n

    def copy_row_from(self, other: "KVCache", row: int, n: int) -> None:
        """Take the first ``n`` positions of ``other``'s row ``row`` as this cache's row (same layout:
        layers, kv heads, head_dim, dtype). Used to seed a quantized copy of a model with the
        prompt keys/values its full-precision twin already computed."""
        if (len(self.k), self.k[0].shape[1:2] + self.k[0].shape[3:], self.k[0].dtype) != \
                (len(other.k), other.k[0].shape[1:2] + other.k[0].shape[3:], other.k[0].dtype):
            raise ValueError("copy_row_from needs caches of the same layers, kv heads, head_dim and dtype")
        if not 0 <= n <= other.lengths[row]:
            raise ValueError(f"row {row} of the source holds {other.lengths[row]} tokens, asked for {n}")
        for k, v, ok, ov in zip(self.k, self.v, other.k, other.v):
            k[row, :, :n] = ok[row, :, :n]
            v[row, :, :n] = ov[row, :, :n]
        self.lengths[row] = n

    def check_room(self, row0: int, n_new: list[int]) -> None:
        """Raise if appending n_new[i] tokens to row row0 + i would pass the context length."""
        for b, n in enumerate(n_new, row0):
            if self.lengths[b] + n > self.max_seq_len:
                raise ValueError(f"row {b}: {self.lengths[b]} + {n} tokens exceed the context of "
                                 f"{self.max_seq_len}")

    # ------------------------------------------------------------------ per-layer writes
    def write(self, layer: int, row0: int, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
              start: int | None) -> None:
        """Store new keys/values.

        Rows [row0, row0 + B). k, v: [B, n_kv_heads, T, head_dim]; positions: [B, T] absolute positions.
        ``start`` is the common first position when every row starts at the same length (a plain
        slice write, the decode fast path); ``None`` means rows differ and we scatter per row.
        """
        B, T = k.shape[0], k.shape[2]
        if start is not None:
            self.k[layer][row0:row0 + B, :, start:start + T] = k
            self.v[layer][row0:row0 + B, :, start:start + T] = v
        else:
            rows = torch.arange(row0, row0 + B, device=k.device)[:, None]  # [B, 1]
            # Advanced indices on dims 0 and 2 move to the front: target view is [B, T, H, D].
            self.k[layer][rows, :, positions] = k.transpose(1, 2)
            self.v[layer][rows, :, positions] = v.transpose(1, 2)

    def view(self, layer: int, row0: int, rows: int, n_keys: int) -> tuple[torch.Tensor, torch.Tensor]:
        """First ``n_keys`` positions of rows [row0, row0 + rows): [rows, n_kv_heads, n_keys, head_dim]."""
        return self.k[layer][row0:row0 + rows, :, :n_keys], self.v[layer][row0:row0 + rows, :, :n_keys]
