"""Selection strategies, one small file each; `base` holds what a custom selector builds on."""
from briefing.selection.attention_matching import AttentionMatching
from briefing.selection.base import Fit, Scores, ScoredSelector, Selector, SizedSelector, keep_count
from briefing.selection.coverage import CoverageMatching
from briefing.selection.keep_all import KeepAll
from briefing.selection.keep_none import KeepNone
from briefing.selection.random_keep import RandomKeep
from briefing.selection.recent_window import RecentWindow
from briefing.selection.topk import TopK

__all__ = ["AttentionMatching", "CoverageMatching", "Fit", "KeepAll", "KeepNone", "RandomKeep", "RecentWindow",
           "Scores", "ScoredSelector",
           "Selector", "SizedSelector", "TopK", "keep_count"]
