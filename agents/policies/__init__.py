"""Orchestrator policies, one per file (LLM-driven and scripted)."""
from agents.policies.chunk_scan import ChunkScanPolicy
from agents.policies.llm import RLM_SYSTEM_PROMPT, LLMPolicy
from agents.policies.scripted import ScriptedPolicy

__all__ = ["ChunkScanPolicy", "LLMPolicy", "RLM_SYSTEM_PROMPT", "ScriptedPolicy"]
