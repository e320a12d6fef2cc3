"""`tuneforge eval`: baseline vs fine-tuned on the same prompts with the same decoding (see docs/eval.md)."""
