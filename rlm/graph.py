"""Call graph: a networkx DiGraph of agents and the calls between them.

Nodes are agents, one per run and role: ``"<run_id>/orchestrator"`` and ``"<run_id>/worker"``
(attributes: role, name, depth, run_id). Edges aggregate calls from an orchestrator to what it
called: its worker, or, for a worker that is itself an RLM run, the child run's orchestrator
(attributes: calls, input_tokens, output_tokens, text_handoff_tokens, latency_s, call_ids).
One graph serves a whole run tree.
"""
from __future__ import annotations

import threading
from typing import Any

import networkx as nx
from pydantic import BaseModel, Field


class EdgeSummary(BaseModel):
    source: str
    target: str
    calls: int
    input_tokens: int
    output_tokens: int
    text_handoff_tokens: int


class GraphSummary(BaseModel):
    agents: int = 0
    calls: int = 0
    depth: int = 0                          # longest chain of calls (edges)
    calls_per_agent: dict[str, int] = Field(default_factory=dict)   # calls received
    edges: list[EdgeSummary] = Field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"{self.agents} agents, {self.calls} calls, depth {self.depth}"]
        for e in self.edges:
            out.append(f"  {e.source} -> {e.target}: {e.calls} calls, {e.input_tokens} input tokens "
                       f"(text handoff {e.text_handoff_tokens}), {e.output_tokens} output tokens")
        return out


class CallGraph:
    def __init__(self) -> None:
        self.g = nx.DiGraph()
        self._lock = threading.Lock()

    @staticmethod
    def node(run_id: str, role: str) -> str:
        return f"{run_id}/{role}"

    def add_agent(self, run_id: str, role: str, name: str, depth: int) -> str:
        nid = self.node(run_id, role)
        with self._lock:
            if nid not in self.g:
                self.g.add_node(nid, role=role, name=name, depth=depth, run_id=run_id)
        return nid

    def add_call(self, source: str, target: str, call_id: str, input_tokens: int = 0, output_tokens: int = 0,
                 text_handoff_tokens: int = 0, latency_s: float = 0.0) -> None:
        with self._lock:
            if not self.g.has_edge(source, target):
                self.g.add_edge(source, target, calls=0, input_tokens=0, output_tokens=0, text_handoff_tokens=0,
                                latency_s=0.0, call_ids=[])
            d = self.g.edges[source, target]
            d["calls"] += 1
            d["input_tokens"] += int(input_tokens)
            d["output_tokens"] += int(output_tokens)
            d["text_handoff_tokens"] += int(text_handoff_tokens)
            d["latency_s"] = round(d["latency_s"] + float(latency_s), 6)
            d["call_ids"].append(call_id)

    def summary(self) -> GraphSummary:
        return summarize(self.g)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self.g)


def to_dict(g: nx.DiGraph) -> dict[str, Any]:
    return {"nodes": [{"id": n, **d} for n, d in g.nodes(data=True)],
            "edges": [{"source": u, "target": v, **d} for u, v, d in g.edges(data=True)]}


def from_dict(data: dict[str, Any]) -> nx.DiGraph:
    g = nx.DiGraph()
    for n in data.get("nodes", []):
        n = dict(n)
        g.add_node(n.pop("id"), **n)
    for e in data.get("edges", []):
        e = dict(e)
        g.add_edge(e.pop("source"), e.pop("target"), **e)
    return g


def summarize(g: nx.DiGraph) -> GraphSummary:
    edges = [EdgeSummary(source=u, target=v, calls=d.get("calls", 0), input_tokens=d.get("input_tokens", 0),
                         output_tokens=d.get("output_tokens", 0), text_handoff_tokens=d.get("text_handoff_tokens", 0))
             for u, v, d in g.edges(data=True)]
    per_agent = {n: sum(d.get("calls", 0) for _, _, d in g.in_edges(n, data=True)) for n in g.nodes}
    depth = nx.dag_longest_path_length(g) if g.number_of_edges() and nx.is_directed_acyclic_graph(g) else 0
    return GraphSummary(agents=g.number_of_nodes(), calls=sum(e.calls for e in edges), depth=depth,
                        calls_per_agent={k: v for k, v in per_agent.items() if v}, edges=edges)
