"""export gguf: our converter's files run in llama.cpp as the model runs in transformers, and read back exactly."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ASSETS, TINY_QWEN3, make_tiny_qwen3
from test_export_merge import error_line, make_lora_run, write_run_config
from typer.testing import CliRunner

from tuneforge.cli import app
from tuneforge.errors import UserError
from tuneforge.export.gguf import export_gguf, read_metadata
from tuneforge.export.merge import merge_adapter, run_sources

VOCAB_DIR = ASSETS / "llama.cpp-vocab"
# A seed and prompt for which greedy decoding never meets a near-tie in 16 steps (asserted below), so f16
# rounding cannot flip a token; initializer_range 0.1 spreads the logits of the random model.
SEED, PROMPT = 4, "Write a haiku about the sea."
F16_LOGIT_TOL = 0.02
TEXTS = [
    "Hello world! How's it going? I'm fine, they'll see.",
    "用一句话介绍一下长城。北京欢迎你！",
    "def add(a, b):\n    return a + b  # sum\n\n\tprint(add(1, 2))\n",
    "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nHi!<|im_end|>",
    '<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call><|endoftext|>',
    "  spaces   and\n\n\nnewlines 1234567 3.14159 émigré naïve 🤖 ½",
    "[PAD151700] is plain text here, not a token",
]


def tiny_model(folder: Path, arch: str, seed: int = 0, **overrides) -> Path:
    """A tiny random qwen3 / qwen2 / llama with the real Qwen3 tokenizer (byte-level BPE, qwen2 pre-tokenizer)."""
    if arch == "qwen3":
        return make_tiny_qwen3(folder, seed=seed, **overrides)
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    classes = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "llama": (LlamaConfig, LlamaForCausalLM)}
    config_class, model_class = classes[arch]
    torch.manual_seed(seed)
    model = model_class(config_class(**{**TINY_QWEN3, **overrides}))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias"):  # Qwen2's q/k/v biases start at zero; a bias lost on the way must show
                param.normal_(0, 0.5)
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(ASSETS / "qwen3-tokenizer" / name, folder / name)
    return folder


def prompt_ids(tokenizer) -> list[int]:
    messages = [{"role": "user", "content": PROMPT}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text)["input_ids"]


def hf_greedy(model_dir: Path, ids: list[int], steps: int = 16) -> tuple[list[int], np.ndarray, float]:
    """Greedy continuation, the logits of every position, and the smallest top-1/top-2 gap met on the way."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32").eval()
    ids, gaps = list(ids), []
    with torch.no_grad():
        for _ in range(steps):
            top = torch.topk(model(torch.tensor([ids])).logits[0, -1], 2)
            gaps.append(float(top.values[0] - top.values[1]))
            ids.append(int(top.indices[0]))
        return ids, model(torch.tensor([ids])).logits[0].numpy(), min(gaps, default=float("inf"))


def llama_cpp_greedy(gguf_file: Path, ids: list[int], steps: int = 16) -> tuple[list[int], np.ndarray]:
    """The same in llama.cpp: greedy continuation and the logits of every position."""
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(str(gguf_file), n_ctx=256, logits_all=True, verbose=False, n_threads=os.cpu_count())
    ids = list(ids)
    llm.eval(ids)
    for _ in range(steps):
        ids.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval(ids[-1:])
    return ids, np.array(llm.scores[: len(ids)])


@pytest.fixture(scope="module")
def merged(tmp_path_factory, qwen3_tokenizer) -> Path:
    """A tiny Qwen3 with the real tokenizer, LoRA-trained (random adapter) and merged in fp32."""
    root = tmp_path_factory.mktemp("gguf-export")
    # head_dim 128 as in every real Qwen3: transformers' GGUF loader assumes it (it does not read key_length).
    base = tiny_model(root / "base", "qwen3", SEED, num_attention_heads=2, num_key_value_heads=1, head_dim=128,
                      initializer_range=0.1)  # fmt: skip
    run = make_lora_run(root / "run", base, seed=SEED)
    return merge_adapter(*run_sources(run), root / "merged", dtype="fp32").out


@pytest.fixture(scope="module")
def ggufs(merged) -> dict[str, Path]:
    return {qtype: export_gguf(merged, merged.parent / f"tiny-{qtype}.gguf", qtype) for qtype in ("f16", "q8_0")}


