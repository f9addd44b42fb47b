"""briefing: the worker model's KV memory of an orchestrator trajectory.

Load a model, keep a TrajectoryCache of the trajectory text, compact it against each worker prompt with
task-guided Attention Matching, then generate or score continuations on the compacted cache.

Names are resolved lazily (PEP 562), so that `import briefing` and its torch-free modules (`briefing.errors`,
`briefing.options`, `briefing.stats`) cost nothing until a name that needs torch is used.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "briefing.archive": ["Archive", "ArchivePolicy"],
    "briefing.compaction": ["compact", "compact_many"],
    "briefing.context": ["CompactedCache", "plain_context"],
    "briefing.errors": ["BriefingError", "ModelLoadError"],
    "briefing.fold": ["FoldPolicy", "default_fold_selector"],
    "briefing.generation": ["GenerationConfig", "GenerationResult", "generate", "generate_batch", "loglikelihood",
                            "token_logprobs"],
    "briefing.guidance": ["Guidance", "GuidanceMemory", "MixGuidance", "SpanGuidance", "TaskGuidance"],
    "briefing.model": ["LoadedModel", "load_model"],
    "briefing.selection": ["AttentionMatching", "CoverageMatching", "Fit", "KeepAll", "KeepNone", "RandomKeep",
                           "RecentWindow", "ScoredSelector", "Scores", "Selector", "SizedSelector", "TopK"],
    "briefing.stats": ["CompactionStats", "FoldStats"],
    "briefing.trajectory": ["TrajectoryCache"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = [
    "Archive", "ArchivePolicy", "AttentionMatching", "BriefingError", "CompactedCache", "CompactionStats",
    "CoverageMatching", "Fit", "FoldPolicy",
    "FoldStats", "GenerationConfig", "GenerationResult", "Guidance", "GuidanceMemory", "KeepAll", "KeepNone",
    "LoadedModel", "MixGuidance", "ModelLoadError", "RandomKeep", "RecentWindow", "ScoredSelector", "Scores",
    "Selector", "SizedSelector", "SpanGuidance", "TaskGuidance", "TopK", "TrajectoryCache", "compact", "compact_many",
    "default_fold_selector", "generate", "generate_batch", "load_model", "loglikelihood", "plain_context",
    "token_logprobs",
]
assert sorted(__all__) == sorted(_WHERE), "briefing.__all__ and its lazy table disagree"

if TYPE_CHECKING:  # pragma: no cover
    from briefing.archive import Archive, ArchivePolicy
    from briefing.compaction import compact, compact_many
    from briefing.context import CompactedCache, plain_context
    from briefing.errors import BriefingError, ModelLoadError
    from briefing.fold import FoldPolicy, default_fold_selector
    from briefing.generation import (GenerationConfig, GenerationResult, generate, generate_batch, loglikelihood,
                                     token_logprobs)
    from briefing.guidance import Guidance, GuidanceMemory, MixGuidance, SpanGuidance, TaskGuidance
    from briefing.model import LoadedModel, load_model
    from briefing.selection import (AttentionMatching, CoverageMatching, Fit, KeepAll, KeepNone, RandomKeep,
                                    RecentWindow, ScoredSelector, Scores, Selector, SizedSelector, TopK)
    from briefing.stats import CompactionStats, FoldStats
    from briefing.trajectory import TrajectoryCache


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'briefing' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
