"""The global agglomeration as a hierarchy of super-blocks, each merging only what it can decide.

A super-block merges the graph of its inputs (fragments at level 0; at higher levels the segments
its children left frozen) in increasing score order (``neurosam.graph.merging``). A segment that
holds a fragment on one of its faces inside the volume is frozen: its edges beyond the face are
not known here; once the forced edges are merged, so is every segment next to a frozen one (a
piece of a cut basin keeps one pair with each neighbour until its other pieces join). Edges between frozen segments go to the parent (``deferred``), with their
statistics summed, and so do the raw edges that cross the faces (``outgoing``, fragment pairs);
the parent names their ends through its children's ``faces``: every fragment on a face, with its
segment there. A segment never frozen is finished: its edges left all score at or above the
highest threshold, and so does any edge they fold into.

On the way down each super-block turns its parent's segment ids, per threshold, into those of
its own inputs (``segment_table``), so the leaves' tables name every fragment's final segment
and no process holds more than one super-block's graph. Segments are named by their smallest
fragment id, and equal scores merge in the order of the edges' keys (``merging``), so the result
does not depend on the super-blocks.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from neurosam.graph.merging import Graph, below, merge
from neurosam.graph.scoring import Program

#: Faces in the order -z, +z, -y, +y, -x, +x: face ``2 * axis + side``.
FACES = 6


@dataclass
class Edges:
    """Edges by node id (uint64) with their contact statistics and tie-break keys (``Graph.key``);
    ``maxima`` (CSR by ``maxima_offsets``) where the scoring function takes quantiles, else empty."""

    u: np.ndarray
    v: np.ndarray
    maximum: np.ndarray
    minimum: np.ndarray
    total: np.ndarray
    area: np.ndarray
    forced: np.ndarray
    key: np.ndarray
    maxima: np.ndarray
    maxima_offsets: np.ndarray

    @classmethod
    def of(cls, u, v, maximum, minimum, total, area, forced, key, with_maxima: bool) -> Edges:
        """Edges of one fragment pair each: the multiset of maxima is the pair's maximum."""
        count = len(u)
        return cls(
            np.asarray(u, dtype=np.uint64), np.asarray(v, dtype=np.uint64), np.asarray(maximum, dtype=np.float64),
            np.asarray(minimum, dtype=np.float64), np.asarray(total, dtype=np.float64), np.asarray(area, dtype=np.float64),
            np.asarray(forced, dtype=bool), np.asarray(key, dtype=np.uint64),
            np.asarray(maximum, dtype=np.float32) if with_maxima else np.zeros(0, dtype=np.float32),
            np.arange(count + 1, dtype=np.int64) if with_maxima else np.zeros(count + 1, dtype=np.int64),
        )

    def __len__(self) -> int:
        return len(self.u)

    def take(self, keep: np.ndarray) -> Edges:
        index = np.flatnonzero(keep) if np.asarray(keep).dtype == bool else np.asarray(keep)
        lengths = np.diff(self.maxima_offsets)[index]
        starts = self.maxima_offsets[:-1][index]
        elements = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths) + np.arange(lengths.sum())
        return Edges(
            self.u[index], self.v[index], self.maximum[index], self.minimum[index], self.total[index], self.area[index],
            self.forced[index], self.key[index], self.maxima[elements.astype(np.int64)], np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        )

    def with_ends(self, u: np.ndarray, v: np.ndarray) -> Edges:
        return Edges(u, v, *(getattr(self, f.name) for f in fields(self)[2:]))

    @staticmethod
    def concatenate(parts: list[Edges]) -> Edges:
        offsets, elements = [np.zeros(1, dtype=np.int64)], 0
        for part in parts:
            offsets.append(part.maxima_offsets[1:] + elements)
            elements += len(part.maxima)
        names = [f.name for f in fields(Edges)][:-1]
        return Edges(*(np.concatenate([getattr(part, name) for part in parts]) for name in names), np.concatenate(offsets))


@dataclass
class SuperBlock:
    """What one super-block keeps: its inputs and the segment each ends in; its merges in order
    (by the segments' names); its frozen segments with the score of the last merge that made
    each (``complete_at``); the edges it defers and passes through; and per face the fragments on
    it with their segments here."""

    nodes: np.ndarray
    segment: np.ndarray
    kept: np.ndarray
    merged: np.ndarray
    scores: np.ndarray
    frozen: np.ndarray
    complete_at: np.ndarray
    deferred: Edges
    outgoing: Edges
    face_fragments: list[np.ndarray]
    face_segments: list[np.ndarray]

    def save(self, path: Path) -> None:
        """Atomically: a block retried after a crash rewrites it whole."""
        arrays = {f.name: getattr(self, f.name) for f in fields(self) if isinstance(getattr(self, f.name), np.ndarray)}
        for name in ("deferred", "outgoing"):
            arrays.update({f"{name}.{f.name}": getattr(getattr(self, name), f.name) for f in fields(Edges)})
        for face in range(FACES):
            arrays[f"face_fragments.{face}"] = self.face_fragments[face]
            arrays[f"face_segments.{face}"] = self.face_segments[face]
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial.npz")
        np.savez(partial, **arrays)
        partial.replace(path)

    @classmethod
    def load(cls, path: Path) -> SuperBlock:
        with np.load(path) as data:
            edges = {name: Edges(*(data[f"{name}.{f.name}"] for f in fields(Edges))) for name in ("deferred", "outgoing")}
            plain = {f.name: data[f.name] for f in fields(cls) if f.name in data.files}
            faces = {name: [data[f"{name}.{face}"] for face in range(FACES)] for name in ("face_fragments", "face_segments")}
        return cls(**plain, **edges, **faces)


