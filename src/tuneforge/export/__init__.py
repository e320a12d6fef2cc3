"""After training: merge an adapter into its base, convert to GGUF, write an Ollama Modelfile.

merge.py (adapter + base -> Hugging Face folder), gguf.py (Hugging Face folder -> one .gguf file),
ollama.py (.gguf -> Modelfile), pipeline.py (a run folder -> all of these in one go).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from tuneforge.errors import UserError
from tuneforge.io import check_writable, remove_stale_temporaries

# Merge choices, here rather than in merge.py so the CLI lists them without merge's imports (pydantic, peft).
MERGE_DTYPES = ("bf16", "fp16", "fp32")
ONTO = ("16bit", "dequantized")  # the bases a (Q)LoRA adapter can be merged onto


def refuse_existing(path: Path, force: bool, folder: bool = False) -> None:
    """Stop before any work when `path` cannot be written (as a folder, or a file) or exists without --force.

    First clear what a killed earlier write of `path` left beside it (temporaries; a `.old` is put back).
    """
    remove_stale_temporaries(path)
    check_writable(path, "--out", folder)
    if path.exists() and not force:
        raise UserError(f"{path} already exists; pass --force to replace it")


@contextlib.contextmanager
def interrupt_as_user_error(target: Path) -> Iterator[None]:
    """Report Ctrl-C during a write as one line; the atomic writers have already removed partial output."""
    try:
        yield
    except KeyboardInterrupt:
        raise UserError(f"{target}: interrupted; nothing was written under this name") from None
