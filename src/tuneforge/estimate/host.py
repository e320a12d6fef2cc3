"""What a process holds in CPU memory besides its tensors: the tokenizer, the prepared data, the checkpoint's file.

On a CPU these count against the same RAM as the tensors, so the train pre-flight adds them (the CPU estimate's
"framework overhead"); for a GPU run they are the host's share (docs/estimate.md's CPU RAM columns). Measured with
transformers 5.24 / tokenizers 0.22 / datasets 4 on Python 3.11 (glibc malloc, no allocator tuning), each as the
RSS a process gains over one that has imported the same libraries (docs/performance.md, Estimate accuracy):

- tokenizer: transformers 5 builds a fast tokenizer from tokenizer.json through Python (the vocabulary and merges
  as dicts and lists beside the Rust model); the real Qwen3 tokenizer (151,669 entries) added 123 and 140 MiB in
  two processes, so about 900 bytes per vocabulary entry;
- prepared data: the data stage reads the source records, renders every conversation (to fingerprint the cache and
  tokenize it) and keeps the tokenized Arrow table mapped; what it frees stays in glibc's heap (the allocator's
  retained heap), so the process keeps about 116 bytes per prepared token (alpaca_en_demo: 170,048 tokens, 18.8
  MiB, against a 2 MiB Arrow table);
- checkpoint: tensors loaded without conversion stay views of the safetensors memory map, so their pages are the
  weights the estimate already counts (nothing more on a CPU, where an fp32 or quantized load keeps them); a GPU run
  maps the whole checkpoint while it copies it to the GPU, which is what its host needs besides the above.

Trainer and autograd bookkeeping beyond this (about 50 MiB, the RSS a first step adds over the tensors) is inside
the tensors' measured error and not counted.
"""

from __future__ import annotations

TOKENIZER_BYTES_PER_ENTRY = 900  # transformers 5 fast tokenizer, loaded from tokenizer.json (see above)
DATA_BYTES_PER_TOKEN = 116  # the data stage's retained heap and Arrow pages per prepared token (see above)


def tokenizer_bytes(vocab: int) -> float:
    """RSS of a loaded tokenizer with `vocab` entries."""
    return TOKENIZER_BYTES_PER_ENTRY * vocab


def data_bytes(tokens: int) -> float:
    """RSS the data stage leaves behind for `tokens` prepared tokens."""
    return DATA_BYTES_PER_TOKEN * tokens


def host_overhead(vocab: int, tokens: int) -> float:
    """What a training process holds besides tensors: its tokenizer and its prepared data."""
    return tokenizer_bytes(vocab) + data_bytes(tokens)
