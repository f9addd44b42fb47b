"""Chat backends for LLM orchestrator policies."""
from agents.backends.base import BackendError, BackendTimeout, ChatBackend, ChatResponse, request_deadline
from agents.backends.local import LocalChatBackend
from agents.backends.openai_compat import OpenAIChatBackend

__all__ = ["BackendError", "BackendTimeout", "ChatBackend", "ChatResponse", "LocalChatBackend", "OpenAIChatBackend",
           "request_deadline"]
