"""Method adapters: one module per method, all implementing :class:`Method`."""

from causcell_bench.methods.base import UNEXPLAINED, Capabilities, ConceptEmbeddings, Method

__all__ = ["UNEXPLAINED", "Capabilities", "ConceptEmbeddings", "Method"]
