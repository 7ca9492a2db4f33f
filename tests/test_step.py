import copy
import json

import pytest

import torch
import torch.nn.functional as F
from torch import nn

from epochal.optim import build_adamw
from epochal.step import Step, StepRecords


def mse(model, batch):
    return {"loss": F.mse_loss(model(batch["x"]), batch["y"])}


def make_step(model, grad_clip=1.0, grad_accum=1, loss_fn=mse):
    opt = build_adamw(model, lr=1e-2, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return Step(model, loss_fn, opt, sched, torch.device("cpu"), "fp32", grad_clip, grad_accum, guard_nonfinite=True)


def batch(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(n, 8, generator=g), "y": torch.randn(n, 3, generator=g) * 10}


def test_recorded_grad_norm_is_the_norm_before_clipping():
    torch.manual_seed(0)
    model = nn.Linear(8, 3)
    reference = copy.deepcopy(model)
    out = make_step(model, grad_clip=0.5)(batch())
    mse(reference, batch())["loss"].backward()
    expected = torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.5)
    assert expected > 0.5  # the test needs a gradient that actually gets clipped
    assert torch.allclose(out["grad_norm"], expected)


def test_clipping_limits_the_update_like_clip_grad_norm():
    torch.manual_seed(0)
    model = nn.Linear(8, 3)
    reference = copy.deepcopy(model)
    make_step(model, grad_clip=0.5)(batch())
    opt = torch.optim.AdamW(reference.parameters(), lr=1e-2, weight_decay=0.0, fused=True)
    mse(reference, batch())["loss"].backward()
    torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.5)
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), reference.parameters()))


def test_two_micro_batches_of_32_match_one_batch_of_64():
    torch.manual_seed(0)
    whole, split = nn.Linear(8, 3), None
    split = copy.deepcopy(whole)
    step_whole, step_split = make_step(whole), make_step(split, grad_accum=2)
    for seed in range(5):
        a, b = step_whole(batch(seed=seed)), step_split(batch(seed=seed))
        assert torch.allclose(a["loss"], b["loss"], rtol=1e-6)
    for p, q in zip(whole.parameters(), split.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_uneven_micro_batches_weight_by_size():
    torch.manual_seed(0)
    whole = nn.Linear(8, 3)
    split = copy.deepcopy(whole)
    a = make_step(whole)(batch(n=50))
    b = make_step(split, grad_accum=3)(batch(n=50))  # 17 + 17 + 16
    assert torch.allclose(a["loss"], b["loss"], rtol=1e-6)
    assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(whole.parameters(), split.parameters()))


def poisoned_loss(model, batch):
    return {"loss": mse(model, batch)["loss"] * float("nan")}


def infinite_gradient(model, batch):
    """A finite loss whose gradient is infinite: d sqrt(u)/du at u = 0."""
    out = model(batch["x"])
    return {"loss": F.mse_loss(out, batch["y"]) + torch.sqrt(out[0, 0] - out[0, 0].detach())}


