"""Tiny random-weight models built from configs (nothing can be downloaded here)."""
from __future__ import annotations

from functools import cache

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (AutoModelForCausalLM, Gemma3TextConfig, LlamaConfig, MistralConfig, PreTrainedTokenizerFast,
                          Qwen3Config)

import briefing
from briefing.model import WINDOW_TRANSFORMERS, window_layers_supported

FAMILIES = {
    "llama-gqa": (LlamaConfig, dict(num_attention_heads=4, num_key_value_heads=2)),
    "llama-mha": (LlamaConfig, dict(num_attention_heads=4, num_key_value_heads=4)),
    "mistral-gqa": (MistralConfig, dict(num_attention_heads=4, num_key_value_heads=1, sliding_window=None)),
    "qwen3-gqa": (Qwen3Config, dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16)),
    # slides on every layer (Mistral v0.1 style): holds its window, compacts within it
    "mistral-sliding": (MistralConfig, dict(num_attention_heads=4, num_key_value_heads=1, sliding_window=24)),
    # Gemma 3: five sliding-window layers to one global layer, local and global RoPE bases, QK norm, its own scale
    "gemma3-hybrid": (Gemma3TextConfig, dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                             num_hidden_layers=6, sliding_window=24, query_pre_attn_scalar=16,
                                             layer_types=["sliding_attention"] * 5 + ["full_attention"])),
}
WINDOW = 24  # the sliding window of the sliding families: trajectories in their tests run well past it
SLIDING = ("mistral-sliding", "gemma3-hybrid")


@cache
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with no merges (one token per byte, 257 ids with the end token): built in
    memory, so tests on tiny models need neither the embedded model nor a download."""
    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@cache
def bpe_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (2,048 ids) trained in memory on the shipped essays, with ChatML special tokens
    and chat template, as the embedded SmolLM2's: real merges across token seams, a real chat template, and no
    model to load (about 0.5 s)."""
    from rlm.data import essay_names, read_essay

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),  # as SmolLM2's
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2048, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([read_essay(name) for name in essay_names()], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", bos_token="<|im_start|>",
                                   unk_token="<|endoftext|>")
    fast.chat_template = CHATML
    return fast


def tiny_model(family: str, tokenizer=None, seed: int = 0, max_positions: int = 512) -> briefing.LoadedModel:
    tokenizer = tokenizer if tokenizer is not None else tiny_tokenizer()
    config_cls, extra = FAMILIES[family]
    settings = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    max_position_embeddings=max_positions, tie_word_embeddings=True)
    config = config_cls(**(settings | extra))
    if family in SLIDING and not window_layers_supported():   # the low end of the transformers range
        import pytest

        pytest.skip(f"{family}: sliding-window layers need transformers >= {WINDOW_TRANSFORMERS}")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return briefing.LoadedModel(model=model, tokenizer=tokenizer, name=f"tiny-{family}")
