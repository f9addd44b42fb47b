"""Reading orchestrator text: fenced code, and FINAL(...) / FINAL_VAR(name) written outside code."""
from __future__ import annotations

import ast
import re

from agents.policy import find_code_blocks

__all__ = ["find_code_blocks", "find_final", "strip_code"]

_ANY_FENCE = re.compile(r"```.*?(?:```|\Z)", re.DOTALL)
_FINAL_VAR = re.compile(r"^[ \t>*_]*FINAL_VAR\(\s*(.*?)\s*\)", re.MULTILINE | re.DOTALL)
_FINAL = re.compile(r"^[ \t>*_]*FINAL\s*\(", re.MULTILINE)


def strip_code(text: str) -> str:
    """The text with every fenced block (any language, unterminated ones too) removed."""
    return _ANY_FENCE.sub("", text or "")


def _unquote(s: str) -> str:
    s = s.strip()
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "\"'":
        try:
            value = ast.literal_eval(s)
            if isinstance(value, str):
                return value
        except (ValueError, SyntaxError):
            return s[1:-1]
    return s


def find_final(text: str) -> tuple[str, str] | None:
    """("FINAL_VAR", name) or ("FINAL", raw value) from a line starting with it, outside code.

    As in the RLM reference: FINAL_VAR wins over FINAL, the FINAL value runs to the matching
    closing parenthesis (or the end of the text when unbalanced), a quoted string is unquoted.
    """
    t = strip_code(text)
    m = _FINAL_VAR.search(t)
    if m:
        return "FINAL_VAR", _unquote(m.group(1))
    m = _FINAL.search(t)
    if not m:
        return None
    start = depth = m.end()
    depth = 1
    for i in range(start, len(t)):
        if t[i] == "(":
            depth += 1
        elif t[i] == ")":
            depth -= 1
            if depth == 0:
                return "FINAL", _unquote(t[start:i])
    return "FINAL", _unquote(t[start:])
