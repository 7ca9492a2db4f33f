"""--amp on a CUDA GPU: bf16 autocast where the GPU has bf16 (every GPU since Ampere), recorded in config.toml."""

import tomllib

import pytest
import torch

from epochal.step import amp_precision

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_amp_trains_in_bf16_on_a_gpu_that_has_it_and_records_it(run_toy):
    expected = "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    assert amp_precision(torch.device("cuda")) == expected
    result = run_toy(settings={"train.device": "cuda", "train.precision": "amp"})
    assert result.status == "completed"
    config = tomllib.loads((result.run_dir / "config.toml").read_text())
    assert config["train"]["precision"] == expected
