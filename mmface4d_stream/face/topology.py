"""MediaPipe FaceMesh topology: the 468-point triangle list built from MediaPipe's own edge set.

The upstream MMFace4D code ships `faces.pkl` (854 triangles over the 468 FaceMesh points). The same
triangles are exactly the 3-cliques of the undirected graph given by
`mediapipe.solutions.face_mesh_connections.FACEMESH_TESSELATION`, so the project rebuilds them from
the installed package instead of shipping the file. The upstream file lists each triangle with
sorted indices (no consistent winding); here the triangles are wound consistently so that
`cross(b - a, c - a)` points out of the face (towards a camera that sees the face).
"""

from __future__ import annotations

from collections import deque
from functools import lru_cache

import numpy as np

def mesh_edges(triangles: np.ndarray) -> np.ndarray:
    """Unique undirected edges (E, 2) int64 (i < j) of any triangle list (T, 3)."""
    triangles = np.asarray(triangles, dtype=np.int64)
    e = np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]])
    return np.unique(np.sort(e, axis=1), axis=0)


N_FACEMESH_POINTS = 468
N_FACEMESH_TRIANGLES = 854
# FaceMesh points of the mouth corners: the subject's right, then left.
MOUTH_CORNERS = (61, 291)

# One triangle (around the nose tip) in the outward winding, read off FaceMesh output on a frontal
# face: in image coordinates (x right, y down, z away from the camera) its normal has negative z.
# Propagation over the connected mesh fixes every other triangle's winding from this one.
_REFERENCE_TRIANGLE: tuple[int, int, int] = (1, 4, 44)


def _tesselation_edges() -> list[tuple[int, int]]:
    from mediapipe.python.solutions import face_mesh_connections

    return [(int(a), int(b)) for a, b in face_mesh_connections.FACEMESH_TESSELATION]


def _triangles_from_edges(edges: list[tuple[int, int]], n_points: int) -> np.ndarray:
    """All 3-cliques of an undirected edge list, each row sorted, rows sorted; (F, 3) int64."""
    neighbours: list[set[int]] = [set() for _ in range(n_points)]
    for a, b in edges:
        if a != b:
            neighbours[a].add(b)
            neighbours[b].add(a)
    triangles = []
    for a in range(n_points):
        for b in neighbours[a]:
            if b <= a:
                continue
            for c in neighbours[a] & neighbours[b]:
                if c > b:
                    triangles.append((a, b, c))
    return np.array(sorted(triangles), dtype=np.int64)


def _covering_triangles(triangles: np.ndarray) -> list[int]:
    """Indices of triangles whose three edges each have more than two faces.

    The 3-cliques of FaceMesh's edge graph include two such triangles (49-64-129 and its mirror
    279-294-358): each covers a fan of three real triangles around an inner vertex. The upstream
    `faces.pkl` keeps them, so the list does too; they are wound like the fan they cover.
    """
    edge_count: dict[frozenset, int] = {}
    for a, b, c in triangles.tolist():
        for e in ((a, b), (b, c), (c, a)):
            edge_count[frozenset(e)] = edge_count.get(frozenset(e), 0) + 1
    return [
        f
        for f, (a, b, c) in enumerate(triangles.tolist())
        if all(edge_count[frozenset(e)] > 2 for e in ((a, b), (b, c), (c, a)))
    ]


def _orient_consistently(triangles: np.ndarray, reference: tuple[int, int, int]) -> np.ndarray:
    """Wind triangles so that every shared edge is traversed in opposite directions by its two faces.

    Breadth-first over face adjacency from `reference` (which keeps the given winding); covering
    triangles (see `_covering_triangles`) are left out of the walk and then wound like the fan they
    cover. Raises ValueError when the rest is not a connected orientable manifold, or when
    `reference` is not a face.
    """
    tris = [list(t) for t in triangles.tolist()]
    covers = set(_covering_triangles(triangles))
    edge_faces: dict[frozenset, list[int]] = {}
    for f, (a, b, c) in enumerate(tris):
        if f in covers:
            continue
        for e in ((a, b), (b, c), (c, a)):
            edge_faces.setdefault(frozenset(e), []).append(f)
    if any(len(fs) > 2 for fs in edge_faces.values()):
        raise ValueError("the FaceMesh triangle set is not a manifold: an edge has more than two faces")
    key = sorted(reference)
    start = next((f for f, t in enumerate(tris) if sorted(t) == key and f not in covers), None)
    if start is None:
        raise ValueError(f"reference triangle {reference} is not a face of the mesh")
    tris[start] = list(reference)
    oriented = [f in covers for f in range(len(tris))]
    oriented[start] = True
    queue = deque([start])
    while queue:
        f = queue.popleft()
        a, b, c = tris[f]
        for u, v in ((a, b), (b, c), (c, a)):
            for g in edge_faces[frozenset((u, v))]:
                if g == f:
                    continue
                t = tris[g]
                # A consistently wound neighbour traverses the shared edge as v -> u.
                directed = {(t[0], t[1]), (t[1], t[2]), (t[2], t[0])}
                if oriented[g]:
                    if (u, v) in directed:
                        raise ValueError("the FaceMesh triangle set is not orientable")
                    continue
                if (u, v) in directed:
                    tris[g] = [t[0], t[2], t[1]]
                oriented[g] = True
                queue.append(g)
    if not all(oriented):
        raise ValueError("the FaceMesh triangle set is not connected")
    for f in covers:
        a, b, c = tris[f]
        # The fan face on edge a-b has its third vertex joined to c; the cover overlaps it, so it
        # traverses a-b in the same direction.
        fan = [
            g
            for g in edge_faces[frozenset((a, b))]
            if any(frozenset((c, x)) in edge_faces for x in tris[g] if x not in (a, b))
        ]
        if len(fan) != 1:
            raise ValueError("cannot wind a covering triangle of the FaceMesh triangle set")
        t = tris[fan[0]]
        if (a, b) not in {(t[0], t[1]), (t[1], t[2]), (t[2], t[0])}:
            tris[f] = [a, c, b]
    return np.array(tris, dtype=np.int64)


@lru_cache(maxsize=1)
def _cached_triangles() -> np.ndarray:
    triangles = _triangles_from_edges(_tesselation_edges(), N_FACEMESH_POINTS)
    oriented = _orient_consistently(triangles, _REFERENCE_TRIANGLE).astype(np.int32)
    oriented.setflags(write=False)
    return oriented


def mediapipe_triangles() -> np.ndarray:
    """Triangles of the 468-point MediaPipe face mesh: (854, 3) int32 vertex indices.

    Same set of triangles as the upstream `faces.pkl`, wound consistently outwards: with points in
    a camera frame (x right, y down, z forward) on a face that looks at the camera,
    `cross(p[b] - p[a], p[c] - p[a])` has negative z. Rows are in a fixed order (sorted by their
    smallest index). Returns a fresh writable copy.
    """
    return np.array(_cached_triangles(), dtype=np.int32, copy=True)
