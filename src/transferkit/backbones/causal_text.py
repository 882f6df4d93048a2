"""The text preprocessing of causal language models (``causal:``): prompts, chats, completions, packed rows.

:class:`CausalPreprocess` turns generation items into token batches for :class:`~transferkit.backbones.causal_lm.
CausalLMBackbone`: left-padded prompts for generation, right-padded prompt + completion rows with completion-only
labels for training, and packed training rows (:mod:`transferkit.data.packing`).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from transferkit.backbones.base import TextPreprocess
from transferkit.errors import DataError

#: Roles a chat message may have.
CHAT_ROLES = ("system", "user", "assistant")


class CausalPreprocess(TextPreprocess):
    """Text for a causal LM: strings and word lists as :class:`TextPreprocess` does (features), and
    generation items: dicts with a ``prompt`` (or chat ``messages``) and, in training, a ``completion``.

    A prompt goes through the tokenizer's chat template as one user turn when the tokenizer has one
    (an instruction-tuned model answers in its own format) and is read as plain text otherwise;
    ``messages`` (a list of ``{"role", "content"}``) always need a template. Prompt-only batches are
    padded on the left (generation continues every row from its last token); training batches
    (``completion`` given) on the right, with ``labels``: the completion's token ids followed by the
    end-of-sequence token, and -100 on the prompt and the padding, so the loss reads only the completion
    (TRL's completion-only loss). Nothing is truncated: an item longer than ``max_length`` tokens is
    refused, naming it.
    """

    kind = "causal-text"
    MODEL_KEYS = ("input_ids", "attention_mask")

    def __call__(self, items: Sequence) -> dict[str, torch.Tensor]:
        if len(items) and all(isinstance(t, dict) for t in items):
            return self.generation_batch(items)
        return super().__call__(items)

    @property
    def has_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def prompt_text(self, item: dict, where: str) -> str:
        """The text the model continues: the chat template applied to the prompt or messages, or the prompt."""
        if "messages" in item:
            messages = item["messages"]
            if not isinstance(messages, list) or not messages or not all(
                    isinstance(m, dict) and m.get("role") in CHAT_ROLES and isinstance(m.get("content"), str)
                    for m in messages):
                raise DataError(f"{where}: 'messages' must be a non-empty list of {{'role', 'content'}} with roles "
                                f"{', '.join(CHAT_ROLES)}; got {messages!r:.120}.")
            if not self.has_template:
                raise DataError(f"{where}: chat messages need a tokenizer with a chat template; "
                                f"{type(self.tokenizer).__name__} has none. Give a plain 'prompt' instead.")
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompt = item.get("prompt")
        if not isinstance(prompt, str):
            raise DataError(f"{where}: a generation item needs a 'prompt' string (or 'messages'); got "
                            f"{sorted(item)!r}.")
        if self.has_template:
            return self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                      add_generation_prompt=True, tokenize=False)
        return prompt

    def _ids(self, text: str, templated: bool) -> list[int]:
        return self.tokenizer(text, add_special_tokens=not templated)["input_ids"]

    def encode(self, item: dict, where: str, training: bool) -> tuple[list[int], list[int]]:
        """One generation item's token ids and labels: the (templated) prompt, then in training the completion
        and the end-of-sequence token; labels are -100 on the prompt, the completion's ids after it.

        Raises:
            DataError: an empty training completion, or an item over ``max_length`` tokens, named by ``where``.
        """
        tok = self.tokenizer
        ids = self._ids(self.prompt_text(item, where), self.has_template or "messages" in item)
        target: list[int] = []
        if training:
            completion = item.get("completion")
            if not isinstance(completion, str) or not completion.strip():
                raise DataError(f"{where}: empty completion; every training prompt needs the text to learn.")
            target = tok(completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        if len(ids) + len(target) > self.max_length or (not training and len(ids) >= self.max_length):
            what = "prompt + completion" if training else "prompt"
            raise DataError(f"{where}: the {what} is {len(ids) + len(target)} tokens, over the model's "
                            f"max_length {self.max_length} (nothing is cut silently). Shorten it, or raise "
                            f"the backbone's max_length option.")
        return ids + target, [-100] * len(ids) + target

    def generation_batch(self, items: Sequence[dict]) -> dict[str, torch.Tensor]:
        tok = self.tokenizer
        training = any("completion" in it for it in items)
        rows, labels = zip(*(self.encode(item, f"item {i}", training) for i, item in enumerate(items)))
        width = max(len(r) for r in rows)
        pad = tok.pad_token_id
        left = not training  # generation continues from each row's last token
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        out_labels = torch.full((len(rows), width), -100, dtype=torch.long)
        for b, (r, lab) in enumerate(zip(rows, labels)):
            span = slice(width - len(r), width) if left else slice(0, len(r))
            input_ids[b, span], mask[b, span] = torch.tensor(r), 1
            out_labels[b, span] = torch.tensor(lab)
        batch = {"input_ids": input_ids, "attention_mask": mask}
        if training:
            batch["labels"] = out_labels
        return batch

    def packed_batch(self, rows: Sequence[Sequence[tuple[list[int], list[int]]]]) -> dict[str, torch.Tensor]:
        """A training batch of packed rows: each row several pairs (from :meth:`encode`) one after another.

        ``position_ids`` restart at 0 with every pair (and with the padding at the end of a row), and there is
        no ``attention_mask``: from such positions transformers builds a block-diagonal causal mask, so a
        pair attends only to itself and sees the positions it would see alone
        (:meth:`CausalLMBackbone.packing_isolates_pairs` checks that the model does).
        """
        joined = [[t for pair in row for t in pair[0]] for row in rows]
        width = max(len(r) for r in joined)
        input_ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        positions = torch.zeros((len(rows), width), dtype=torch.long)
        for b, (row, ids) in enumerate(zip(rows, joined)):
            input_ids[b, :len(ids)] = torch.tensor(ids)
            labels[b, :len(ids)] = torch.tensor([t for pair in row for t in pair[1]])
            lengths = [len(pair[0]) for pair in row] + ([width - len(ids)] if width > len(ids) else [])
            positions[b] = torch.cat([torch.arange(n) for n in lengths])
        return {"input_ids": input_ids, "position_ids": positions, "labels": labels}

    def config(self) -> dict:
        return {**super().config(), "chat_template": self.has_template}
