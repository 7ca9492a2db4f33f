"""Seed 001's reference evaluation, kept as the oracle for tests and the baseline for benchmarks.

Both are deliberately the straightforward versions: greedy generation with one
full forward over the window per token, and compliance with a Python loop over
sequences and steps. epochal's fast paths (generate.py, compliance.py) must give
the same tokens and the same numbers.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def reference_generate(model, start_tokens: torch.Tensor, length: int) -> torch.Tensor:
    """[B, length] greedy walks: one full forward over the last ``model.context`` tokens per step."""
    generated = start_tokens[:, None].clone()
    for _ in range(length - 1):
        logits = model(generated[:, -model.context :])
        next_token = logits[:, -1, :].argmax(dim=-1, keepdim=True)
        generated = torch.cat([generated, next_token], dim=1)
    return generated


def reference_compliance(sequences, adjacency, block_assignments, jumpers, r: int) -> tuple[float, float]:
    """(edge, rule) compliance exactly as seed 001 writes it."""
    indptr, indices = adjacency.indptr, adjacency.indices
    total_edges = valid_edges = total_rule_checks = rule_compliant = 0
    jumper_set = {j.vertex_id: j for j in jumpers}
    for seq in sequences:
        for t in range(len(seq) - 1):
            u, v = int(seq[t]), int(seq[t + 1])
            total_edges += 1
            if v in indices[indptr[u] : indptr[u + 1]]:
                valid_edges += 1
            if u in jumper_set and t + r < len(seq):
                total_rule_checks += 1
                if int(block_assignments[int(seq[t + r])]) == jumper_set[u].target_block:
                    rule_compliant += 1
    return valid_edges / max(1, total_edges), rule_compliant / max(1, total_rule_checks)
