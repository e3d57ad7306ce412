"""The export's description, read from its safetensors header alone: no torch, no weights.

A safetensors file starts with the length of its JSON header (8 bytes, little-endian), then the
header, whose `__metadata__` holds the description (`annotator.tagging.export`). Reading it
this way lets `annotate` learn a model's sentence rules and start its splitter before torch
has even loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: the safetensors header key holding the description
META_KEY = "annotator_export"
FORMAT_VERSION = 1
#: a header larger than this is no export of ours (safetensors' own limit is 100 MB)
MAX_HEADER_BYTES = 100_000_000


def read_description(path: str | Path) -> dict[str, Any] | None:
    """The export's description; None where the file is no annotator export."""
    with open(path, "rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        if not 0 < size <= MAX_HEADER_BYTES:
            return None
        try:
            header = json.loads(handle.read(size))
        except ValueError:
            return None
    text = (header.get("__metadata__") or {}).get(META_KEY) if isinstance(header, dict) else None
    return json.loads(text) if text else None
