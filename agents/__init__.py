"""agents: who talks. Orchestrator policies, chat backends, workers, token counting.

Depends on `briefing` (lazily, for local models); knows nothing of `rlm` or `repl`.
"""
from agents.backends import (BackendError, BackendTimeout, ChatBackend, ChatResponse, LocalChatBackend,
                             OpenAIChatBackend)
from agents.policies import RLM_SYSTEM_PROMPT, ChunkScanPolicy, LLMPolicy, ScriptedPolicy
from agents.policy import OrchestratorPolicy, RunState, Step, find_code_blocks
from agents.tokens import ModelTokenCounter, TiktokenCounter, count_tokens, counter_for
from agents.recall import LatentRecall, Recall, Recalled, RoutedRecall, TextRecall
from agents.workers import (BriefedWorker, Briefing, BriefingStats, CallContext, PlainWorker, RemoteBriefedWorker,
                            TextWorker, Worker, WorkerAnswer, WorkerPrompt, make_worker, split_chat_template)

__all__ = [
    "OrchestratorPolicy", "RunState", "Step", "find_code_blocks",
    "ChunkScanPolicy", "LLMPolicy", "ScriptedPolicy", "RLM_SYSTEM_PROMPT",
    "ChatBackend", "ChatResponse", "BackendError", "BackendTimeout", "OpenAIChatBackend", "LocalChatBackend",
    "Worker", "WorkerAnswer", "CallContext", "BriefedWorker", "RemoteBriefedWorker", "TextWorker", "PlainWorker",
    "WorkerPrompt",
    "make_worker",
    "Briefing", "BriefingStats", "LatentRecall", "Recall", "Recalled", "RoutedRecall", "TextRecall",
    "split_chat_template", "TiktokenCounter", "ModelTokenCounter", "count_tokens", "counter_for",
]
