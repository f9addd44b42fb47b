"""briefing: the worker model's KV memory of an orchestrator trajectory.

Load a model, keep a TrajectoryCache of the trajectory text, compact it against each worker prompt with
task-guided Attention Matching, then generate or score continuations on the compacted cache.
"""
from briefing.compaction import compact
from briefing.context import CompactedCache, CompactionStats, plain_context
from briefing.errors import BriefingError, ModelLoadError
from briefing.generation import GenerationConfig, GenerationResult, generate, loglikelihood, token_logprobs
from briefing.model import LoadedModel, load_model
from briefing.selection import (AttentionMatching, Fit, KeepAll, KeepNone, RandomKeep, RecentWindow, ScoredSelector,
                                Scores, Selector, SizedSelector, TopK)
from briefing.trajectory import TrajectoryCache

__all__ = [
    "AttentionMatching", "BriefingError", "CompactedCache", "CompactionStats", "Fit", "GenerationConfig",
    "GenerationResult", "KeepAll", "KeepNone", "LoadedModel", "ModelLoadError", "RandomKeep", "RecentWindow",
    "ScoredSelector", "Scores", "Selector", "SizedSelector", "TopK", "TrajectoryCache", "compact", "generate", "load_model", "loglikelihood", "plain_context",
    "token_logprobs",
]
