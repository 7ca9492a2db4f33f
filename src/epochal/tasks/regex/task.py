"""The regex task (seed 003): a transformer reads strings of a regular language and predicts,
at every position, the next token, whether the prefix is in the language, and the DFA state.

build() compiles the pattern (fsm.json in the run folder), samples balanced and
disjoint splits, encodes them and builds the model; loss() is the weighted
multi-task loss; evaluate() scores the validation split and test() the in-range
and the longer, out-of-distribution test splits, with class accuracy by length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from epochal.errors import ConfigError
from epochal.task import Built, RunContext, Task
from epochal.tasks.regex.data import LabelledStrings, SplitSizes, make_splits
from epochal.tasks.regex.dataset import Vocab, encode_split
from epochal.tasks.regex.fsm import DFA, SUPPORTED_SYNTAX, PatternError, compile_regex
from epochal.tasks.regex.hooks import CaptureInternals
from epochal.tasks.regex.losses import LossWeights, multitask_terms, normalisers
from epochal.tasks.regex.metrics import evaluate_split
from epochal.tasks.regex.model import RegexTransformer


@dataclass
class RegexConfig:
    pattern: str = "(a|b)*a(a|b)(a|b)"  # the language; default: the third symbol from the end is a (8 states)
    alphabet: str = "ab"  # the symbols, one character each; the pattern may use no others
    min_len: int = 1  # shortest training string (lengths without both classes are skipped)
    max_len: int = 16  # longest training / validation / in-range test string
    ood_min_len: int = 17  # out-of-distribution test lengths: longer than any training string
    ood_max_len: int = 32  # up to twice the training range, where length generalisation shows
    n_train: int = 4000  # training strings, half accepted (fewer if short lengths run out)
    n_val: int = 500  # validation strings: early stopping and best.pt read these
    n_test: int = 1000  # in-range test strings
    n_test_ood: int = 1000  # out-of-distribution test strings
    near_miss_fraction: float = 0.5  # share of rejected strings one edit from an accepted one (hard negatives)
    d_model: int = 48  # transformer width: both recipes reach 99 % at this size, in seconds on a CPU
    n_layers: int = 2  # blocks; two suffice for the recipes' languages
    n_heads: int = 4  # attention heads per block
    d_ff: int = 96  # MLP width, 2x d_model: the MLP only maps a few features to a few states
    dropout: float = 0.0  # the data are plentiful and noiseless
    positional: Literal["rope", "learned"] = "rope"  # rope: relative positions, a chance at longer strings
    embed_rank: int | None = None  # factorised token embedding U (vocab x rank) V (rank x d); None: plain
    lambda_next: float = 1.0  # weight of the next-token loss
    lambda_class: float = 1.0  # weight of the prefix-membership loss, the task's main target
    lambda_state: float = 1.0  # weight of the DFA-state loss (an auxiliary that shapes the features)
    lambda_l1: float = 0.0  # weight of the L1 penalty on U; needs embed_rank
    eval_batch_size: int = 1024  # strings per evaluation batch
    length_bin_width: int = 4  # prefix lengths per bin of test_*_class_acc_len_LO_HI
    capture: bool = False  # save attention maps and hidden states after every evaluation
    capture_examples: int = 8  # validation strings captured

    def validate(self) -> None:
        try:
            compile_regex(self.pattern, self.alphabet)
        except PatternError as err:
            if str(err).startswith("alphabet"):
                raise ConfigError(f"task.alphabet: {err}") from None
            raise ConfigError(f"task.pattern: {err}; allowed: {SUPPORTED_SYNTAX}") from None
        positive = ("min_len", "n_train", "n_val", "n_test", "n_test_ood", "d_model", "n_layers", "n_heads",
                    "d_ff", "eval_batch_size", "length_bin_width", "capture_examples")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"task.{name}: {getattr(self, name)} must be positive; allowed: > 0")
        if not self.min_len <= self.max_len < self.ood_min_len <= self.ood_max_len:
            raise ConfigError(
                f"task.ood_min_len: lengths {self.min_len}..{self.max_len} and {self.ood_min_len}..{self.ood_max_len} "
                "out of order; allowed: min_len <= max_len < ood_min_len <= ood_max_len"
            )
        if self.ood_max_len > 512:
            raise ConfigError(f"task.ood_max_len: {self.ood_max_len} too long; allowed: <= 512")
        if not 0 <= self.near_miss_fraction <= 1:
            raise ConfigError(f"task.near_miss_fraction: {self.near_miss_fraction} out of range; allowed: 0..1")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"task.dropout: {self.dropout} out of range; allowed: 0 <= dropout < 1")
        head_width, remainder = divmod(self.d_model, self.n_heads)
        if remainder or (self.positional == "rope" and head_width % 2):
            raise ConfigError(
                f"task.n_heads: {self.n_heads} heads do not split d_model {self.d_model} into "
                f"{'even-width ' if self.positional == 'rope' else ''}heads; allowed: a divisor of d_model"
            )
        if self.embed_rank is not None and self.embed_rank <= 0:
            raise ConfigError(f"task.embed_rank: {self.embed_rank} must be positive; allowed: > 0, or leave it out")
        for name in ("lambda_next", "lambda_class", "lambda_state", "lambda_l1"):
            if getattr(self, name) < 0:
                raise ConfigError(f"task.{name}: {getattr(self, name)} is negative; allowed: >= 0")
        if self.lambda_l1 > 0 and self.embed_rank is None:
            raise ConfigError("task.lambda_l1: an L1 penalty needs a factorised embedding; allowed: set task.embed_rank")


@dataclass
class RegexEvalContext:
    """What evaluate(), test() and the capture callback read: the automaton and the encoded splits."""

    dfa: DFA
    vocab: Vocab
    splits: dict[str, dict[str, torch.Tensor]]  # "val", "test", "test_ood" -> tensors on the run's device
    batch_size: int
    bin_width: int


class RegexTask(Task):
    name = "regex"
    summary = "transformer on a regular language: next token, prefix membership and DFA state"
    Config = RegexConfig
    metrics = ("val_token_acc", "val_nll", "val_class_acc", "val_state_acc", "val_string_acc")
    defaults = {
        "train": {"max_epochs": 30, "batch_size": 64, "fsdp_modules": ["Block"]},
        "optim": {"lr": 3e-3, "weight_decay": 0.01},
        "schedule": {"kind": "cosine", "warmup_fraction": 0.05},
        # Seed 003 (5.7): stop on the validation metric; best.pt follows the same metric.
        "early_stop": {"enabled": True, "metric": "val_class_acc", "mode": "max", "patience": 6},
        "checkpoint": {"best_metric": "val_class_acc", "best_mode": "max"},
    }

    def build(self, cfg: RegexConfig, run: RunContext) -> Built:
        dfa = compile_regex(cfg.pattern, cfg.alphabet)
        run.dir.mkdir(parents=True, exist_ok=True)
        dfa.save(run.dir / "fsm.json")
        splits = _sample_splits(cfg, dfa, run)
        vocab = Vocab(dfa.alphabet)
        train = encode_split(splits["train"], dfa, vocab, cfg.max_len)
        held_out = {name: {k: v.to(run.device) for k, v in encode_split(splits[name], dfa, vocab).items()}
                    for name in ("val", "test", "test_ood")}
        model = RegexTransformer(
            vocab.size, dfa.n_states, cfg.ood_max_len + 2, cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.d_ff,
            cfg.dropout, cfg.embed_rank, cfg.positional,
        )
        self.weights = LossWeights(cfg.lambda_next, cfg.lambda_class, cfg.lambda_state, cfg.lambda_l1)
        context = RegexEvalContext(dfa, vocab, held_out, cfg.eval_batch_size, cfg.length_bin_width)
        return Built(model=model, train_data=train, eval_context=context)

    def prepare_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {**batch, "normalisers": normalisers(batch)}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, tuple]:
        # Under DDP the loss gets the wrapper, which keeps the model's own methods on its .module.
        own = getattr(model, "module", model)
        return multitask_terms(model(batch["tokens"]), batch, self.weights, own.l1_u)

    def evaluate(self, model: nn.Module, ctx: RegexEvalContext) -> dict[str, float]:
        return evaluate_split(model, ctx.splits["val"], "val", ctx.batch_size)

    def validation_loss(self, model: nn.Module, ctx: RegexEvalContext) -> float:
        """The weighted multi-task loss on the validation split, as one batch (its normalisers), in chunks."""
        val = ctx.splits["val"]
        whole = normalisers(val)
        total = count = None
        for start in range(0, len(val["tokens"]), ctx.batch_size):
            batch = {key: value[start : start + ctx.batch_size] for key, value in val.items()}
            batch["normalisers"] = whole[start : start + ctx.batch_size]
            part, n = multitask_terms(model(batch["tokens"]), batch, self.weights, model.l1_u)["loss"]
            total, count = (part, n) if total is None else (total + part, count + n)
        return float(total / count)

    def test(self, model: nn.Module, ctx: RegexEvalContext) -> dict[str, float]:
        metrics = {}
        for name in ("test", "test_ood"):
            metrics.update(evaluate_split(model, ctx.splits[name], name, ctx.batch_size, ctx.bin_width))
        return metrics

    def callbacks(self, cfg: RegexConfig, run: RunContext) -> list:
        return [CaptureInternals(cfg.capture_examples)] if cfg.capture else []

    def figures(self, run_dir, result: dict) -> dict:
        import tomllib

        from epochal.tasks.regex.plots import length_accuracy_figure

        config = tomllib.loads((run_dir / "config.toml").read_text()) if (run_dir / "config.toml").exists() else {}
        return {"length_accuracy": length_accuracy_figure(result, config.get("task", {}).get("max_len"))}


def _sample_splits(cfg: RegexConfig, dfa: DFA, run: RunContext) -> dict[str, LabelledStrings]:
    """The four labelled splits, drawn from the run's seed; ConfigError when the settings leave one empty."""
    sizes = SplitSizes(cfg.n_train, cfg.n_val, cfg.n_test, cfg.n_test_ood,
                       cfg.min_len, cfg.max_len, cfg.ood_min_len, cfg.ood_max_len)
    try:
        splits = make_splits(dfa, sizes, cfg.near_miss_fraction, run.numpy_rng("regex-data"))
    except ValueError as err:
        raise ConfigError(
            f"task.pattern: {err}; allowed: a language and lengths (task.min_len..task.max_len, "
            "task.ood_min_len..task.ood_max_len) with both accepted and rejected strings"
        ) from None
    for name, split in splits.items():
        if not len(split):
            field = "n_test_ood" if name == "test_ood" else f"n_{name}"
            raise ConfigError(f"task.{field}: the {name} split came out empty; allowed: a larger {field}")
    return splits