@pytest.fixture(scope="module")
def hf_run(merged, qwen3_tokenizer) -> tuple[list[int], list[int], np.ndarray, float]:
    ids = prompt_ids(qwen3_tokenizer)
    return (ids, *hf_greedy(merged, ids))


def test_llama_cpp_greedy_matches_transformers_f16(ggufs, hf_run):
    ids, hf_ids, hf_logits, min_gap = hf_run
    cpp_ids, cpp_logits = llama_cpp_greedy(ggufs["f16"], ids)
    # Every logit within the tolerance and every greedy choice won by more than twice it: no flip is possible.
    # Measured: largest error 0.008, smallest margin 0.052.
    assert np.abs(cpp_logits - hf_logits).max() < F16_LOGIT_TOL
    assert min_gap > 2 * F16_LOGIT_TOL, f"test setup: margin {min_gap:.4f}; pick a SEED/PROMPT without near-ties"
    assert cpp_ids[len(ids) :] == hf_ids[len(ids) :]
    assert len(set(hf_ids[len(ids) :])) > 3  # a real continuation, not one token repeated


def test_q8_0_runs_in_llama_cpp_close_to_transformers(ggufs, hf_run):
    _, hf_ids, hf_logits, _ = hf_run
    _, cpp_logits = llama_cpp_greedy(ggufs["q8_0"], hf_ids, steps=0)
    assert np.corrcoef(cpp_logits.ravel(), hf_logits.ravel())[0, 1] > 0.999


@pytest.mark.parametrize("qtype", ["f16", "q8_0"])
def test_transformers_reads_weights_back_exactly(tmp_path, qtype):
    import gguf
    import torch
    from transformers import AutoModelForCausalLM

    # A 1,024-token vocabulary: transformers parses GGUF metadata slowly (seconds per 150k-token vocabulary).
    model = tiny_model(tmp_path / "model", "qwen3", num_attention_heads=2, num_key_value_heads=1, head_dim=128,
                       vocab_size=1024, bos_token_id=None, eos_token_id=None, pad_token_id=None)  # fmt: skip
    shrink_tokenizer(model, 1024)
    out = export_gguf(model, tmp_path / f"m-{qtype}.gguf", qtype)
    original = AutoModelForCausalLM.from_pretrained(model).state_dict()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=out.name).state_dict()
    assert loaded.keys() == original.keys()
    q8 = gguf.GGMLQuantizationType.Q8_0
    for name, weight in original.items():
        if weight.ndim == 1:
            expected = weight  # norms stay f32
        elif qtype == "f16":
            expected = weight.half().float()
        else:  # the q8_0 blocks we wrote, dequantized by gguf's reference code
            expected = torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(weight.numpy(), q8), q8))
        assert torch.equal(loaded[name].float(), expected), name


def shrink_tokenizer(model: Path, size: int) -> None:
    """Keep the first `size` tokens and the merges among them (Qwen's ids follow merge order)."""
    path = model / "tokenizer.json"
    tokenizer = json.loads(path.read_text())
    vocab = {token: i for token, i in tokenizer["model"]["vocab"].items() if i < size}
    merges = tokenizer["model"]["merges"]
    tokenizer["model"].update(vocab=vocab, merges=[m for m in merges if "".join(m) in vocab and set(m) <= vocab.keys()])
    tokenizer["added_tokens"] = []
    path.write_text(json.dumps(tokenizer, ensure_ascii=False))


