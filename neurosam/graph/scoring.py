"""waterz scoring functions, checked against waterz's grammar before any work.

neurosam scores edges itself, from the RAG's statistics (``neurosam.graph.agglomeration``), in
waterz's scoring language; waterz would paste such a string verbatim into C++ and compile it,
so only the accumulators and operators waterz defines are accepted, with their parameters
(quantiles, bin counts, k) as plain integers, composed the way waterz composes them; anything
else is refused with the reason.
"""

from __future__ import annotations

import re

REGION_GRAPH = "RegionGraphType"
SCORE = "ScoreValue"
UNARY = ("OneMinus", "Invert", "Square")
BINARY = ("Add", "Subtract", "Multiply", "Divide", "Step")
#: leaf -> parameter kinds: a type name, or ("int", low, high), or "bool"; "?" marks the optional tail
LEAVES: dict[str, tuple] = {
    "MinSize": (REGION_GRAPH,),
    "MaxSize": (REGION_GRAPH,),
    "ContactArea": (REGION_GRAPH,),
    "Random": (REGION_GRAPH,),
    "MinAffinity": (REGION_GRAPH, SCORE),
    "MaxAffinity": (REGION_GRAPH, SCORE),
    "MeanAffinity": (REGION_GRAPH, SCORE),
    "HistogramQuantileAffinity": (REGION_GRAPH, ("int", 0, 100), SCORE, ("int", 1, 65536), "?", "bool"),
    "QuantileAffinity": (REGION_GRAPH, ("int", 0, 100), SCORE, "?", "bool"),
    "MeanMaxKAffinity": (REGION_GRAPH, ("int", 1, 1_000_000), SCORE),
    "Constant": (REGION_GRAPH, ("int", -1_000_000, 1_000_000)),
}
TOKEN = re.compile(r"\s*(?:([A-Za-z_][A-Za-z0-9_]*)|(-?\d+)|([<>,]))")


class ScoringFunctionError(ValueError):
    pass


def _tokens(text: str) -> list[str]:
    tokens, position = [], 0
    text = text.strip()
    while position < len(text):
        match = TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise ScoringFunctionError(f"unexpected {text[position:position + 10]!r}")
        tokens.append(next(group for group in match.groups() if group is not None))
        position = match.end()
    return tokens


class _Parser:
    def __init__(self, tokens: list[str]):
        self.tokens = tokens
        self.position = 0

    def take(self, expected: str | None = None) -> str:
        if self.position >= len(self.tokens):
            raise ScoringFunctionError(f"ends early{f', expected {expected!r}' if expected else ''}")
        token = self.tokens[self.position]
        if expected is not None and token != expected:
            raise ScoringFunctionError(f"expected {expected!r}, found {token!r}")
        self.position += 1
        return token

    def function(self) -> tuple:
        """(name, arguments): operators' arguments are functions, leaves' their parameters."""
        name = self.take()
        self.take("<")
        if name in UNARY:
            arguments = [self.function()]
        elif name in BINARY:
            arguments = [self.function()]
            self.take(",")
            arguments.append(self.function())
        elif name in LEAVES:
            arguments = self.parameters(name)
        else:
            known = sorted((*UNARY, *BINARY, *LEAVES))
            raise ScoringFunctionError(f"{name!r} is not a waterz scoring function or operator (known: {', '.join(known)})")
        self.take(">")
        return name, arguments

    def parameters(self, name: str) -> list[str]:
        kinds, values, optional = LEAVES[name], [], False
        for kind in kinds:
            if kind == "?":
                optional = True
                continue
            if optional and self.tokens[self.position : self.position + 1] == [">"]:
                break
            if values:
                self.take(",")
            values.append(self.parameter(name, kind))
        return values

    def parameter(self, name: str, kind) -> str:
        token = self.take()
        if isinstance(kind, str) and kind != "bool":
            if token != kind:
                raise ScoringFunctionError(f"{name} takes {kind} here, not {token!r}")
        elif kind == "bool":
            if token not in ("true", "false"):
                raise ScoringFunctionError(f"{name} takes true or false here, not {token!r}")
        else:
            _, low, high = kind
            if not re.fullmatch(r"-?\d+", token) or not low <= int(token) <= high:
                raise ScoringFunctionError(f"{name} takes an integer in [{low}, {high}] here, not {token!r}")
        return token


def parse_scoring_function(text: str) -> tuple:
    """The function as a tree of (name, arguments); raises ScoringFunctionError saying what is wrong."""
    parser = _Parser(_tokens(text))
    tree = parser.function()
    if parser.position != len(parser.tokens):
        raise ScoringFunctionError(f"unexpected {' '.join(parser.tokens[parser.position:])!r} after the function")
    return tree