def agglomerate_super_block(
    nodes: np.ndarray, edges: Edges, outgoing: Edges, face_fragments: list[np.ndarray], face_nodes: list[np.ndarray],
    program: Program, threshold: float,
) -> SuperBlock:
    """Merge one super-block's graph up to ``threshold``; the nodes holding face fragments are
    frozen. ``nodes`` are sorted ids; every edge's ends and every face node are among them."""
    frozen = np.zeros(len(nodes), dtype=bool)
    for ids in face_nodes:
        frozen[np.searchsorted(nodes, ids)] = True
    graph = Graph(
        len(nodes), np.searchsorted(nodes, edges.u), np.searchsorted(nodes, edges.v), edges.maximum, edges.minimum,
        edges.total, edges.area, edges.forced,
        edges.maxima if program.uses_maxima else None, edges.maxima_offsets if program.uses_maxima else None, edges.key,
    )
    result = merge(graph, program, threshold, frozen)
    name = nodes[result.smallest]
    roots = np.flatnonzero((result.root == np.arange(len(nodes))) & result.frozen)
    roots = roots[np.argsort(name[roots])]
    deferred = result.deferred
    deferred_edges = Edges(
        name[deferred.u], name[deferred.v], deferred.maximum, deferred.minimum, deferred.total, deferred.area,
        deferred.forced, deferred.key,
        deferred.maxima if program.uses_maxima else np.zeros(0, dtype=np.float32),
        deferred.maxima_offsets if program.uses_maxima else np.zeros(len(deferred.u) + 1, dtype=np.int64),
    )
    segment = name[result.root]
    return SuperBlock(
        nodes, segment, nodes[result.kept], nodes[result.merged], result.scores, name[roots], result.complete_at[roots],
        deferred_edges, outgoing, list(face_fragments),
        [segment[np.searchsorted(nodes, ids)] for ids in face_nodes],
    )


def parent_inputs(children: list[SuperBlock], on_face: list[list[bool]]):
    """A parent's graph from its children's: their deferred edges, and the raw edges between
    them named by the children's face maps; raw edges leaving the parent pass on. ``on_face[c][f]``
    says whether child c's face f lies on the parent's face f.

    Returns (nodes, edges, outgoing, face fragments, face nodes), as ``agglomerate_super_block`` takes them."""
    known = np.concatenate([block.face_fragments[f] for block in children for f in range(FACES)])
    names = np.concatenate([block.face_segments[f] for block in children for f in range(FACES)])
    known, first = np.unique(known, return_index=True)
    names = names[first]
    raw = Edges.concatenate([block.outgoing for block in children])
    position = np.minimum(np.searchsorted(known, raw.v), max(len(known) - 1, 0))
    inside = known[position] == raw.v if len(known) else np.zeros(len(raw), dtype=bool)
    crossing = raw.take(inside)
    crossing = crossing.with_ends(names[np.searchsorted(known, crossing.u)], names[position[inside]])
    edges = Edges.concatenate([*(block.deferred for block in children), crossing])
    nodes = np.unique(np.concatenate([block.frozen for block in children]))
    face_fragments = [
        np.concatenate([block.face_fragments[f] for block, faces in zip(children, on_face) if faces[f]] or [np.zeros(0, np.uint64)])
        for f in range(FACES)
    ]
    face_nodes = [names[np.searchsorted(known, ids)] for ids in face_fragments]
    return nodes, edges, raw.take(~inside), face_fragments, face_nodes


def segment_table(block: SuperBlock, thresholds: list[float], parent: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """The final segment of each of the block's inputs at each threshold (thresholds x nodes),
    from its merges and its parent's table (ids, thresholds x ids) of its frozen segments.

    At threshold t an input's segment here is the component of the merges below t. A frozen
    segment the parent merges below t was complete by then (the parent merges it only above
    the score of every merge that made it), so its inputs take the parent's id; else they keep
    the id found here."""
    nodes = block.nodes
    table = np.empty((len(thresholds), len(nodes)), dtype=np.uint64)
    kept = np.searchsorted(nodes, block.kept)
    merged = np.searchsorted(nodes, block.merged)
    segment_index = np.searchsorted(block.frozen, block.segment)
    in_frozen = (segment_index < len(block.frozen)) & (block.frozen[np.minimum(segment_index, max(len(block.frozen) - 1, 0))] == block.segment) if len(block.frozen) else np.zeros(len(nodes), dtype=bool)
    for row, threshold in enumerate(thresholds):
        made = below(block.scores, threshold)
        graph = coo_matrix((np.ones(made.sum()), (kept[made], merged[made])), shape=(len(nodes), len(nodes)))
        _, component = connected_components(graph, directed=False)
        smallest = np.full(component.max(initial=-1) + 1, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(smallest, component, np.arange(len(nodes)))
        table[row] = nodes[smallest[component]]
        if parent is None:
            continue
        ids, parent_table = parent
        complete = in_frozen.copy()
        complete[in_frozen] = below(block.complete_at[segment_index[in_frozen]], threshold)
        where = np.minimum(np.searchsorted(ids, block.segment), max(len(ids) - 1, 0))
        complete &= ids[where] == block.segment if len(ids) else False
        table[row, complete] = parent_table[row, where[complete]]
    return table
