"""Tiny random-weight models built from configs (nothing can be downloaded here)."""
from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen3Config

import briefing

FAMILIES = {
    "llama-gqa": (LlamaConfig, dict(num_attention_heads=4, num_key_value_heads=2)),
    "llama-mha": (LlamaConfig, dict(num_attention_heads=4, num_key_value_heads=4)),
    "mistral-gqa": (MistralConfig, dict(num_attention_heads=4, num_key_value_heads=1, sliding_window=None)),
    "qwen3-gqa": (Qwen3Config, dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16)),
}


def tiny_model(family: str, tokenizer, seed: int = 0, max_positions: int = 512) -> briefing.LoadedModel:
    config_cls, extra = FAMILIES[family]
    config = config_cls(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        max_position_embeddings=max_positions, tie_word_embeddings=True, **extra)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return briefing.LoadedModel(model=model, tokenizer=tokenizer, name=f"tiny-{family}")
