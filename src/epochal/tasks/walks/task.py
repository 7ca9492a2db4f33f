"""The graph-walk language-model task (seeds 000 and 001).

A transformer learns next-vertex prediction on random walks over a stochastic
block model whose jumper vertices impose rules ("r steps after jumper u, be in
block b"). Each evaluation generates greedy walks from the first vertex of the
held-out walks and measures edge and rule compliance; the gate stops training
once both pass (edge > 0.95, rule > 0.80). The graph (graph.npz) and the walks
(walks.npz) are written to the run folder for later analysis.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from epochal.errors import ConfigError
from epochal.task import Built, RunContext, Task
from epochal.tasks.walks.compliance import evaluate_compliance
from epochal.tasks.walks.corpus import build_corpus, save_corpus, save_graph
from epochal.tasks.walks.dataset import WalkDataset
from epochal.tasks.walks.generate import greedy_generate
from epochal.tasks.walks.graph import Graph, Jumper, choose_jumpers, sample_sbm
from epochal.tasks.walks.model import TransformerLM


@dataclass
class WalksConfig:
    n_vertices: int = 64  # graph size = vocabulary; learnt on a CPU in under a minute
    n_blocks: int = 4  # SBM blocks; jumper rules point at a block other than the jumper's own
    p_in: float = 0.25  # edge probability inside a block: ~4 out-edges per vertex within it
    p_out: float = 0.03  # across blocks (~1.4 out-edges): leaving a block on time is a real decision
    directed: bool = True  # directed edges (undirected: each pair drawn once, both directions stored)
    n_jumpers: int = 8  # vertices carrying a rule (1 in 8): greedy walks meet them often
    rule_distance: int = 5  # r: a walk at a jumper at step t is in its target block at step t + r
    num_walks: int = 3000  # walks generated in all, eval_sequences of them held out (63 steps an epoch)
    walk_length: int = 66  # steps per walk, and per generated sequence; 2 chunks of context + 1
    eval_sequences: int = 1000  # held-out walks whose first vertices seed greedy generation (seed 001)
    context: int = 32  # w: model context and generation window; must exceed r to see the jumper
    d_model: int = 64  # residual width
    n_layers: int = 2  # transformer blocks
    n_heads: int = 4  # attention heads; must divide d_model

    def validate(self) -> None:
        for name in ("n_vertices", "n_blocks", "rule_distance", "num_walks", "walk_length",
                     "eval_sequences", "context", "d_model", "n_layers", "n_heads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"task.{name}: {getattr(self, name)} must be positive; allowed: >= 1")
        if self.n_vertices < 2:
            raise ConfigError(f"task.n_vertices: {self.n_vertices} is too small; allowed: >= 2")
        if self.n_blocks > self.n_vertices:
            raise ConfigError(f"task.n_blocks: {self.n_blocks} blocks for {self.n_vertices} vertices; allowed: 1..n_vertices")
        for name in ("p_in", "p_out"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"task.{name}: {getattr(self, name)} out of range; allowed: 0 <= p <= 1")
        if not 0 <= self.n_jumpers <= self.n_vertices:
            raise ConfigError(f"task.n_jumpers: {self.n_jumpers} out of range; allowed: 0..n_vertices ({self.n_vertices})")
        if self.n_jumpers and self.n_blocks < 2:
            raise ConfigError("task.n_blocks: jumpers need a target block other than their own; allowed: >= 2")
        if self.rule_distance > self.context:
            raise ConfigError(f"task.rule_distance: {self.rule_distance} exceeds the context {self.context}, so the model "
                              f"could not see the jumper when the rule falls due; allowed: 1..context")
        if self.walk_length < self.context + 1:
            raise ConfigError(f"task.walk_length: {self.walk_length} is shorter than context + 1 = {self.context + 1}, "
                              f"so no training sequence fits in a walk; allowed: >= context + 1")
        if self.eval_sequences >= self.num_walks:
            raise ConfigError(f"task.eval_sequences: {self.eval_sequences} leaves no training walks of "
                              f"num_walks {self.num_walks}; allowed: < num_walks")
        if self.d_model % self.n_heads:
            raise ConfigError(f"task.n_heads: {self.n_heads} does not divide d_model {self.d_model}; allowed: a divisor")


@dataclass
class WalksEval:
    """What evaluate() needs: the start vertices and the rules to check."""

    starts: torch.Tensor  # [eval_sequences] first vertex of each held-out walk, on the run device
    walk_length: int
    graph: Graph
    jumpers: list[Jumper]
    held_out: torch.Tensor | None = None  # [n, context + 1] pieces of the held-out walks: history's val_loss


# Held-out pieces per forward pass of the validation loss: bounds its memory, whatever eval_sequences is.
VAL_CHUNK = 512


class WalksTask(Task):
    name = "walks"
    summary = "transformer on SBM random walks with jumper rules; gate on edge and rule compliance"
    Config = WalksConfig
    metrics = ("edge_compliance", "rule_compliance")
    defaults = {
        "train": {"batch_size": 64, "max_epochs": 50, "eval_every": 1, "grad_clip": 1.0, "fsdp_modules": ["Block"]},
        "optim": {"lr": 3e-4, "weight_decay": 0.01},
        "schedule": {"kind": "cosine", "warmup_fraction": 0.1, "min_lr_ratio": 0.1},
        "gate": {"above": {"edge_compliance": 0.95, "rule_compliance": 0.80}},
        "checkpoint": {"best_metric": "rule_compliance", "best_mode": "max"},
    }

    def build(self, cfg: WalksConfig, run: RunContext) -> Built:
        try:
            graph = sample_sbm(cfg.n_vertices, cfg.n_blocks, cfg.p_in, cfg.p_out, cfg.directed, run.numpy_rng("walks.graph"))
        except ValueError as err:
            raise ConfigError(f"task.p_in/task.p_out: {err}") from None
        try:
            jumpers = choose_jumpers(graph, cfg.n_jumpers, cfg.rule_distance, run.numpy_rng("walks.jumpers"))
            corpus = build_corpus(graph, jumpers, cfg.num_walks, cfg.walk_length, cfg.eval_sequences,
                                  run.numpy_rng("walks.corpus"))
        except ValueError as err:
            raise ConfigError(f"task.rule_distance/task.n_jumpers: {err}") from None
        save_graph(run.dir / "graph.npz", graph, jumpers)
        save_corpus(run.dir / "walks.npz", corpus)
        model = TransformerLM(cfg.n_vertices, cfg.context, cfg.d_model, cfg.n_layers, cfg.n_heads)
        starts = torch.from_numpy(corpus.eval[:, 0].copy()).to(run.device)
        return Built(
            model=model,
            train_data={"tokens": WalkDataset(corpus.train, cfg.context).tokens},
            eval_context=WalksEval(starts, cfg.walk_length, graph, jumpers,
                                   WalkDataset(corpus.eval, cfg.context).tokens.to(run.device)),
        )

    def loss(self, model: TransformerLM, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        tokens = batch["tokens"]
        logits = model(tokens[:, :-1])
        return {"loss": F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())}

    def evaluate(self, model: TransformerLM, ctx: WalksEval) -> dict[str, float]:
        generated = greedy_generate(model, ctx.starts, ctx.walk_length)
        edge, rule = evaluate_compliance(generated, ctx.graph, ctx.graph.blocks, ctx.jumpers, r=None)
        return {"edge_compliance": edge, "rule_compliance": rule}

    def validation_loss(self, model: TransformerLM, ctx: WalksEval) -> float | None:
        """Next-vertex cross-entropy on the held-out walks (history only: seed 001's curves stay as listed)."""
        if ctx.held_out is None or not len(ctx.held_out):
            return None
        total = torch.zeros((), device=ctx.held_out.device)
        for start in range(0, len(ctx.held_out), VAL_CHUNK):
            tokens = ctx.held_out[start : start + VAL_CHUNK]
            logits = model(tokens[:, :-1])
            total += F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten(), reduction="sum")
        return float(total / ctx.held_out[:, 1:].numel())

    def tokens_per_example(self, cfg: WalksConfig) -> int:
        return cfg.context  # positions predicted per training sequence

    def flops_per_example(self, cfg: WalksConfig, model: TransformerLM) -> float:
        """6 x matmul weights x tokens (forward and backward) plus attention scores, 12 x layers x d x T^2."""
        weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
        return 6.0 * weights * cfg.context + 12.0 * cfg.n_layers * cfg.d_model * cfg.context**2

    def figures(self, run_dir, result: dict) -> dict:
        import tomllib

        from epochal.tasks.walks.plots import compliance_figure

        config = tomllib.loads((run_dir / "config.toml").read_text()) if (run_dir / "config.toml").exists() else {}
        return {"compliance": compliance_figure(result, config.get("gate", {}).get("above", {}))}

