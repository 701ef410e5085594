"""Mesh utilities: area-weighted vertex normals (the renderer's), boundary loops and Loop
subdivision as a sparse matrix (the sample subject's).

Reference: C. Loop, "Smooth subdivision surfaces based on triangles", MSc thesis, University of
Utah, 1987.
"""

from __future__ import annotations


import numpy as np
import scipy.sparse

__all__ = ["boundary_loops", "loop_subdivision_matrix", "face_incidence", "vertex_normals"]


def boundary_loops(faces: np.ndarray) -> list[np.ndarray]:
    """Closed boundary loops of a manifold triangle mesh, each an int array of vertex ids in order.

    A boundary edge belongs to one face; loops follow the faces' winding. Raises ValueError when a
    boundary vertex has more than one outgoing boundary edge (a non-manifold boundary).
    """
    f = np.asarray(faces)
    directed = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    key = np.minimum(directed[:, 0], directed[:, 1]) * (int(f.max()) + 1) + np.maximum(directed[:, 0], directed[:, 1])
    _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    boundary = directed[counts[inverse] == 1]
    nxt: dict[int, int] = {}
    for a, b in boundary.tolist():
        if a in nxt:
            raise ValueError(f"vertex {a} starts two boundary edges: the mesh boundary is not manifold")
        nxt[a] = b
    loops = []
    seen: set[int] = set()
    for start in sorted(nxt):
        if start in seen:
            continue
        loop = [start]
        seen.add(start)
        cur = nxt[start]
        while cur != start:
            if cur in seen or cur not in nxt:
                raise ValueError("boundary edges do not form closed loops")
            loop.append(cur)
            seen.add(cur)
            cur = nxt[cur]
        loops.append(np.array(loop, dtype=np.int64))
    return loops


def loop_subdivision_matrix(faces: np.ndarray, n_vertices: int) -> tuple[scipy.sparse.csr_matrix, np.ndarray]:
    """One level of Loop subdivision as a linear map.

    Args:
        faces: (F, 3) int, a manifold triangle mesh (boundaries allowed), consistently wound.
        n_vertices: N.
    Returns:
        (S, new_faces): S sparse (N + E, N) float64 so that new_vertices = S @ vertices (any
        per-vertex attribute), vertices keep their index and edge points follow (E edges);
        new_faces (4F, 3) int64 with the same winding.
    """
    f = np.asarray(faces, dtype=np.int64)
    n = int(n_vertices)
    edges = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    opposite = np.concatenate([f[:, 2], f[:, 0], f[:, 1]])
    lo, hi = np.minimum(edges[:, 0], edges[:, 1]), np.maximum(edges[:, 0], edges[:, 1])
    key = lo * n + hi
    ukey, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    if counts.max() > 2:
        raise ValueError("Loop subdivision needs a manifold mesh: an edge has more than two faces")
    n_edges = len(ukey)
    ea, eb = ukey // n, ukey % n
    edge_id = n + inverse  # new vertex id of each directed half-edge's edge

    rows, cols, vals = [], [], []
    # Odd (edge) vertices: 3/8 endpoints + 1/8 opposite vertices inside; midpoint on the boundary.
    is_boundary_edge = counts == 1
    w_end = np.where(is_boundary_edge, 0.5, 0.375)
    e_rows = n + np.arange(n_edges)
    rows += [e_rows, e_rows]
    cols += [ea, eb]
    vals += [w_end, w_end]
    interior_half = ~is_boundary_edge[inverse]
    rows.append(edge_id[interior_half])
    cols.append(opposite[interior_half])
    vals.append(np.full(interior_half.sum(), 0.125))

    # Even vertices: valence-weighted average with the neighbours; boundary: 1/8, 3/4, 1/8 along it.
    neighbours = [set() for _ in range(n)]
    for a, b in zip(ea.tolist(), eb.tolist()):
        neighbours[a].add(b)
        neighbours[b].add(a)
    boundary_neighbours = [[] for _ in range(n)]
    for a, b in zip(ea[is_boundary_edge].tolist(), eb[is_boundary_edge].tolist()):
        boundary_neighbours[a].append(b)
        boundary_neighbours[b].append(a)
    for v in range(n):
        nb = sorted(neighbours[v])
        if not nb:
            rows.append([v])
            cols.append([v])
            vals.append([1.0])
        elif boundary_neighbours[v]:
            bn = boundary_neighbours[v]
            if len(bn) != 2:
                raise ValueError(f"vertex {v} lies on {len(bn) // 2 or 1} boundary curves: not a manifold boundary")
            rows.append([v, v, v])
            cols.append([v, bn[0], bn[1]])
            vals.append([0.75, 0.125, 0.125])
        else:
            k = len(nb)
            beta = 3.0 / 16.0 if k == 3 else 3.0 / (8.0 * k)
            rows.append([v] * (k + 1))
            cols.append([v] + nb)
            vals.append([1.0 - k * beta] + [beta] * k)
    S = scipy.sparse.csr_matrix(
        (np.concatenate([np.asarray(x, dtype=np.float64) for x in vals]),
         (np.concatenate([np.asarray(x) for x in rows]), np.concatenate([np.asarray(x) for x in cols]))),
        shape=(n + n_edges, n),
    )
    F = len(f)
    e0, e1, e2 = edge_id[:F], edge_id[F : 2 * F], edge_id[2 * F :]  # edges (a,b), (b,c), (c,a)
    a, b, c = f[:, 0], f[:, 1], f[:, 2]
    new_faces = np.concatenate(
        [np.stack([a, e0, e2], 1), np.stack([b, e1, e0], 1), np.stack([c, e2, e1], 1), np.stack([e0, e1, e2], 1)]
    )
    return S, new_faces


def face_incidence(faces: np.ndarray, n_vertices: int):
    """Sparse (N, F) matrix with a 1 where vertex n is a corner of face f (for `vertex_normals`)."""
    import scipy.sparse

    f = np.asarray(faces)
    cols = np.repeat(np.arange(len(f)), 3)
    data = np.ones(f.size, dtype=np.float32)
    return scipy.sparse.csr_matrix((data, (f.ravel(), cols)), shape=(int(n_vertices), len(f)))


def vertex_normals(vertices: np.ndarray, faces: np.ndarray, incidence=None) -> np.ndarray:
    """Area-weighted unit vertex normals.

    Args:
        vertices: (N, 3) float, any unit.
        faces: (F, 3) int vertex indices; a face's normal follows its winding (right hand).
        incidence: `face_incidence(faces, N)`, to reuse across frames of one topology.
    Returns:
        (N, 3) float32 unit normals (zero vectors for unreferenced vertices).
    """
    v = np.asarray(vertices, dtype=np.float32)
    f = np.asarray(faces)
    if incidence is None:
        incidence = face_incidence(f, len(v))
    vt = np.ascontiguousarray(v.T)
    a = vt[:, f[:, 0]]
    e1 = vt[:, f[:, 1]] - a
    e2 = vt[:, f[:, 2]] - a
    fn = np.empty((len(f), 3), dtype=np.float32)
    fn[:, 0] = e1[1] * e2[2] - e1[2] * e2[1]
    fn[:, 1] = e1[2] * e2[0] - e1[0] * e2[2]
    fn[:, 2] = e1[0] * e2[1] - e1[1] * e2[0]
    n = np.asarray(incidence @ fn, dtype=np.float32)
    norm = np.sqrt(np.einsum("ij,ij->i", n, n))[:, None]
    np.divide(n, norm, out=n, where=norm > 0)
    return n
