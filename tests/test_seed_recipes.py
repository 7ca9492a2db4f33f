"""The walks-seed and flow-seed recipes resolve to every value their seeds state."""

from pathlib import Path

import pytest

from epochal.config import load_toml
from epochal.resolve import resolve

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "epochal" / "recipes"

# (setting, the seed's value, where the seed states it)
WALKS_SEED = [
    ("task.eval_sequences", 1000, "001: generate 1000 sequences per evaluation"),
    ("train.max_epochs", 50, "001: max training budget 50 epochs"),
    ("train.batch_size", 64, "001: batch size 64 sequences"),
    ("train.eval_every", 1, "001: evaluate every epoch"),
    ("train.grad_clip", 1.0, "000: gradient clipping max_norm=1.0"),
    ("train.progress", True, "001: tqdm progress bar per epoch"),
    ("optim.lr", 3e-4, "001: peak learning rate 3e-4 with AdamW"),
    ("optim.weight_decay", 0.01, "000: weight decay 0.01"),
    ("optim.decay_all", True, "000: AdamW decays every parameter"),
    ("optim.betas", (0.9, 0.999), "000: AdamW defaults"),
    ("optim.eps", 1e-8, "000: AdamW defaults"),
    ("schedule.kind", "cosine", "001: cosine LR schedule"),
    ("schedule.warmup_fraction", 0.1, "001: 10% linear warmup"),
    ("schedule.warmup_steps", None, "001: warmup as a share of steps, not a count"),
    ("schedule.min_lr_ratio", 0.1, "000: cosine min LR ratio 0.1"),
    ("gate.above", {"edge_compliance": 0.95, "rule_compliance": 0.80}, "001: gate edge >95%, rule >80%"),
    ("gate.below", {}, "001: no other gate"),
    ("early_stop.enabled", False, "001: stops on the gate or the budget only"),
    ("ema.enabled", False, "000/001: raw weights"),
    ("checkpoint.every_epochs", 1, "001: checkpoint every epoch"),
    ("checkpoint.every_steps", 0, "001: at epoch ends only"),
    ("checkpoint.every_minutes", 0.0, "001: at epoch ends only"),
    ("checkpoint.keep_last", 3, "001: keep last 3 + gate-pass checkpoint"),
    ("checkpoint.best_metric", "", "001: no best checkpoint"),
    ("out_dir", "results", "001: results/{experiment_id}/checkpoints/"),
    ("group", "", "001: no group folder"),
]

FLOW_SEED = [
    ("task.flow", "icfm", "004: ICFM formulation"),
    ("task.arch", "mlp", "004: MLP velocity net"),
    ("train.grad_clip", 1.0, "004: locked grad_clip 1.0"),
    ("train.eval_every", 1, "004: patience counts epochs"),
    ("schedule.kind", "cosine", "004: cosine scheduler"),
    ("schedule.warmup_steps", 1000, "004: 1000-step warmup"),
    ("schedule.min_lr_ratio", 0.0, "004: get_cosine_schedule_with_warmup decays to zero"),
    ("ema.enabled", True, "004: EMAModel"),
    ("ema.decay", 0.9999, "004: locked EMA decay 0.9999"),
    ("ema.warmup", False, "004: a fixed decay"),
    ("early_stop.enabled", True, "004: patience-based early stopping"),
    ("early_stop.metric", "val_fm_loss", "004: validation flow-matching loss"),
    ("early_stop.mode", "min", "004: a loss"),
    ("early_stop.patience", 20, "004: locked patience 20"),
    ("early_stop.min_delta", 0.0, "004: any improvement counts"),
    ("train.expected_gpus", ["A5000", "L40S"], "004: warns if not on A5000/L40S"),
    ("train.expected_cuda_visible_devices", "1", "004: ... or CUDA_VISIBLE_DEVICES!=1"),
]


def _value(config, key):
    *path, name = key.split(".")
    node = config
    for part in path:
        node = getattr(node, part)
    return getattr(node, name)


@pytest.mark.parametrize("recipe, table", [("walks-seed.toml", WALKS_SEED), ("flow-seed.toml", FLOW_SEED)])
def test_the_seed_recipe_resolves_to_every_value_its_seed_states(recipe, table):
    config = resolve(None, [load_toml(CONFIGS / recipe)])
    wrong = {key: (_value(config, key), seed_value, source) for key, seed_value, source in table
             if _value(config, key) != seed_value}
    assert not wrong, wrong


def test_the_flow_seed_recipe_states_seed_004s_required_fields():
    """Seed 004's TrainingConfig requires arch, flow, dataset, aug and group: the recipe sets each itself."""
    recipe = load_toml(CONFIGS / "flow-seed.toml")
    assert {"arch", "flow", "dataset", "aug"} <= set(recipe["task"]) and recipe["group"]


@pytest.mark.parametrize("recipe", ["walks-seed.toml", "flow-seed.toml"])
def test_every_setting_of_a_seed_recipe_says_where_it_comes_from(recipe):
    lines = (CONFIGS / recipe).read_text().splitlines()
    settings = [line for line in lines if "=" in line.split("#")[0] and not line.startswith(("#", "["))]
    assert settings
    uncommented = [line for line in settings if "  # " not in line and not line.startswith("name = ")]
    assert not uncommented, uncommented


def test_the_tuned_recipes_differ_from_the_seed_recipes_where_the_readme_says():
    walks, walks_seed = (resolve(None, [load_toml(CONFIGS / f)]) for f in ("walks.toml", "walks-seed.toml"))
    flow, flow_seed = (resolve(None, [load_toml(CONFIGS / f)]) for f in ("flow-moons.toml", "flow-seed.toml"))
    assert (walks.optim.decay_all, walks_seed.optim.decay_all) == (False, True)
    assert (flow.ema.decay, flow_seed.ema.decay) == (0.999, 0.9999)
    assert (flow.schedule.warmup_steps, flow_seed.schedule.warmup_steps) == (100, 1000)
