"""Reading a torch file that should hold a checkpoint: the one place such a file is opened and
its kind checked, so every kind of checkpoint fails the same way, naming the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def read_checkpoint(
    path: str | Path, what: str, error: type[Exception], checkpoint_format: str | None = None, map_location: Any = "cpu"
) -> dict:
    """The dict saved at ``path``, read with ``weights_only`` (tensors and plain containers, never
    code). ``checkpoint_format``: the value its ``format`` key must have. A missing, unreadable
    or foreign file raises ``error``, naming the file as ``what``."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as problem:
        raise error(
            f"{what} {path} is not a readable torch file, so it cannot be read as a checkpoint (truncated or corrupt?): {problem}"
        ) from None
    if not isinstance(checkpoint, dict) or (checkpoint_format is not None and checkpoint.get("format") != checkpoint_format):
        kind = f"neurosam {what} ({checkpoint_format})" if checkpoint_format else what
        raise error(f"{path} is not a {kind}")
    return checkpoint
