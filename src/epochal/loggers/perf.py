"""Throughput and memory once per log interval, logged like any other value.

The run asks ``Perf.measure`` for them when it fetches an interval and adds them to the
interval's newest record before ``on_log``, so every callback, history.jsonl and every
tracker get them, with no extra host sync (only host clocks and allocator counters):

  steps_per_second, samples_per_second   optimizer steps and examples per second of training
  tokens_per_second                      where the task declares tokens per example
  data_wait_seconds, data_wait_fraction  time the loop waited for the next batch in the interval
  peak_host_mb, peak_cuda_mb             peak resident host memory, peak CUDA memory allocated
  mfu                                    model FLOPs utilisation, on a GPU when the task knows its FLOPs
  compile_seconds                        time torch.compile took in the interval (train.compile), left out
                                         of the step rates above

The clock restarts at each epoch start, so an evaluation or checkpoint between epochs
does not count as training time; a mid-epoch checkpoint does.
"""

from __future__ import annotations

import sys
import time

import torch

from epochal.callbacks.base import Callback

PERF_KEYS = frozenset({"steps_per_second", "samples_per_second", "tokens_per_second", "data_wait_seconds",
                       "data_wait_fraction", "peak_host_mb", "peak_cuda_mb", "mfu", "compile_seconds"})

# Dense bf16 tensor-core peaks in TFLOP/s, by a part of the GPU's name (first match wins).
PEAK_TFLOPS = (("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("A100", 312.0), ("L40S", 362.0),
               ("L4", 121.0), ("A10G", 70.0), ("A10", 125.0), ("4090", 165.0), ("V100", 125.0), ("T4", 65.0))


def peak_flops(device: torch.device, configured_tflops: float) -> float | None:
    """The device's peak FLOP/s for MFU: the configured one, else looked up by GPU name; None on CPU or unknown."""
    if configured_tflops:
        return configured_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tflops * 1e12 for part, tflops in PEAK_TFLOPS if part in name), None)


def peak_host_mb() -> float | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB elsewhere


class Perf(Callback):
    def __init__(self, batch_size: int, tokens_per_example: int | None, flops_per_example: float | None,
                 peak: float | None):
        self.batch_size, self.tokens, self.flops, self.peak = batch_size, tokens_per_example, flops_per_example, peak
        self.time, self.step, self.waited, self.compiled = 0.0, 0, 0.0, 0.0

    def _mark(self, run) -> None:
        self.time, self.step, self.waited, self.compiled = (time.perf_counter(), run.state.step,
                                                            run.data_wait_seconds, run.compile_seconds)

    def on_fit_start(self, run) -> None:
        self._mark(run)

    def on_epoch_start(self, run) -> None:
        self._mark(run)

    def measure(self, run, step: int) -> dict[str, float]:
        """The throughput of the interval up to ``step`` (the run adds it to the interval's last record)."""
        elapsed, steps = time.perf_counter() - self.time, step - self.step
        waited = run.data_wait_seconds - self.waited
        compiled = run.compile_seconds - self.compiled
        elapsed -= compiled
        self._mark(run)
        if steps <= 0 or elapsed <= 0:  # a rollback moved the step back: no interval to measure
            return {}
        samples = steps * self.batch_size / elapsed
        values = {"steps_per_second": steps / elapsed, "samples_per_second": samples,
                  "data_wait_seconds": waited, "data_wait_fraction": waited / elapsed}
        if compiled:
            values["compile_seconds"] = compiled
        if self.tokens:
            values["tokens_per_second"] = samples * self.tokens
        host = peak_host_mb()
        if host is not None:
            values["peak_host_mb"] = host
        if run.device.type == "cuda":
            values["peak_cuda_mb"] = torch.cuda.max_memory_allocated(run.device) / 2**20
        if self.flops and self.peak:
            values["mfu"] = self.flops * samples / self.peak
        return values
