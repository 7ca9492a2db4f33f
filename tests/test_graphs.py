"""train.cuda_graphs on a machine without CUDA: every refusal is one line (the captured step itself runs in
test_graphs_gpu.py)."""

import pytest
import torch

from epochal.errors import ConfigError
from epochal.graphs import check_capturable, check_fixed_shapes

CUDA = torch.device("cuda")


def adamw():
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], fused=False)


def test_cuda_graphs_on_a_cpu_run_is_refused_in_one_line(run_toy):
    with pytest.raises(ConfigError) as refused:
        run_toy(settings={"train.device": "cpu", "train.cuda_graphs": True})
    message = str(refused.value)
    assert message.startswith("train.cuda_graphs: CUDA graphs need a CUDA device, this run is on cpu")
    assert "allowed here: false" in message and "\n" not in message


def test_a_refused_graph_run_leaves_no_folder(run_toy, tmp_path):
    with pytest.raises(ConfigError):
        run_toy("refused", settings={"train.device": "cpu", "train.cuda_graphs": True})
    assert not (tmp_path / "refused").exists()


@pytest.mark.parametrize("precision, accum, world, message", [
    ("fp16", 1, 1, "fp16's loss scaling decides on the host; allowed with CUDA graphs: train.precision = bf16 or fp32"),
    ("fp32", 2, 1, "not combined with train.grad_accum = 2 yet; allowed: grad_accum = 1"),
    ("bf16", 1, 2, "not under torchrun (DDP) yet; allowed: one process"),
])
def test_settings_a_graph_cannot_honour_are_refused(precision, accum, world, message):
    with pytest.raises(ConfigError, match="^train.cuda_graphs: ") as refused:
        check_capturable(CUDA, precision, accum, world, adamw())
    assert message in str(refused.value)


def test_an_optimizer_without_a_capturable_mode_is_refused():
    lbfgs = torch.optim.LBFGS([torch.nn.Parameter(torch.zeros(2))])
    with pytest.raises(ConfigError, match="LBFGS cannot run inside a CUDA graph"):
        check_capturable(CUDA, "fp32", 1, 1, lbfgs)
    check_capturable(CUDA, "bf16", 1, 1, adamw())  # what a graph can hold passes


@pytest.mark.parametrize("steps, examples, drop_last, refused", [
    (4, 250, False, True),  # 250 = 3 x 64 + 58: a last batch of another shape
    (4, 250, True, False),
    (4, 256, False, False),
    (None, None, False, False),  # a stream: its shapes are checked at each step
])
def test_a_last_partial_batch_is_refused_unless_dropped(steps, examples, drop_last, refused):
    if refused:
        with pytest.raises(ConfigError, match="last batch of each epoch holds 58 examples, not 64.*drop_last = true"):
            check_fixed_shapes(steps, examples, 64, drop_last)
    else:
        check_fixed_shapes(steps, examples, 64, drop_last)


def test_graphs_and_reduce_overhead_are_refused_together(run_toy):
    with pytest.raises(ConfigError, match="reduce-overhead compiles CUDA graphs of its own"):
        run_toy(settings={"train.cuda_graphs": True, "train.compile": "reduce-overhead"})