@pytest.mark.parametrize("loss_fn", [poisoned_loss, infinite_gradient], ids=["nan-loss", "inf-grad"])
def test_non_finite_loss_or_gradient_skips_the_update(loss_fn):
    torch.manual_seed(0)
    model = nn.Linear(8, 3)
    before = [p.detach().clone() for p in model.parameters()]
    out = make_step(model, loss_fn=loss_fn)(batch())
    assert not torch.isfinite(out["loss"] + out["grad_norm"])
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_a_finite_step_after_a_skipped_one_updates_the_weights():
    torch.manual_seed(0)
    model = nn.Linear(8, 3)
    step = make_step(model)
    step.loss_fn = poisoned_loss
    step(batch())
    before = [p.detach().clone() for p in model.parameters()]
    step.loss_fn = mse
    out = step(batch())
    assert torch.isfinite(out["loss"] + out["grad_norm"])
    assert not any(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_the_non_finite_flag_names_any_bad_value_and_leaves_the_values_alone(bad, dtype):
    step = make_step(nn.Linear(8, 3))
    finite, other = torch.tensor(1.5, dtype=dtype), torch.tensor(2.0)
    step._flag_nonfinite([finite, other])
    assert step.found_inf.item() == 0.0
    step._flag_nonfinite([finite, torch.tensor(bad)])
    assert step.found_inf.item() == 1.0
    step._flag_nonfinite([torch.tensor(bad, dtype=dtype), other])
    assert step.found_inf.item() == 1.0
    assert finite.item() == 1.5 and other.item() == 2.0


def test_a_component_the_loss_function_keeps_and_changes_later_is_recorded_as_it_was():
    kept = torch.zeros(())

    def counting(model, batch):
        kept.add_(1)  # e.g. a running count in a buffer of the model
        return {"loss": F.mse_loss(model(batch["x"]), batch["y"]), "seen": kept}

    step, records = make_step(nn.Linear(8, 3), loss_fn=counting), StepRecords()
    for _ in range(3):
        records.write(step(batch()), 0.1)
    assert [r["seen"] for r in records.fetch(last_step=3, epoch=1)] == [1.0, 2.0, 3.0]


def test_components_are_returned_next_to_the_loss():
    def two_part(model, batch):
        a = F.mse_loss(model(batch["x"]), batch["y"])
        return {"loss": a * 3, "part": a}

    out = make_step(nn.Linear(8, 3), loss_fn=two_part)(batch())
    assert torch.allclose(out["loss"], out["part"] * 3)


def test_without_the_guard_a_non_finite_step_reaches_the_weights():
    torch.manual_seed(0)
    model = nn.Linear(8, 3)
    opt = build_adamw(model, lr=1e-2, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    step = Step(model, poisoned_loss, opt, sched, torch.device("cpu"), "fp32", 1.0, 1, guard_nonfinite=False)
    step(batch())
    assert not torch.isfinite(model.weight).all()


class RecordGrads(torch.optim.Optimizer):
    """An optimizer that only keeps a copy of the gradients it is asked to apply."""

    def __init__(self, params):
        super().__init__(params, {"lr": 0.0})
        self.seen = []

    def step(self, closure=None):
        self.seen = [p.grad.clone() for group in self.param_groups for p in group["params"] if p.grad is not None]


def accumulated_gradient(task, built, batch, grad_accum):
    from epochal.step import Step as StepUnderTest

    optimizer = RecordGrads([p for p in built.model.parameters()])
    step = StepUnderTest(built.model, task.loss, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
                         torch.device("cpu"), "fp32", 0.0, grad_accum, prepare=getattr(task, "prepare_batch", None))
    torch.manual_seed(1)  # the per-batch draws (flow noise and times) are the same for both
    values = step(batch)
    return optimizer.seen, values


TINY_TASKS = {
    "walks": ("walks", {"task.n_vertices": 16, "task.n_blocks": 2, "task.n_jumpers": 2, "task.rule_distance": 3,
                        "task.num_walks": 160, "task.walk_length": 34, "task.eval_sequences": 40,
                        "task.context": 16, "task.d_model": 32, "task.n_layers": 1, "task.n_heads": 2}),
    "regex": ("regex", {"task.n_train": 300, "task.n_val": 60, "task.n_test": 60, "task.n_test_ood": 60,
                        "task.max_len": 8, "task.ood_min_len": 9, "task.ood_max_len": 12, "task.d_model": 16,
                        "task.d_ff": 32, "task.lambda_l1": 0.01, "task.embed_rank": 4}),
    "flow-otcfm": ("flow", {"group": "g", "task.arch": "mlp", "task.flow": "otcfm", "task.dataset": "moons",
                            "task.aug": "flip", "task.n_samples": 1000, "task.hidden": 32, "task.depth": 2}),
}


@pytest.mark.parametrize("name", list(TINY_TASKS))
def test_accumulated_gradient_equals_the_whole_batch_gradient(name, tmp_path):
    """grad_accum=3 over a batch of 64 gives the one-batch gradient (regex: losses averaged over masked tokens;
    flow: noise, times and OT pairs drawn once per batch)."""
    from epochal.data import make_batches
    from epochal.resolve import resolve_config
    from epochal.tasks import RunContext

    task_name, settings = TINY_TASKS[name]
    task, config = resolve_config(task_name, None, settings)
    torch.manual_seed(0)
    built = task.build(config.task, RunContext(tmp_path, torch.device("cpu"), 0, config))
    batch = next(make_batches(built.train_data, torch.device("cpu"), 64, 0, False).epoch(0))
    whole, whole_values = accumulated_gradient(task, built, batch, 1)
    split, split_values = accumulated_gradient(task, built, batch, 3)
    assert len(whole) == len(split) > 0
    scale = max(g.abs().max() for g in whole)
    assert max((a - b).abs().max() for a, b in zip(whole, split)) <= 1e-5 * scale
    assert torch.allclose(whole_values["loss"], split_values["loss"], rtol=1e-5)


# --- grad_clip = 0 and a short last batch, end to end and at the step -------------------------------

from epochal.tasks.toy import ToyTask  # noqa: E402


class SteepToy(ToyTask):
    """The toy task with its loss scaled up: gradient norms far above 1, so any clipping shows."""

    name = "toy"

    def loss(self, model, batch):
        return {"loss": 1000 * super().loss(model, batch)["loss"]}


def clipped_run(tmp_path, grad_clip):
    from epochal import run
    from epochal.checkpoint import CheckpointStore

    result = run(SteepToy(), overrides={"train.max_epochs": 1, "train.progress": False, "task.n_train": 256,
                                        "task.n_eval": 16, "train.grad_clip": grad_clip, "log.plots": False,
                                        "train.log_every": 1},
                 out_dir=tmp_path, experiment_id=f"clip-{grad_clip}", log=lambda _: None)
    model = CheckpointStore(result.run_dir / "checkpoints", 3).load_states("last.pt")["model"]
    history = [json.loads(line) for line in (result.run_dir / "history.jsonl").read_text().splitlines()]
    return model, [h["grad_norm"] for h in history if "grad_norm" in h]


def test_grad_clip_zero_is_off_equal_to_an_unclipped_run_and_unlike_a_clipped_one(tmp_path):
    off, norms = clipped_run(tmp_path, 0.0)
    never_reached, _ = clipped_run(tmp_path, 1e12)  # clip_grad_norm_ scales by exactly 1.0: the unclipped update
    clipped, _ = clipped_run(tmp_path, 1.0)
    assert min(norms) > 1.0  # every step's gradient is one that clipping at 1.0 would change
    assert all(torch.equal(off[k], never_reached[k]) for k in off)
    assert any(not torch.equal(off[k], clipped[k]) for k in off)


def sgd_step(model, grad_accum, loss_fn):
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return Step(model, loss_fn, opt, sched, torch.device("cpu"), "fp32", 0.0, grad_accum)


def summed(model, batch):
    return F.mse_loss(model(batch["x"]), batch["y"], reduction="sum"), batch["y"].numel()


@pytest.mark.parametrize("loss_fn", [mse, summed], ids=["mean", "sum-count"])
def test_grad_accum_larger_than_a_short_batch_gives_the_whole_batch_gradient(loss_fn):
    torch.manual_seed(0)
    model = nn.Linear(8, 3)
    reference = copy.deepcopy(model)
    short = batch(n=5)  # the last batch of an epoch: fewer examples than micro-batches
    out = sgd_step(model, grad_accum=16, loss_fn=loss_fn)(short)
    whole = F.mse_loss(reference(short["x"]), short["y"])
    whole.backward()
    assert torch.allclose(out["loss"], whole.detach(), rtol=1e-6)
    for p, q in zip(model.parameters(), reference.parameters()):  # SGD at lr 1: the update is the gradient
        assert torch.allclose(p, q.detach() - q.grad, atol=1e-6)


def test_grad_accum_larger_than_the_last_batch_trains_like_whole_batches_end_to_end(tmp_path):
    from epochal import run

    def go(grad_accum):
        return run("toy", overrides={"train.max_epochs": 2, "train.progress": False, "task.n_train": 200,
                                     "task.n_eval": 16, "train.grad_accum": grad_accum, "log.plots": False},
                   out_dir=tmp_path, experiment_id=f"accum-{grad_accum}", log=lambda _: None)

    whole, accumulated = go(1), go(16)  # batches of 64, 64, 64 and 8: the last one is shorter than 16
    assert accumulated.status == "completed" and accumulated.result["steps"] == whole.result["steps"] == 8
    a, b = whole.result["curves"]["train_loss"], accumulated.result["curves"]["train_loss"]
    assert a[0] == pytest.approx(b[0], rel=1e-6) and b == pytest.approx(a, rel=1e-3)


# --- the per-step records the loop fetches ---------------------------------------------------------


def test_step_records_come_back_numbered_with_their_learning_rates_and_are_then_gone():
    records = StepRecords()
    assert records.fetch(last_step=0, epoch=1) == []
    for i, lr in enumerate([0.1, 0.2, 0.3]):
        records.write({"loss": torch.tensor(float(i)), "grad_norm": torch.tensor(10.0 + i)}, lr)
    fetched = records.fetch(last_step=7, epoch=2)
    assert fetched == [{"step": 5, "epoch": 2, "lr": 0.1, "loss": 0.0, "grad_norm": 10.0},
                       {"step": 6, "epoch": 2, "lr": 0.2, "loss": 1.0, "grad_norm": 11.0},
                       {"step": 7, "epoch": 2, "lr": 0.3, "loss": 2.0, "grad_norm": 12.0}]
    assert records.fetch(last_step=7, epoch=2) == []
    records.write({"loss": torch.tensor(5.0), "grad_norm": torch.tensor(1.0)}, 0.5)
    assert records.fetch(last_step=8, epoch=2) == [{"step": 8, "epoch": 2, "lr": 0.5, "loss": 5.0, "grad_norm": 1.0}]
    for _ in range(4):  # unfetched steps, then discarded (a rollback replaces those steps)
        records.write({"loss": torch.tensor(1.0), "grad_norm": torch.tensor(1.0)}, 0.5)
    records.discard()
    assert records.fetch(last_step=12, epoch=3) == []


def test_a_sum_over_no_examples_is_a_zero_loss_and_no_update_not_a_nan():
    """A (sum, count) pair with count 0 (e.g. a batch whose tokens are all masked): the count is taken as 1."""
    def nothing_counted(model, batch):
        return F.mse_loss(model(batch["x"]), batch["y"], reduction="sum") * 0.0, 0

    torch.manual_seed(0)
    model = nn.Linear(8, 3)
    before = copy.deepcopy(model.state_dict())
    out = sgd_step(model, grad_accum=1, loss_fn=nothing_counted)(batch())
    assert out["loss"].item() == 0.0  # 0 / max(0, 1), where 0 / 0 would be NaN
    assert all(torch.equal(value, before[name]) for name, value in model.state_dict().items())
