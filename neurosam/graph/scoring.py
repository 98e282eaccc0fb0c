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


# The merge loop's opcodes (``neurosam.graph.merging``): leaves push a statistic, operators
# replace the top one or two values.
MAX, MIN, MEAN, AREA, CONSTANT, QUANTILE, HISTOGRAM_QUANTILE = range(7)
ONE_MINUS, INVERT, SQUARE = 10, 11, 12
ADD, SUBTRACT, MULTIPLY, DIVIDE, STEP = 20, 21, 22, 23, 24
OPCODES = {
    "MaxAffinity": MAX, "MinAffinity": MIN, "MeanAffinity": MEAN, "ContactArea": AREA, "Constant": CONSTANT,
    "QuantileAffinity": QUANTILE, "HistogramQuantileAffinity": HISTOGRAM_QUANTILE,
    "OneMinus": ONE_MINUS, "Invert": INVERT, "Square": SQUARE,
    "Add": ADD, "Subtract": SUBTRACT, "Multiply": MULTIPLY, "Divide": DIVIDE, "Step": STEP,
}
#: Leaves whose value for a folded edge lies between the values of its parts.
BETWEEN_PARTS = ("MaxAffinity", "MinAffinity", "MeanAffinity", "QuantileAffinity", "HistogramQuantileAffinity")


class Program:
    """A scoring function as the merge loop runs it: opcodes in postfix order, each with two
    parameters (a constant; a quantile and a bin count)."""

    def __init__(self, text: str):
        import numpy as np

        codes, parameters = [], []
        self.uses_maxima, self.bins = False, 0

        def emit(node) -> None:
            name, arguments = node
            if name in ("OneMinus", "Invert", "Square", *BINARY):
                for argument in arguments:
                    emit(argument)
                codes.append(OPCODES[name])
                parameters.append((0.0, 0.0))
            elif name in ("MaxAffinity", "MinAffinity", "MeanAffinity", "ContactArea"):
                codes.append(OPCODES[name])
                parameters.append((0.0, 0.0))
            elif name == "Constant":
                codes.append(CONSTANT)
                parameters.append((float(arguments[1]), 0.0))
            elif name in ("QuantileAffinity", "HistogramQuantileAffinity"):
                if arguments[-1] == "false":
                    raise ScoringFunctionError(
                        f"{name} with InitWithMax false needs every affinity of a contact, which the RAG does not keep; "
                        "leave InitWithMax at its default (true)"
                    )
                self.uses_maxima = True
                bins = int(arguments[3]) if name == "HistogramQuantileAffinity" else 0
                self.bins = max(self.bins, bins)
                codes.append(OPCODES[name])
                parameters.append((float(arguments[1]), float(bins)))
            else:
                raise ScoringFunctionError(
                    f"{name} cannot be scored from the RAG's edge statistics (max, min, mean, contact area, "
                    "and quantiles of the pairs' maxima); use one of those"
                )

        self.tree = parse_scoring_function(text)
        emit(self.tree)
        self.codes = np.array(codes, dtype=np.int64)
        self.parameters = np.array(parameters, dtype=np.float64).reshape(-1, 2)


def inexact_reason(text: str) -> str | None:
    """Why merging super-block by super-block cannot equal merging the whole graph with this
    function, or None when it can. It can when the score is a monotone function of one statistic
    whose value for a folded edge lies between its parts' (the affinities' maximum, minimum,
    mean or a quantile of the pairs' maxima): then a folded edge never scores below both parts,
    scores pop in increasing order, and a super-block decides every merge not touching a region
    that reaches beyond it. Sizes are out: they change with merges far away."""
    tree = parse_scoring_function(text)
    leaves: list[str] = []

    def monotone(node) -> tuple[float, float] | None:
        """The range of the subtree's values, None where it is not monotone in its one leaf."""
        name, arguments = node
        if name in LEAVES:
            leaves.append(name)
            if name == "Constant":
                value = float(arguments[1])
                return value, value
            return (0.0, 1.0) if name in BETWEEN_PARTS else None
        if name in UNARY:
            inner = monotone(arguments[0])
            if inner is None:
                return None
            a, b = inner
            if name == "OneMinus":
                return 1.0 - b, 1.0 - a
            if name == "Square":
                return None if a < 0 < b else (min(a * a, b * b), max(a * a, b * b))
            return None if a <= 0 <= b else (min(1 / a, 1 / b), max(1 / a, 1 / b))
        left, right = monotone(arguments[0]), monotone(arguments[1])
        if left is None or right is None:
            return None
        constants = [side for side, sub in zip((left, right), arguments) if sub[0] == "Constant"]
        if not constants:
            return None
        (a, b), (c, d) = left, right
        if name == "Add":
            return a + c, b + d
        if name == "Subtract":
            return a - d, b - c
        if name == "Multiply":
            products = [a * c, a * d, b * c, b * d]
            return min(products), max(products)
        if name == "Divide":
            if c <= 0 <= d:
                return None
            quotients = [a / c, a / d, b / c, b / d]
            return min(quotients), max(quotients)
        return 0.0, 1.0  # Step

    if monotone(tree) is None or sum(leaf != "Constant" for leaf in leaves) > 1:
        return (
            "the hierarchical agglomeration is exact only for a monotone function of one of "
            f"{', '.join(BETWEEN_PARTS)} (and constants), and this is not one"
        )
    return None
