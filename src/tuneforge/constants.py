"""Values shared by the data, model and train stages, kept here so that none imports another for them."""

# The label of a position that is not trained (PyTorch cross-entropy's ignore_index).
IGNORE = -100

# The thinking block's tags, as Qwen3, QwQ and the R1 distills write them.
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

# A prepared dataset's splits by name (`tuneforge data render|preview --split`); here so the CLI needs no data imports.
SPLITS = ("train", "validation")
