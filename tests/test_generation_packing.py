"""``-o packing=true`` for text-generation: several prompt/completion pairs per training row.

On the tiny random Llama of ``conftest.py``: the packed and unpacked batches of the same pairs give the same
loss and the same completion logits (positions restart per pair, attention stays within it); without the
restarting positions they would not. The plan never splits a pair nor overfills a row, and the option is
refused where it cannot hold.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from transferkit.backbones import load_backbone
from transferkit.data import from_arrays
from transferkit.data.adapters_generation import from_pairs
from transferkit.data.packing import PackedDataset, plan_rows
from transferkit.errors import ConfigError
from transferkit.strategies import make_strategy
from transferkit.strategies.base import ItemDataset
from transferkit.tasks import IGNORE_INDEX
from transferkit.training import TrainConfig, Trainer, predict_outputs

PROMPTS = ["Colour of the sky?", "Colour of grass on a sunny day in spring?", "Snow?", "Colour of coal?",
           "What colour is a ripe tomato, usually?"]
ANSWERS = ["blue", "green, mostly", "white", "black", "red"]


@pytest.fixture
def causal(tiny_llama):
    return load_backbone(f"causal:{tiny_llama}", max_length=128)


def _data():
    return from_pairs(PROMPTS, ANSWERS)


@pytest.mark.parametrize("seed", range(5))
def test_the_plan_places_every_pair_once_and_never_overfills_a_row(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 50, size=int(rng.integers(1, 60))).tolist()
    rows = plan_rows(lengths, capacity=64)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 64 for row in rows)
    assert len(rows) <= 2 * -(-sum(lengths) // 64)  # first-fit leaves at most one row under half full
    assert plan_rows(lengths, capacity=64) == rows


def test_a_packed_batch_restarts_positions_per_pair(causal):
    data = _data()
    dataset = PackedDataset(data, causal.preprocess)
    assert len(dataset) < len(data)  # several pairs share a row
    batch = dataset.collate(list(range(len(dataset))))["inputs"]
    assert "attention_mask" not in batch and batch["input_ids"].shape == batch["position_ids"].shape
    for b, row in enumerate(dataset.rows):
        starts = [0] + list(np.cumsum([len(dataset.encoded[i][0]) for i in row]))
        for i, start, end in zip(row, starts, starts[1:]):
            ids, labels = dataset.encoded[i]
            assert batch["input_ids"][b, start:end].tolist() == ids
            assert batch["labels"][b, start:end].tolist() == labels
            assert batch["position_ids"][b, start:end].tolist() == list(range(len(ids)))
        assert (batch["labels"][b, starts[-1]:] == IGNORE_INDEX).all()  # the padding trains nothing


def _completion_logits(logits: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
    """Per pair, in order of appearance: the logits that score its completion tokens."""
    out = []
    for row_logits, row_labels in zip(logits, labels):
        keep = (row_labels[1:] != IGNORE_INDEX).nonzero().flatten()
        runs = np.split(keep.numpy(), np.flatnonzero(np.diff(keep.numpy()) > 1) + 1)  # one run per completion
        out += [row_logits[torch.as_tensor(r)] for r in runs if len(r)]
    return out


@pytest.mark.parametrize("strategy", ["lora", "finetune"])
def test_packed_and_unpacked_losses_match(causal, strategy):
    data = _data()
    s = make_strategy(strategy, {"packing": True})
    model = s.prepare(causal, data).eval()
    plain = ItemDataset(data, causal.preprocess).collate(list(range(len(data))))
    packed_ds = s.train_dataset(model, data)
    assert isinstance(packed_ds, PackedDataset)
    packed = packed_ds.collate(list(range(len(packed_ds))))
    with torch.no_grad():
        loss_plain, loss_packed = s.step(model, plain)["loss"], s.step(model, packed)["loss"]
        torch.testing.assert_close(loss_packed, loss_plain, rtol=1e-5, atol=1e-5)
        # pair by pair: the logits that score each completion are those it gets alone
        order = [i for row in packed_ds.rows for i in row]
        alone = _completion_logits(model(plain["inputs"]), plain["targets"])
        together = _completion_logits(model(packed["inputs"]), packed["targets"])
        for i, logits in zip(order, together):
            torch.testing.assert_close(logits, alone[i], rtol=1e-4, atol=1e-4)
        # the control: positions that run on through the row let each pair read the ones before it
        crossing = {**packed["inputs"], "position_ids": torch.arange(packed["inputs"]["input_ids"].shape[1])
                    .expand_as(packed["inputs"]["input_ids"])}
        assert not torch.allclose(s.step(model, {**packed, "inputs": crossing})["loss"], loss_plain, atol=1e-3)


def test_packed_training_learns_the_completions(causal):
    data = _data()
    s = make_strategy("lora", {"packing": True})
    model, history = s.fit(causal, data, None, Trainer(TrainConfig(
        epochs=60, batch_size=1, lr=1e-2, head_lr=1e-2, progress=False, warmup=0.0, schedule="constant")))
    assert len(s.train_dataset(model, data)) == 2  # 5 pairs in 2 rows: 2 steps an epoch
    assert history[-1]["train_loss"] < 0.2 * history[0]["train_loss"]
    assert list(predict_outputs(model, data)) == ANSWERS
    assert model.adapter["options"]["packing"] is True


def test_packing_is_refused_where_it_cannot_hold(causal, tiny_bert, monkeypatch):
    texts = from_arrays(["a b", "c d", "e f", "g h"], [0, 1, 0, 1])
    with pytest.raises(ConfigError, match="packing=true joins .* classification data"):
        make_strategy("finetune", {"packing": True}).prepare(load_backbone(f"hf:{tiny_bert}"), texts)
    with pytest.raises(ConfigError, match="'packing' does not apply: the virtual tokens lead each row"):
        make_strategy("prompt-tuning", {"packing": True})
    # a model whose attention ignores restarting positions (as transformers did before its packed-sequence
    # masks) would let pairs read each other: the check sees it and packing is refused
    import transformers.masking_utils as masking

    assert causal.packing_isolates_pairs()
    monkeypatch.setattr(masking, "find_packed_sequence_indices", lambda position_ids: None)
    assert not causal.packing_isolates_pairs()
    with pytest.raises(ConfigError, match="attention of .* crosses the pairs of a packed row"):
        make_strategy("lora", {"packing": True}).prepare(causal, _data())
