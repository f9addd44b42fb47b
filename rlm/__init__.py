"""rlm: the runtime. Orchestrator loop, trajectory events, budgets, JSONL logs, call graph, CLI."""
import sys

from agents import events
from agents.events import (CellOutput, CodeCell, Event, Final, Notice, OrchestratorMessage, RunStart, WorkerCall,
                           parse_event, render)
from rlm.graph import CallGraph, GraphSummary
from rlm.recursive import RLMWorker
from rlm.result import STOP_REASONS, AgentUsage, Budgets, RunResult
from rlm.runtime import RLM, WORKER_ERROR_PREFIX, BudgetExhausted, RunInterrupted, WorkerError
from rlm.trajectory import JsonlLog, Trajectory, read_log, replay

__all__ = [
    "RLM", "RLMWorker", "Budgets", "RunResult", "AgentUsage", "STOP_REASONS", "BudgetExhausted", "WorkerError",
    "WORKER_ERROR_PREFIX", "RunInterrupted",
    "Trajectory", "JsonlLog", "read_log", "replay", "CallGraph", "GraphSummary",
    "Event", "RunStart", "OrchestratorMessage", "CodeCell", "CellOutput", "WorkerCall", "Notice", "Final",
    "parse_event", "render",
]

# The event types live in the lowest layer that reads them (agents); `rlm.events` is the same module.
sys.modules.setdefault("rlm.events", events)
