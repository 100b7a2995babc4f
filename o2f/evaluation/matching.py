"""Maximum-weight bipartite matching for evaluation (no SciPy needed).

The CrowdHuman Jaccard index pairs detections with ground truth by a
maximum-*weight* matching on the graph whose edges are the (detection, gt)
pairs with IoU above a threshold, weighted by IoU. That is not always a
maximum-cardinality matching, so a greedy or cardinality matcher would not do.

`max_weight_matching` splits the graph into connected components, solves the
trivial ones (a single row or a single column: pick the heaviest edge) directly
and the rest with the Hungarian algorithm (shortest augmenting paths with
potentials, O(n^2 m) with the inner loop vectorised over columns).
"""

from __future__ import annotations

import numpy as np

__all__ = ["RowSubsetMatcher", "connected_components", "hungarian_max", "max_weight_matching"]


def connected_components(adjacency: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Connected components of a bipartite graph that have at least one edge.

    Args:
        adjacency: (N, M) bool, True where row n and column m are joined.

    Returns:
        A list of (rows, cols) sorted index arrays, one per component with an edge, ordered
        by their smallest row; isolated rows and columns are left out.
    """
    adjacency = np.asarray(adjacency, dtype=bool)
    n = adjacency.shape[0]
    rows, cols = np.nonzero(adjacency)
    parent: dict[int, int] = {}  # union-find over rows 0..N-1 and columns N..N+M-1

    def find(x: int) -> int:
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while x != root:
            parent[x], x = root, parent[x]
        return root

    for r, c in zip(rows.tolist(), (cols + n).tolist()):
        a, b = find(r), find(c)
        if a != b:  # the smaller index becomes the root: a component's root is its first row
            parent[max(a, b)] = min(a, b)
    groups: dict[int, tuple[list[int], list[int]]] = {}
    for node in sorted(set(rows.tolist()) | set((cols + n).tolist())):
        members = groups.setdefault(find(node), ([], []))
        if node < n:
            members[0].append(node)
        else:
            members[1].append(node - n)
    return [
        (np.asarray(groups[root][0], dtype=np.int64), np.asarray(groups[root][1], dtype=np.int64))
        for root in sorted(groups)
    ]


def hungarian_max(weights: np.ndarray) -> np.ndarray:
    """Assignment of every row to a distinct column maximising the total weight.

    Args:
        weights: (n, m) float with n <= m.

    Returns:
        (n,) int64: the column given to each row.
    """
    w = np.asarray(weights, dtype=np.float64)
    n, m = w.shape
    if n > m:
        raise ValueError(f"hungarian_max needs rows <= columns, got {w.shape}")
    cost = -w
    u = np.zeros(n + 1)
    v = np.zeros(m + 1)
    owner = np.zeros(m + 1, dtype=np.int64)  # owner[j]: 1-based row holding column j, 0 = none
    way = np.zeros(m + 1, dtype=np.int64)
    for i in range(1, n + 1):
        owner[0] = i
        j0 = 0
        minv = np.full(m + 1, np.inf)
        used = np.zeros(m + 1, dtype=bool)
        while True:
            used[j0] = True
            i0 = owner[j0]
            free = ~used[1:]
            reduced = cost[i0 - 1] - u[i0] - v[1:]
            better = free & (reduced < minv[1:])
            minv[1:][better] = reduced[better]
            way[1:][better] = j0
            masked = np.where(free, minv[1:], np.inf)
            j1 = int(np.argmin(masked)) + 1
            delta = masked[j1 - 1]
            u[owner[used]] += delta
            v[used] -= delta
            minv[1:][free] -= delta
            j0 = j1
            if owner[j0] == 0:
                break
        while j0:
            j1 = way[j0]
            owner[j0] = owner[j1]
            j0 = j1
    cols_of_row = np.empty(n, dtype=np.int64)
    assigned = np.flatnonzero(owner[1:])
    cols_of_row[owner[1:][assigned] - 1] = assigned
    return cols_of_row


def max_weight_matching(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Maximum-weight matching of a bipartite graph given as a weight matrix.

    Args:
        weights: (N, M) non-negative floats; 0 means "no edge".

    Returns:
        (rows, cols): int64 arrays of the matched pairs (only real edges),
        sorted by row.
    """
    w = np.asarray(weights, dtype=np.float64)
    rows_out: list[np.ndarray] = []
    cols_out: list[np.ndarray] = []
    for rows, cols in connected_components(w > 0):
        sub = w[np.ix_(rows, cols)]
        if len(cols) == 1:
            r, c = np.array([int(np.argmax(sub[:, 0]))]), np.array([0])
        elif len(rows) == 1:
            r, c = np.array([0]), np.array([int(np.argmax(sub[0]))])
        elif len(rows) <= len(cols):
            r = np.arange(len(rows))
            c = hungarian_max(sub)
        else:
            c = np.arange(len(cols))
            r = hungarian_max(sub.T)
        keep = sub[r, c] > 0
        rows_out.append(rows[r[keep]])
        cols_out.append(cols[c[keep]])
    if not rows_out:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy()
    rows_all = np.concatenate(rows_out)
    cols_all = np.concatenate(cols_out)
    order = np.argsort(rows_all, kind="stable")
    return rows_all[order], cols_all[order]


class RowSubsetMatcher:
    """Maximum-weight matchings of the subgraphs kept by a shrinking set of rows.

    Built once per image from the full (detections x gt) weight matrix, then called with
    nested row masks (detections above increasing score thresholds). Components that are
    stars (one column, or one row) are solved for all their members at once with an argmax;
    the other components go through `max_weight_matching`, and their result is reused while
    none of their rows is dropped.

    Args:
        weights: (N, M) non-negative floats; 0 means "no edge".
    """

    def __init__(self, weights: np.ndarray):
        self.weights = np.asarray(weights, dtype=np.float64)
        n, m = self.weights.shape
        col_star = np.zeros(m, dtype=bool)
        row_star = np.zeros(n, dtype=bool)
        self.components: list[tuple[np.ndarray, np.ndarray]] = []
        for rows, cols in connected_components(self.weights > 0):
            if len(cols) == 1:
                col_star[cols[0]] = True
            elif len(rows) == 1:
                row_star[rows[0]] = True
            else:
                self.components.append((rows, cols))
        self.star_cols = np.flatnonzero(col_star)
        self.star_rows = np.flatnonzero(row_star)
        self._col_star_weights = self.weights[:, self.star_cols]
        self._row_star_weights = self.weights[self.star_rows]
        self._cache: list[tuple[int, np.ndarray, np.ndarray]] = [
            (-1, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
        ] * len(self.components)

    def __call__(self, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Matched-row and matched-column masks for the rows in ``keep`` ((N,) bool).

        Successive calls must keep nested (shrinking) row sets for the cache to be valid.
        """
        n, m = self.weights.shape
        row_matched = np.zeros(n, dtype=bool)
        col_matched = np.zeros(m, dtype=bool)
        if len(self.star_cols):  # a column and the rows joined only to it: its best kept row
            w = np.where(keep[:, None], self._col_star_weights, 0.0)
            best = w.argmax(axis=0)
            ok = w[best, np.arange(len(self.star_cols))] > 0
            row_matched[best[ok]] = True
            col_matched[self.star_cols[ok]] = True
        if len(self.star_rows):  # a row joined to several columns, each joined only to it
            ok = keep[self.star_rows]
            row_matched[self.star_rows[ok]] = True
            col_matched[self._row_star_weights[ok].argmax(axis=1)] = True
        for c, (rows, cols) in enumerate(self.components):
            kept = rows[keep[rows]]
            if self._cache[c][0] != len(kept):  # nested sets: the size identifies them
                r, g = max_weight_matching(self.weights[np.ix_(kept, cols)])
                self._cache[c] = (len(kept), kept[r], cols[g])
            row_matched[self._cache[c][1]] = True
            col_matched[self._cache[c][2]] = True
        return row_matched, col_matched
