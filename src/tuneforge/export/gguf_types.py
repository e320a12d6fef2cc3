"""The GGUF `--type` names, apart from the converter (gguf, numpy) so the CLI and web UI list them fast."""

DIRECT_TYPES = ("f32", "f16", "bf16", "q8_0")  # written by tuneforge.export.gguf itself
LLAMA_CPP_TYPES = ("q4_k_m", "q5_k_m", "q6_k")  # made by llama.cpp's quantizer (llama-cpp-python)
GGUF_TYPES = (*DIRECT_TYPES, *LLAMA_CPP_TYPES)
RUN_TYPE = "q4_k_m"  # what a run is exported as unless --type says otherwise (`tuneforge export --run`, the web UI)
