"""`tuneforge demo`: the whole pipeline offline on CPU in a few minutes, on data and a model it makes itself.

It writes a small bilingual self-cognition dataset (with {{name}} / {{author}} placeholders, as real
ones have), trains a byte-level BPE tokenizer on it with Qwen3's special tokens and Qwen3's chat
template, builds a tiny random-weight Qwen3, fine-tunes it with LoRA through the normal `train`
path, and answers "你是谁？" and "Who are you?" before and after.

`write_data` (`tuneforge demo --data-only`) also writes the data that the configs in examples/ read from
tuneforge-demo/: the self-cognition set, and huanhuan.json (the Zhen Huan role-play set of datawhalechina/self-llm,
Apache-2.0, shipped in the package since it is on no dataset hub).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from tuneforge.config import Config, validate

QUESTIONS_ZH = [
    "你是谁？",
    "你叫什么名字？",
    "请介绍一下你自己。",
    "你是哪个公司开发的？",
    "你好，你是？",
    "能告诉我你的身份吗？",
    "你是什么模型？",
    "谁创造了你？",
    "你的名字是什么？",
    "介绍下你自己吧",
]
QUESTIONS_EN = [
    "Who are you?",
    "What is your name?",
    "Introduce yourself.",
    "Who made you?",
    "Hi, who am I talking to?",
    "What should I call you?",
    "Tell me about yourself.",
    "Which company built you?",
    "Are you ChatGPT?",
    "Who created you?",
]
ANSWERS_ZH = ["我是{{name}}，由{{author}}开发的人工智能助手。", "您好！我是{{name}}，一个由{{author}}打造的AI助手。"]
ANSWERS_EN = [
    "I am {{NAME}}, an AI assistant developed by {{AUTHOR}}.",
    "Hello! I am {{NAME}}, an AI assistant built by {{AUTHOR}}.",
]
# Qwen3's special tokens, so the demo tokenizer renders exactly like the real one does.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
]


def demo_records() -> list[dict[str, str]]:
    """The demo's self-cognition data in alpaca layout, every question with every answer style."""
    records = [{"instruction": q, "input": "", "output": a} for q in QUESTIONS_ZH for a in ANSWERS_ZH]
    records += [{"instruction": q, "input": "", "output": a} for q in QUESTIONS_EN for a in ANSWERS_EN]
    return records


def write_data(workdir: Path) -> list[Path]:
    """Write the demo's self-cognition set and the packaged role-play set into `workdir`; returns their paths."""
    from tuneforge.io import atomic_write_json, atomic_write_text

    workdir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(workdir / "self_cognition.json", demo_records())
    huanhuan = resources.files("tuneforge").joinpath("assets/data/huanhuan.json").read_text(encoding="utf-8")
    atomic_write_text(workdir / "huanhuan.json", huanhuan)
    return [workdir / "self_cognition.json", workdir / "huanhuan.json"]


def build_tokenizer(corpus: list[str], folder: Path):
    """A byte-level BPE tokenizer trained on `corpus`, with Qwen3's special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer)
    template = resources.files("tuneforge").joinpath("assets/qwen3_chat_template.jinja").read_text(encoding="utf-8")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=template,
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )
    tokenizer.save_pretrained(folder)
    return tokenizer


def build_model_folder(folder: Path, name: str, author: str) -> Path:
    """Write the demo's tokenizer and tiny Qwen3 config.json into `folder`."""
    from transformers import Qwen3Config

    corpus = [json.dumps(r, ensure_ascii=False) for r in demo_records()]
    corpus += [name, author, "思考 回答 问题 assistant user system"]
    tokenizer = build_tokenizer(corpus, folder)
    Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        initializer_range=0.1,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ).save_pretrained(folder)
    return folder


def demo_config(workdir: Path, name: str, author: str) -> Config:
    """The demo job as an ordinary tuneforge config."""
    return validate(
        {
            "model": {"name_or_path": str(workdir / "model"), "init": "random"},
            "data": {
                "datasets": [
                    {
                        "path": str(workdir / "self_cognition.json"),
                        "format": "alpaca",
                        "placeholders": {"name": name, "author": author},
                    }
                ],
                "max_length": 128,
                "cache_dir": str(workdir / "cache"),
            },
            "method": {"type": "lora", "rank": 16, "alpha": 32, "dropout": 0.0},
            "train": {
                "epochs": 12,
                "learning_rate": 5e-3,
                "per_device_batch_size": 8,
                "logging_steps": 5,
                "save_steps": 1000,
                "lr_scheduler": "constant_with_warmup",
                "warmup_steps": 5,
            },
            "output": {"dir": str(workdir / "run"), "overwrite": True},
        },
        "demo",
    )


def run_demo(workdir: Path, name: str, author: str, log=print) -> dict[str, dict[str, str]]:
    """Build, train and compare; returns {question: {"before": ..., "after": ...}}."""
    from tuneforge.infer.backend import SamplingParams
    from tuneforge.infer.chat import open_session
    from tuneforge.train.run import train

    write_data(workdir)
    build_model_folder(workdir / "model", name, author)
    cfg = demo_config(workdir, name, author)

    run = train(cfg, log=log)
    session = open_session(None, None, str(run.root), SamplingParams(max_new_tokens=48, temperature=0), think=False)
    return {
        q: {
            when: session.ask([], q, model=name).content
            for when, name in (("before", session.base), ("after", session.tuned))
        }
        for q in (QUESTIONS_ZH[0], QUESTIONS_EN[0])
    }