def test_llama_cpp_tokenizes_like_hf(ggufs, qwen3_tokenizer):
    llama_cpp = pytest.importorskip("llama_cpp")
    vocab = llama_cpp.Llama(str(ggufs["f16"]), vocab_only=True, verbose=False)
    for text in TEXTS:
        # add_bos=True asks llama.cpp to add a BOS if the GGUF says so; Qwen never adds one.
        assert vocab.tokenize(text.encode(), add_bos=True, special=True) == qwen3_tokenizer(text)["input_ids"], text
    # llama.cpp's own tokenizer test vectors for this vocabulary (made with the Hugging Face tokenizer).
    if not (VOCAB_DIR / "ggml-vocab-qwen2.gguf.inp").is_file():
        pytest.skip(f"{VOCAB_DIR} not found")
    inputs = (VOCAB_DIR / "ggml-vocab-qwen2.gguf.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    expected = (VOCAB_DIR / "ggml-vocab-qwen2.gguf.out").read_text().splitlines()
    assert len(expected) == 46
    for text, ids in zip(inputs, expected):
        assert vocab.tokenize(text.encode(), add_bos=False, special=False) == [int(i) for i in ids.split()], text


def test_qwen2_vocab_arrays_equal_llama_cpp_reference(tmp_path):
    import gguf

    if not (VOCAB_DIR / "ggml-vocab-qwen2.gguf").is_file():
        pytest.skip(f"{VOCAB_DIR} not found")
    model = tiny_model(tmp_path / "qwen2", "qwen2", hidden_size=32, intermediate_size=64)
    # Qwen2's tokenizer is Qwen3's without the tokens added after <|im_end|> (tools, think, vision, fim).
    tokenizer = json.loads((model / "tokenizer.json").read_text())
    tokenizer["added_tokens"] = [t for t in tokenizer["added_tokens"] if t["id"] <= 151645]
    (model / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False))
    keys = [f"tokenizer.ggml.{key}" for key in ("tokens", "token_type", "merges", "pre")]
    ours = read_metadata(export_gguf(model, tmp_path / "qwen2.gguf", "f16"), keys)
    ref = read_metadata(VOCAB_DIR / "ggml-vocab-qwen2.gguf", keys)

    def array(fields, key: str) -> list:
        return fields[f"tokenizer.ggml.{key}"]

    assert array(ours, "tokens") == array(ref, "tokens")
    assert array(ours, "merges") == array(ref, "merges")
    assert array(ours, "pre") == array(ref, "pre") == "qwen2"
    # Token types agree except on the 290 padding slots past the tokenizer: the reference was written by an
    # older converter that marked them USER_DEFINED (matched in text); llama.cpp's converter now writes UNUSED,
    # as we do, so "[PAD151700]" in a prompt stays plain text as in transformers (see the tokenization test).
    ours_types, ref_types = array(ours, "token_type"), array(ref, "token_type")
    differ = {i for i, (a, b) in enumerate(zip(ours_types, ref_types)) if a != b}
    assert len(ours_types) == len(ref_types) == 151936
    assert differ == set(range(151646, 151936))
    assert {(ours_types[i], ref_types[i]) for i in differ} == {(gguf.TokenType.UNUSED, gguf.TokenType.USER_DEFINED)}


@pytest.mark.parametrize(
    "arch,overrides",
    [("qwen2", {}), ("llama", {"tie_word_embeddings": False})],
    ids=["qwen2-qkv-bias", "llama-rope-permute-untied"],
)
def test_other_architectures_run_in_llama_cpp(tmp_path, qwen3_tokenizer, arch, overrides):
    model = tiny_model(tmp_path / arch, arch, seed=1, initializer_range=0.1, **overrides)
    ids = prompt_ids(qwen3_tokenizer)
    _, hf_logits, _ = hf_greedy(model, ids, steps=0)
    _, cpp_logits = llama_cpp_greedy(export_gguf(model, tmp_path / f"{arch}.gguf", "f16"), ids, steps=0)
    assert np.abs(cpp_logits - hf_logits).max() < F16_LOGIT_TOL


def test_pre_tokenizer_is_named_from_the_split_regex(tmp_path):
    model = tiny_model(tmp_path / "llama3", "llama", hidden_size=32, intermediate_size=64)
    path = model / "tokenizer.json"
    qwen2 = path.read_text(encoding="utf-8")
    # Llama 3's split regex differs from Qwen2's only in taking digits three at a time.
    path.write_text(qwen2.replace(r"|\\p{N}|", r"|\\p{N}{1,3}|"), encoding="utf-8")
    out = export_gguf(model, tmp_path / "llama3.gguf", "f16")
    assert read_metadata(out, ["tokenizer.ggml.pre"]) == {"tokenizer.ggml.pre": "llama-bpe"}
    path.write_text(qwen2.replace(r"|\\p{N}|", r"|\\p{N}{1,2}|"), encoding="utf-8")
    with pytest.raises(UserError, match=r"unknown pre-tokenizer; GGUF export knows those of llama-bpe, qwen2"):
        export_gguf(model, tmp_path / "other.gguf", "f16")
    assert not (tmp_path / "other.gguf").exists()


