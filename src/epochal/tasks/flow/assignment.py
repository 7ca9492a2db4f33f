"""Exact minimum-cost assignment (the linear sum assignment problem) in NumPy.

scipy is not a dependency, so this is our own shortest augmenting path method (the
Hungarian method as Jonker and Volgenant organise it). Dual potentials ``u`` (rows)
and ``v`` (columns) keep every reduced cost ``cost[i, j] - u[i] - v[j]`` non-negative
and the matched ones zero. Column reduction (``v[j] = min_i cost[i, j]``) matches
many rows at once; each remaining row is then added by a Dijkstra search over
reduced costs that ends at a free column, the path is flipped and the potentials
are updated. The search over columns is vectorised, so the Python loop runs once
per column the search visits.
"""

from __future__ import annotations

import numpy as np


def linear_assignment(cost: np.ndarray) -> np.ndarray:
    """For a square cost matrix, ``col`` with ``col[i]`` the column of row ``i`` in an optimal matching."""
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2 or cost.shape[0] != cost.shape[1]:
        raise ValueError(f"linear_assignment needs a square matrix, got shape {cost.shape}")
    if not np.isfinite(cost).all():
        raise ValueError("linear_assignment needs finite costs")
    n = cost.shape[0]
    col_potential = cost.min(axis=0)
    row_potential = np.zeros(n)
    col_of_row = np.full(n, -1)
    row_of_col = np.full(n, -1)
    for col, row in enumerate(cost.argmin(axis=0)):
        if col_of_row[row] < 0:  # tight edge (reduced cost 0) to a still free row
            col_of_row[row], row_of_col[col] = col, row
    for row in np.flatnonzero(col_of_row < 0):
        _augment(cost, row, row_potential, col_potential, col_of_row, row_of_col)
    return col_of_row


def _augment(
    cost: np.ndarray,
    free_row: int,
    row_potential: np.ndarray,
    col_potential: np.ndarray,
    col_of_row: np.ndarray,
    row_of_col: np.ndarray,
) -> None:
    """Match ``free_row`` along a shortest augmenting path; updates the arrays in place."""
    n = cost.shape[0]
    tentative = np.full(n, np.inf)  # path length to each unscanned column; inf once scanned
    final = np.zeros(n)  # path length of each scanned column
    came_from = np.zeros(n, dtype=np.int64)  # row through which each column is reached
    # Scanned columns get potential -inf here so that no later row can improve them.
    search_potential = col_potential.copy()
    scanned_cols: list[int] = []
    scanned_rows = [free_row]
    path_length, row = 0.0, free_row
    while True:
        through_row = cost[row] - search_potential
        through_row += path_length - row_potential[row]
        shorter = through_row < tentative
        np.copyto(tentative, through_row, where=shorter)
        np.copyto(came_from, row, where=shorter)
        col = int(np.argmin(tentative))
        path_length = tentative[col]
        final[col], tentative[col], search_potential[col] = path_length, np.inf, -np.inf
        scanned_cols.append(col)
        if row_of_col[col] < 0:
            break
        row = row_of_col[col]
        scanned_rows.append(row)
    # New potentials keep the reduced costs non-negative and the new path tight.
    cols = np.array(scanned_cols)
    rows = np.array(scanned_rows)
    row_potential[free_row] += path_length
    matched_rows = rows[1:]
    row_potential[matched_rows] += path_length - final[col_of_row[matched_rows]]
    col_potential[cols] -= path_length - final[cols]
    while True:  # flip the path back to the free row
        row = came_from[col]
        row_of_col[col] = row
        col, col_of_row[row] = col_of_row[row], col
        if row == free_row:
            break
