"""Selection strategies, one small file each."""
from briefing.selection.attention_matching import AttentionMatching
from briefing.selection.coverage import CoverageMatching
from briefing.selection.base import Scores, ScoredSelector, Selector, resolve_budget
from briefing.selection.keep_all import KeepAll
from briefing.selection.keep_none import KeepNone
from briefing.selection.random_keep import RandomKeep
from briefing.selection.recent_window import RecentWindow
from briefing.selection.topk import TopK

__all__ = ["AttentionMatching", "CoverageMatching", "KeepAll", "KeepNone", "RandomKeep", "RecentWindow", "Scores", "ScoredSelector",
           "Selector", "TopK", "resolve_budget"]
