"""Packing: best-fit-decreasing rows, exact packed batches, nothing lost or cut, and packed = one by one."""

from __future__ import annotations

import pytest
import torch
from conftest import DATA_DIR, TINY_QWEN3, needs_assets
from tiny_training import assert_grads_close, loss_and_grads, make_trainer, random_samples, tiny_lora_model

from tuneforge.config import DataConfig
from tuneforge.data.collate import PackCollator, PadCollator, make_collator
from tuneforge.data.packing import best_fit_decreasing
from tuneforge.data.render import IGNORE


def test_best_fit_decreasing_fills_the_tightest_row_first():
    rows = best_fit_decreasing([5, 4, 3, 3, 2, 2, 1, 6], capacity=10)
    assert rows == [[7, 1], [0, 2, 4], [3, 5, 6]]
    assert best_fit_decreasing([], 8) == []


def test_best_fit_decreasing_places_every_sample_once_within_capacity():
    lengths = torch.randint(1, 100, (500,), generator=torch.Generator().manual_seed(0)).tolist()
    rows = best_fit_decreasing(lengths, capacity=128)
    assert sorted(i for row in rows for i in row) == list(range(500))
    assert all(sum(lengths[i] for i in row) <= 128 for row in rows)
    assert len(rows) <= sum(lengths) // 128 + 2  # nearly full rows
    with pytest.raises(ValueError, match="longer than the row capacity 99; packing never cuts"):
        best_fit_decreasing([50, 100], capacity=99)


SAMPLES = [
    {"input_ids": [11, 12, 13], "labels": [IGNORE, 12, 13]},
    {"input_ids": [21, 22, 23, 24, 25], "labels": [21, 22, IGNORE, 24, 25]},
    {"input_ids": [31], "labels": [31]},
]


def test_pack_collator_rows_positions_and_labels():
    # Rows are as wide as the longest sample (5): the 3- and 1-token samples share the second row.
    batch = PackCollator(pad_token_id=0)(SAMPLES)
    assert "attention_mask" not in batch
    assert batch["input_ids"].tolist() == [[21, 22, 23, 24, 25], [11, 12, 13, 31, 0]]
    # Each sample's first label is dropped: in a row it would be predicted from the previous sample.
    assert batch["labels"].tolist() == [[IGNORE, 22, IGNORE, 24, 25], [IGNORE, 12, 13, IGNORE, IGNORE]]
    # Padding is a segment of its own, so it attends to nothing real.
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 0, 0]]
    assert batch["seq_lens"].tolist() == [5, 3, 1]


def test_pack_collator_varlen_is_one_row_without_padding():
    batch = PackCollator(pad_token_id=0, varlen=True)(SAMPLES)
    assert batch["input_ids"].tolist() == [[11, 12, 13, 21, 22, 23, 24, 25, 31]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 3, 4, 0]]
    assert batch["cu_seq_lens_q"].tolist() == batch["cu_seq_lens_k"].tolist() == [0, 3, 8, 9]
    assert batch["cu_seq_lens_q"].dtype == torch.int32
    assert batch["max_length_q"] == batch["max_length_k"] == 5


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("loss", ["standard", "chunked"])
def test_packed_batch_equals_samples_one_by_one(tmp_path, attn, loss):
    trainer = make_trainer(tiny_lora_model(attn), loss, tmp_path)
    samples = random_samples(5)
    num_items = sum(sum(label != IGNORE for label in s["labels"][1:]) for s in samples)

    alone_loss, alone_grads = loss_and_grads(trainer, [PadCollator(0)([s]) for s in samples], num_items)
    packed = PackCollator(pad_token_id=0)(samples)
    assert packed["input_ids"].shape[0] < len(samples)  # several samples really share a row
    packed_loss, packed_grads = loss_and_grads(trainer, [packed], num_items)

    assert packed_loss == pytest.approx(alone_loss, rel=1e-5)
    assert len(packed_grads) == 2 * 7 * TINY_QWEN3["num_hidden_layers"]  # lora_A and lora_B of every linear
    assert_grads_close(packed_grads, alone_grads)


@needs_assets
def test_packing_loses_and_cuts_nothing(qwen3_tokenizer, tmp_path):
    from tuneforge.data.prepare import prepare
    from tuneforge.objective import SFT

    cfg = DataConfig(
        datasets=[{"path": str(DATA_DIR / "medical_o1_reasoning_demo.json"), "max_samples": 64}],
        max_length=1024,
        cache_dir=str(tmp_path / "cache"),
    )
    samples = list(prepare(cfg, qwen3_tokenizer, log=lambda *_: None, objective=SFT).train)
    pack, pad = PackCollator(qwen3_tokenizer.pad_token_id), PadCollator(qwen3_tokenizer.pad_token_id)
    for start in range(0, len(samples), 8):
        batch = samples[start : start + 8]
        packed, padded = pack(batch), pad(batch)
        assert packed["input_ids"].shape[1] <= cfg.max_length
        loss_tokens = int((packed["labels"][..., 1:] != IGNORE).sum())
        assert loss_tokens == int((padded["labels"][..., 1:] != IGNORE).sum())
        # Cut the rows back into samples at each position 0: exactly the input samples come out.
        found = []
        for ids, pos in zip(packed["input_ids"].tolist(), packed["position_ids"].tolist()):
            starts = [i for i, p in enumerate(pos) if p == 0] + [len(pos)]
            found += [ids[a:b] for a, b in zip(starts, starts[1:])]
        real = sorted(s["input_ids"] for s in batch)
        assert sorted(f for f in found if f in real) == real
        assert int(packed["seq_lens"].sum()) == sum(len(s) for s in real)


def test_make_collator_follows_config_and_attention():
    model = tiny_lora_model("sdpa", num_hidden_layers=1)
    cfg = DataConfig(datasets=[{"path": "x.json"}], max_length=256)
    assert isinstance(make_collator(cfg, 0, model), PackCollator)
    assert not make_collator(cfg, 0, model).varlen
    assert isinstance(make_collator(cfg.model_copy(update={"packing": False}), 0, model), PadCollator)
    model.get_base_model().config._attn_implementation = "flash_attention_2"
    assert make_collator(cfg, 0, model).varlen
    said = []
    model.get_base_model().config._attn_implementation = "paged|sdpa"
    assert isinstance(make_collator(cfg, 0, model, log=said.append), PadCollator)
    assert "cannot keep packed samples apart" in said[0]