def test_export_run_q4_k_m_gguf_and_ollama(tmp_path_factory, merged):
    import gguf

    llama_cpp = pytest.importorskip("llama_cpp")
    run = make_lora_run(tmp_path_factory.mktemp("runs") / "my-run", merged.parent / "base", seed=SEED)
    result = CliRunner().invoke(app, ["export", "--run", str(run), "--to", "gguf,ollama", "--type", "q4_k_m"])
    assert result.exit_code == 0, result.output
    gguf_file = run / "gguf" / "my-run-q4_k_m.gguf"
    modelfile = run / "ollama" / "my-run-q4_k_m" / "Modelfile"
    assert "largest logit difference" in result.stdout
    assert f"ollama create my-run-q4_k_m -f {modelfile}" in result.stdout
    assert (run / "merged" / "config.json").is_file()
    file_type = read_metadata(gguf_file, ["general.file_type"])["general.file_type"]
    assert file_type == gguf.LlamaFileType.MOSTLY_Q4_K_M
    assert "FROM ../../gguf/my-run-q4_k_m.gguf\n" in modelfile.read_text()
    llm = llama_cpp.Llama(str(gguf_file), n_ctx=64, verbose=False)
    llm.eval(llm.tokenize(b"Hello", add_bos=False))
    assert np.isfinite(llm.scores[0]).all()
    assert sorted(p.name for p in gguf_file.parent.iterdir()) == [gguf_file.name]  # no temporary files left

    again = CliRunner().invoke(app, ["export", "--run", str(run), "--type", "q4_k_m"])
    assert "my-run-q4_k_m.gguf already exists; pass --force" in error_line(again)


def test_export_run_of_a_full_fine_tune_uses_its_model(tmp_path, merged):
    run = write_run_config(tmp_path / "full", merged.parent / "base")
    shutil.copytree(merged, run / "model")
    result = CliRunner().invoke(app, ["export", "--run", str(run), "--to", "gguf", "--type", "f16"])
    assert result.exit_code == 0, result.output
    assert f"using the model in {run / 'model'}" in result.stdout
    assert (run / "gguf" / "full-f16.gguf").is_file()
    assert not (run / "merged").exists() and not (run / "ollama").exists()


def test_sharded_checkpoint_gives_the_same_gguf(tmp_path, merged):
    from transformers import AutoModelForCausalLM

    sharded = tmp_path / "merged"
    AutoModelForCausalLM.from_pretrained(merged).save_pretrained(sharded, max_shard_size="8MB")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(merged / name, sharded / name)
    assert len(list(sharded.glob("*.safetensors"))) > 1
    one = export_gguf(merged, tmp_path / "one.gguf", "f16")
    assert export_gguf(sharded, tmp_path / "sharded.gguf", "f16").read_bytes() == one.read_bytes()


def test_k_quants_without_llama_cpp_name_the_extra(tmp_path, merged, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp now raises ImportError
    with pytest.raises(UserError, match=r"pip install 'tuneforge\[llamacpp\]'"):
        export_gguf(merged, tmp_path / "m.gguf", "q5_k_m")
    assert os.listdir(tmp_path) == []


def test_unsupported_architecture_lists_the_supported(tmp_path):
    model = tmp_path / "gpt2"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    result = CliRunner().invoke(app, ["export", "gguf", "--model", str(model), "--out", str(tmp_path / "m.gguf")])
    assert "model_type 'gpt2' cannot be exported to GGUF; supported: llama, qwen2, qwen3" in error_line(result)
    assert not (tmp_path / "m.gguf").exists()


def test_existing_output_needs_force(tmp_path, merged):
    out = tmp_path / "m.gguf"
    out.write_bytes(b"mine")
    with pytest.raises(UserError, match="already exists; pass --force"):
        export_gguf(merged, out, "f16")
    assert out.read_bytes() == b"mine"


def test_interrupted_export_keeps_the_old_file_and_no_partial_one(tmp_path, merged, monkeypatch):
    import gguf

    out = tmp_path / "m.gguf"
    out.write_bytes(b"previous export")
    quantize, calls = gguf.quants.quantize, []

    def interrupted(data, qtype):
        calls.append(qtype)
        if len(calls) == 5:  # mid-way through the tensors, after megabytes were written
            raise KeyboardInterrupt
        return quantize(data, qtype)

    monkeypatch.setattr(gguf.quants, "quantize", interrupted)
    with pytest.raises(UserError, match="interrupted; nothing was written under this name") as err:
        export_gguf(merged, out, "f16", force=True)
    assert "\n" not in str(err.value)
    assert out.read_bytes() == b"previous export"
    assert os.listdir(tmp_path) == ["m.gguf"]
