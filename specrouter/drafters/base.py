"""Small helpers shared by the levels of a chain.

Row protocol (shared by every level, the routers and the length policies): live rows are slots
[0, B) packed at the front; ``add_row(B)`` opens slot B (continuous batching admits requests
between steps), ``remove_row(b, last)`` retires one by moving the last live row into its slot.
"""

from __future__ import annotations

import torch


def pad_rows(rows: list[list[int]], pad: int = 0, device: str | torch.device = "cpu") -> torch.Tensor:
    """Ragged token lists -> [B, max_len] int64, right-padded."""
    width = max(1, max(len(r) for r in rows))
    out = torch.full((len(rows), width), pad, dtype=torch.long)
    for b, r in enumerate(rows):
        if r:
            out[b, :len(r)] = torch.tensor(r, dtype=torch.long)
    return out.to(device)
