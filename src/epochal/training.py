"""A run while it trains (``Training``): the model, optimizer, data, state registry and callbacks,
and the operations the loop (``loop.py``) calls on them. Callbacks see it through ``view.RunView``.
"""

from __future__ import annotations

import contextlib
import datetime
import warnings
from typing import Any, Callable

import torch

from epochal import loggers
from epochal.callbacks.base import EVENTS, Callback, handles
from epochal.callbacks.best import BestMetric
from epochal.callbacks.checkpointing import Checkpointing
from epochal.callbacks.console import Console
from epochal.callbacks.early_stopping import EarlyStopping
from epochal.callbacks.ema import EMA
from epochal.callbacks.gate import Gate
from epochal.callbacks.nan_policy import NanPolicy
from epochal.callbacks.preemption import Preemption
from epochal.callbacks.folder_writer import FolderWriter
from epochal.checkpoint import (BackgroundWriter, CheckpointStore, load_entry, make_payload, payload_states,
                                save_weights, serialize)
from epochal.compiling import CompileWatch, compile_loss
from epochal.config import RunConfig, compile_mode
from epochal.data import make_batches
from epochal.decisions import Decision, RollBack, Save, Split, Stop, as_decisions
from epochal.distributed import ALONE, RanksRNG, World
from epochal.errors import CheckpointError, ConfigError, EpochalError
from epochal.faults import fault_hooks
from epochal.graphs import CapturedStep, check_capturable, check_fixed_shapes
from epochal.optim import build_adamw, make_schedule, resolve_warmup_steps
from epochal.run_folder import RunFolder
from epochal.registry import StateRegistry
from epochal.sharded_checkpoint import (STATE, SUFFIX, gather_hashes, is_sharded, new_group, new_stager, own_hashes,
                                        read_shards, split, temp_folder, write_shards, write_state)
from epochal.sharding import ModelState, OptimizerState, gathered, no_sync, whole_model_state
from epochal.signals import PreemptionSignals
from epochal.state import TrainState, capture_rng, restore_rng
from epochal.step import Step, StepRecords, autocast, nonfinite_guard
from epochal.task import Built, RunContext, Task
from epochal.view import RunView

LINKS = {"best": "best", "gate": "checkpoint_gate"}  # Save kinds that keep a named link to the checkpoint


class Training:
    def __init__(self, task: Task, config: RunConfig, folder: RunFolder, built: Built, context: RunContext,
                 callbacks: list[Callback], signals: PreemptionSignals, log: Callable[[str], None],
                 world: World = ALONE):
        train, device = config.train, context.device
        self.task, self.config, self.folder, self.context, self.printer = task, config, folder, context, log
        self.world = world  # under torchrun: this rank; only rank 0 writes, evaluates and prints
        if world.size > 1 and config.checkpoint.every_minutes:
            raise ConfigError("checkpoint.every_minutes: each process's clock would decide at a different step; "
                              "allowed with more than one process: checkpoint.every_steps")
        self.device, self.eval_context = device, built.eval_context
        self.signals = signals  # the preemption signals received, agreed across ranks at each fetch
        self.model = built.model.to(device)
        trained = world.wrap(self.model, device, train)  # DistributedDataParallel or FSDP under torchrun
        # Sharded (sharding.py): every rank evaluates, tests and exports, since a forward needs every shard.
        self.sharded = world.size > 1 and train.parallel == "fsdp"
        # train.parallel = "fsdp" at any world size: checkpoints are folders of shards (sharded_checkpoint.py)
        # holding the model's and optimizer's state under parameter names, so they resume at any size.
        self.sharded_checkpoints = train.parallel == "fsdp"
        self.suffix = SUFFIX if self.sharded_checkpoints else ".pt"
        self.batches = make_batches(built.train_data, device, train.batch_size, train.seed, train.drop_last,
                                    train.num_workers, world)
        self.batches.follow(lambda: (self.state.epoch, self.state.batch_in_epoch))  # a stream saves what was trained
        self.steps_per_epoch = self.batches.steps_per_epoch  # None for iterable data
        self.total_steps = training_steps(train.max_epochs, self.steps_per_epoch, train.max_steps)
        if built.optimizer is not None:
            self.optimizer = built.optimizer([p for p in self.model.parameters() if p.requires_grad])
        else:
            o = config.optim
            self.optimizer = build_adamw(self.model, o.lr, o.weight_decay, o.betas, o.eps, o.decay_all)
        self.scheduler = (built.scheduler or default_scheduler(config))(self.optimizer, self.total_steps)
        guarded = nonfinite_guard(train.nan_policy, train.guard_nonfinite, self.optimizer)
        compiled = compile_mode(train.compile) != "off"
        self.device_step = Step(trained, compile_loss(task.loss, train.compile) if compiled else task.loss,
                                self.optimizer, self.scheduler, device, train.precision, train.grad_clip,
                                train.grad_accum, guarded, getattr(task, "prepare_batch", None), world,
                                no_sync(trained) if self.sharded else getattr(trained, "no_sync", None),
                                CompileWatch(train.compile) if compiled else None)
        # Under torchrun the ranks agree every step whether one ran out of memory (one small all-reduce).
        self.device_step.agree_memory = train.microbatch == "auto" and world.size > 1
        self.rng_before_step: dict | None = None  # train.microbatch = "auto": what a retried step draws again
        self.captured: CapturedStep | None = None  # the step as a CUDA graph (train.cuda_graphs)
        if train.cuda_graphs:
            check_capturable(device, train.precision, train.grad_accum, world.size, self.optimizer)
            check_fixed_shapes(self.steps_per_epoch, getattr(self.batches, "n", None), train.batch_size,
                               train.drop_last)
            self.captured = CapturedStep(self.device_step)
        self.records = StepRecords()
        self.state = TrainState()
        self.store = CheckpointStore(folder.path / "checkpoints", config.checkpoint.keep_last, writes=world.main)
        self.writer = BackgroundWriter(config.checkpoint.async_write)
        # Sharded checkpoints' collectives, on a group of their own: a background save's never meet training's.
        self.checkpoint_group = new_group() if self.sharded_checkpoints and world.size > 1 else None
        # An asynchronous sharded save copies the tensors on a thread while the next step computes: whatever would
        # change them (the optimizer's step, an evaluation's weight swap) first waits for the copy (await_staging).
        async_shards = self.sharded_checkpoints and config.checkpoint.async_write
        self.stager, self.staging = (new_stager(device) if async_shards else None), None
        if async_shards:
            self.optimizer.register_step_pre_hook(lambda *_: self.await_staging())
        self.config_dict, self.config_hash = config.to_dict(), config.hash()
        self.last_saved_step = -1
        # The throughput meter adds its values to each fetched interval's last record (fetch).
        self.throughput, listeners = loggers.listeners(task, config, self.model, device)
        writers = [*listeners, Console(log, train.progress, train.max_epochs)] if world.main else []
        self.callbacks = [self.throughput, *policies(config, self.model), *task.callbacks(config.task, context),
                          *callbacks, Checkpointing(config.checkpoint, train.max_epochs), Preemption(signals),
                          FolderWriter(), *writers, *fault_hooks()]
        # Per event, the callbacks that handle it: on_step_end runs every step, most callbacks ignore it.
        self.handlers = {event: [c for c in self.callbacks if handles(c, event)] for event in EVENTS}
        self.registry = self._register()
        self.view = RunView(self)  # what callbacks receive

    def _register(self) -> StateRegistry:
        registry = StateRegistry()
        by_name = self.sharded_checkpoints
        registry.register("model", ModelState(self.model) if by_name else self.model, weights=True)
        registry.register("optimizer", OptimizerState(self.model, self.optimizer) if by_name else self.optimizer)
        registry.register("scheduler", self.scheduler)
        if self.device_step.scaler is not None:
            registry.register("scaler", self.device_step.scaler)
        registry.register("state", self.state)
        registry.register("data", self.batches)
        registry.register("rng", RanksRNG(self.world))
        for callback in self.callbacks:
            if callback.key:
                registry.register(callback.key, callback, weights=provides_weights(callback))
        # What a sharded checkpoint writes through DCP: the entries whose tensors may be shards.
        self.shard_entries = ["model", "optimizer", *(c.key for c in self.callbacks if c.key)]
        return registry

    # ---------------------------------------------------------------- budget
    def out_of_steps(self) -> bool:
        return self.config.train.max_steps is not None and self.state.step >= self.config.train.max_steps

    def out_of_budget(self) -> bool:
        return self.state.epoch >= self.config.train.max_epochs or self.out_of_steps()

    def eval_due_at_step(self) -> bool:
        every = self.config.train.eval_every_steps
        return bool(every) and self.state.step % every == 0

    def eval_due_at_epoch_end(self) -> bool:
        train = self.config.train
        return self.state.epoch % train.eval_every == 0 or self.out_of_budget()

    def gate_failed(self) -> bool:
        """Whether the run has a gate (any task's [gate]) that has not passed."""
        return any(isinstance(c, Gate) and not c.passed for c in self.callbacks)

    # ---------------------------------------------------------------- events
    def emit(self, event: str, *args) -> list[Decision]:
        decisions: list[Decision] = []
        for callback in self.handlers[event]:
            returned = getattr(callback, event)(self.view, *args)
            if returned is not None:  # the usual answer, and the one that costs nothing to check
                decisions += as_decisions(returned, callback, event)
        return decisions

    # ------------------------------------------------------------- training
    def train_step(self, batch) -> Split | None:
        """One optimizer step; its values stay on the device until ``log``. Out of memory under
        train.microbatch = "auto": nothing is recorded and the Split to retry the batch with is returned."""
        self.writer.check()  # a background save that failed ends the run here, one step after
        lr = self.optimizer.param_groups[0]["lr"]
        self.rng_before_step = capture_rng() if self.config.train.microbatch == "auto" else None
        try:
            values = (self.captured or self.device_step)(batch)
        except torch.OutOfMemoryError as error:
            reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        else:
            self.records.write(values, lr)
            self.state.batch_in_epoch += 1
            self.state.step += 1
            return None
        return self._split_after(reason, batch)  # outside the except block: the failed attempt's frames are let go

    def _split_after(self, reason: str, batch) -> Split:
        """The next split to try, or one line when even micro-batches of one example do not fit."""
        step, now = self.state.step + 1, self.device_step.micro_batches
        if self.rng_before_step is None:
            raise EpochalError(f"step {step} ran out of memory ({reason}); allowed: train.microbatch = \"auto\" "
                               "(retries the batch in micro-batches, same gradient), a smaller train.batch_size or "
                               "a larger train.grad_accum")
        if now >= self.device_step.most_micro_batches(batch):
            raise EpochalError(f"train.microbatch: step {step} runs out of memory even in micro-batches of one "
                               f"example ({reason}{memory_figures(self.device)}); the last checkpoint is kept; "
                               "allowed: a smaller model, or a device with more memory")
        return Split(now * 2, f"step {step} ran out of memory ({reason})")

    def split(self, decision: Split) -> None:
        """Undo the failed attempt (partial gradients, random numbers drawn, cached memory) and train in
        ``decision.micro_batches`` micro-batches per accumulation chunk from now on."""
        self.optimizer.zero_grad(set_to_none=True)
        restore_rng(self.rng_before_step)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.device_step.micro_batches = self.state.micro_batches = decision.micro_batches
        self.printer(f"warning: {decision.reason}: retrying it in {decision.micro_batches} micro-batches "
                     f"(of {self.config.train.grad_accum * decision.micro_batches} a step), and so on from now")
        self.folder.append_history([{"event": "microbatch", "step": self.state.step + 1,
                                     "micro_batches": decision.micro_batches, "reason": decision.reason}])

    def fetch(self) -> list[Decision]:
        """Fetch the values of the steps since the last call (the one host sync) and hand them to on_log,
        the interval's throughput added to its last record."""
        agree = self._agree if self.world.size > 1 else None
        records = self.records.fetch(self.state.step, self.state.epoch + 1, agree)
        if not records:
            return []
        self.state.add_grad_norms(records)
        for name in records[0]:
            if name not in ("step", "epoch", "lr", "grad_norm"):
                self.state.curves.setdefault("train_loss" if name == "loss" else name, []).extend(r[name] for r in records)
        records[-1].update(self.throughput.measure(self.view, self.state.step))  # for history and trackers, not curves
        return self.emit("on_log", self.state.step, records)

    def _agree(self, rows: torch.Tensor) -> torch.Tensor:
        """Under torchrun, the log interval's one collective: every rank records the global batch's values
        (the ranks' mean; the gradient norm is already the all-reduced gradient's) and learns of any signal."""
        exact = [i for i, name in enumerate(self.records.names) if name == "grad_norm"]
        rows, counts = self.world.agree(rows, self.signals.flags(), exact)
        self.signals.agree(counts)
        return rows

    # ------------------------------------------------------------ evaluation
    @contextlib.contextmanager
    def evaluating(self, states: dict[str, Any] | None = None):
        """Evaluate inside this block: eval mode, no grad, the evaluation weights (EMA) swapped in,
        random numbers from a fixed seed; ``states`` (a checkpoint's) replace the weights for the block.
        Everything, the weights and the training RNG included, is restored on the way out."""
        self.await_staging()  # an evaluation's weights (EMA) are swapped into the parameters being copied
        rng = capture_rng()
        torch.manual_seed(self.config.train.seed)
        was_training = self.model.training
        self.model.eval()
        try:
            with contextlib.ExitStack() as stack:
                if states is not None:
                    stack.enter_context(self.registry.weights_from(states))
                for callback in self.callbacks:
                    swap = callback.eval_weights(self.model)
                    if swap is not None:
                        stack.enter_context(swap)
                if self.sharded:
                    stack.enter_context(gathered(self.model))
                stack.enter_context(torch.no_grad())
                stack.enter_context(autocast(self.device, self.config.train.precision))
                yield self.model
        finally:
            self.model.train(was_training)
            restore_rng(rng)

    def evaluate(self) -> dict[str, float]:
        """The task's metrics; under torchrun rank 0 evaluates (sharded: every rank, each forward needs every
        shard) and every rank gets rank 0's values."""
        metrics = self.world.broadcast(self._measure()) if self.sharded else self.world.from_main(self._measure)
        self.state.metrics = metrics
        for name, value in metrics.items():
            self.state.curves.setdefault(name, []).append(value)
        self.state.eval_epochs.append(self.state.epoch)
        self.state.eval_steps.append(self.state.step)
        return metrics

    def _measure(self) -> dict[str, float]:
        with self.evaluating() as model:
            metrics = {name: float(value) for name, value in self.task.evaluate(model, self.eval_context).items()}
            named = self.task.val_loss_metric
            loss = metrics.get(named) if named else self.task.validation_loss(model, self.eval_context)
            self.state.val_loss = None if loss is None else float(loss)
            return metrics

    def test(self) -> dict | None:
        """The task's test metrics on the last weights and, if kept, on best.pt's; rank 0's."""
        if not self.world.main and not self.sharded:
            return None
        with self.evaluating() as model:
            last = self.task.test(model, self.eval_context)
        if last is None:
            return None
        tested = {"last": last}
        best = next((entry for entry in self.store.manifest() if entry["file"] == LINKS["best"] + self.suffix), None)
        if best is not None:
            with self.evaluating(self._states(best, load_entry(self.store.folder, best))) as model:
                tested["best"] = self.task.test(model, self.eval_context)
        return tested if self.world.main else None

    # ----------------------------------------------------------- checkpoints
    def save(self, saves: list[Save]) -> None:
        """One checkpoint for the saves decided together: copied off the device now, written in the background."""
        kinds = {save.kind for save in saves}
        state = self.state
        if "preempt" not in kinds and state.batch_in_epoch == 0:
            name, kind = f"checkpoint_epoch_{state.epoch:04d}{self.suffix}", "epoch"
        else:
            name, kind = f"checkpoint_step_{state.step:08d}{self.suffix}", "preempt" if "preempt" in kinds else "step"
        links = [link + self.suffix for link in ("last", *(LINKS[k] for k in LINKS if k in kinds))]
        info = {"kind": kind, "step": state.step, "epoch": state.epoch, "batch_in_epoch": state.batch_in_epoch,
                "saved": datetime.datetime.now().isoformat(timespec="seconds")}
        wait = any(save.wait for save in saves)
        if self.sharded_checkpoints:
            self.writer.wait()  # one save at a time: the one before, and its collectives, have finished
        states = self.registry.state_dict()  # every rank: the random generators are gathered to rank 0
        self.last_saved_step = state.step
        if self.sharded_checkpoints:
            self._save_shards(name, links, info, states, wait)
            return
        if not self.world.main:
            return
        payload = make_payload(states, self.config_dict, self.config_hash, self.world.size)
        store = self.store

        def write() -> None:
            store.write(name, serialize(payload), info)
            for link in links:
                store.link(name, link)

        self.writer.submit(write, str(store.folder / name))
        if wait:
            self.writer.wait()

    def _save_shards(self, name: str, links: list[str], info: dict, states: dict, wait: bool) -> None:
        """Every rank writes its shards (asynchronously: the step waits only for their copy to host memory);
        once all are written and hashed, rank 0 adds state.pt and the store renames the folder into place."""
        plain, tensors = split(states, self.shard_entries)
        payload = make_payload(plain, self.config_dict, self.config_hash, self.world.size) if self.world.main else {}
        store, rank, group = self.store, self.world.rank, self.checkpoint_group
        tmp = temp_folder(store.folder, name)
        self.staging, upload = write_shards(tmp, tensors, group, self.stager)

        def finish() -> None:
            if upload is not None:
                upload.result()
            hashes = gather_hashes(own_hashes(tmp, rank), group)
            if hashes is None:  # not rank 0: its files are written and hashed
                return
            hashes[STATE] = write_state(tmp, serialize(payload))
            store.enter_folder(tmp, name, hashes, info)
            for link in links:
                store.link(name, link)

        self.writer.submit(finish, str(store.folder / name))
        if wait:
            self.writer.wait()

    def await_staging(self) -> None:
        """Until an asynchronous save's copy to host memory is done, nothing may change what it copies."""
        if self.staging is not None:
            staging, self.staging = self.staging, None
            try:
                staging.result()
            except Exception as err:  # one line, as a write that fails says it
                raise CheckpointError(f"checkpoint: cannot copy the shards to host memory ({type(err).__name__}: "
                                      f"{err}); earlier checkpoints are intact") from err

    def load_checkpoint(self, warn: Callable[[str], None], check: Callable[[dict], None] | None = None,
                        keep: tuple[str, ...] = ()) -> tuple[dict, dict] | None:
        """The one way a checkpoint enters a training run (resume and roll-back both come here).

        The newest checkpoint of the run's store that loads (damaged ones are reported through ``warn``
        and passed over), accepted by ``check`` (which raises to refuse it), goes into the state registry
        (``keep``: entries that stay as they are); the history after it is cut. Returns its manifest entry
        and payload; None when no checkpoint loads."""
        self.writer.wait()
        self.world.barrier()  # every rank reads the checkpoint rank 0 has finished writing
        newest = self._newest_valid(warn)
        if newest is None:
            return None
        if check is not None:
            check(newest[1])
        self.registry.load_state_dict(self._states(*newest), keep=keep)
        self.device_step.micro_batches = self.state.micro_batches  # a split found before the checkpoint is kept
        if self.captured is not None:
            self.captured.release()  # the optimizer's state tensors were replaced: capture again
        self.records.discard()
        self.last_saved_step = self.state.step
        self.folder.truncate_history(self.state.step, self.state.epoch)
        return newest

    def _newest_valid(self, warn: Callable[[str], None]) -> tuple[dict, dict] | None:
        """(manifest entry, payload) of the newest checkpoint that loads. Sharded: rank 0 checks every file's
        hash and the other ranks read the state.pt of the one it chose."""
        if not self.sharded_checkpoints or self.world.size == 1:
            return self.store.newest_valid(warn=warn)
        found = self.store.newest_valid(warn=warn) if self.world.main else None
        entry = self.world.broadcast(None if found is None else found[0])
        if entry is None or self.world.main:
            return found
        return entry, load_entry(self.store.folder, entry, shards_checked=True)

    def _states(self, entry: dict, payload: dict) -> dict:
        """The registry's states a checkpoint holds; a sharded one's tensors read in this run's layout."""
        states = payload_states(payload)
        if not is_sharded(entry["file"]):
            return states
        return read_shards(self.store.folder / entry["file"], states, self.registry.states, self.checkpoint_group)

    def roll_back(self, decision: RollBack) -> Stop | None:
        """Reload the newest valid checkpoint (the policy keeps its own count) and scale the learning rate;
        with no checkpoint to go back to, the Stop that fails the run."""
        if self.load_checkpoint(warnings.warn, keep=("nan_policy",)) is None:
            return Stop(f"{decision.reason}; no checkpoint to roll back to", "failed")
        for i, group in enumerate(self.optimizer.param_groups):
            ratio = decision.lr_factor * group["initial_lr"] / self.scheduler.base_lrs[i]
            self.scheduler.base_lrs[i] *= ratio
            group["lr"] *= ratio
        warnings.warn(f"{decision.reason}: rolled back to step {self.state.step}, "
                      f"learning rate x{decision.lr_factor:g} of the configured one", stacklevel=2)
        return None

    # ---------------------------------------------------------------- result
    def export_weights(self) -> None:
        """model.safetensors, and model_<key>.safetensors for each callback's evaluation weights (EMA)."""
        if not self.world.main and not self.sharded:
            return
        self.await_staging()
        folder = self.store.folder
        self._export(folder / "model.safetensors")
        for callback in self.callbacks:
            if provides_weights(callback):
                with callback.eval_weights(self.model):
                    self._export(folder / f"model_{callback.key}.safetensors")

    def _export(self, path) -> None:
        """The model's weights as safetensors; sharded, every rank gathers them and rank 0 writes."""
        weights = self.whole_weights()
        if self.world.main:
            save_weights(path, weights)

    def whole_weights(self) -> dict[str, torch.Tensor]:
        """The model's state_dict with whole tensors (sharded: a collective every rank makes; rank 0 gets them)."""
        return whole_model_state(self.model) if self.sharded else self.model.state_dict()

    def result(self) -> dict:
        state = self.state
        result: dict[str, Any] = {
            "experiment_id": self.config.experiment_id, "task": self.config.task_name, "status": state.status,
            "epochs": state.epoch, "steps": state.step, "metrics": state.metrics, "best": None,
            "eval_epochs": state.eval_epochs, "eval_steps": state.eval_steps, "curves": state.curves,
            "metadata": {"stop_reason": state.stop_reason, "config_hash": self.config_hash,
                         "train_seconds": round(state.train_seconds, 3), **self._step_metadata()},
            "checkpoints": sorted(entry["file"] for entry in self.store.manifest()),
        }
        for callback in self.callbacks:
            extra = callback.result()
            result["metadata"].update(extra.get("metadata", {}))
            result.update({key: value for key, value in extra.items() if key != "metadata"})
        if state.tested is not None:
            result["test"] = state.tested
        return result


    def _step_metadata(self) -> dict:
        """What compiling and capturing the step cost (of this attempt: a resume starts them again)."""
        found = {}
        watch = self.device_step.watch
        if watch is not None:
            found.update(compile_seconds=round(watch.seconds, 3), recompiles=watch.recompiles)
        if self.captured is not None:
            found["cuda_graph_captures"] = self.captured.captures
        return found


def memory_figures(device: torch.device) -> str:
    """What a failed allocation had to work with, on a GPU."""
    if device.type != "cuda":
        return ""
    total = torch.cuda.get_device_properties(device).total_memory
    return (f"; {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB at the peak, "
            f"{torch.cuda.memory_reserved(device) / 2**30:.1f} GiB reserved of {total / 2**30:.1f} GiB")


def training_steps(max_epochs: int, steps_per_epoch: int | None, max_steps: int | None) -> int:
    """The step count schedules are sized for: whichever budget ends training first."""
    budgets = [b for b in (max_steps, None if steps_per_epoch is None else max_epochs * steps_per_epoch) if b]
    if not budgets:
        raise ConfigError("train.max_steps: required for data of unknown length (an iterable dataset); "
                          "allowed: a positive step budget")
    return min(budgets)


def default_scheduler(config: RunConfig) -> Callable:
    """Warmup, then cosine/linear/constant, sized for the run's step budget (the schedule section)."""
    s = config.schedule

    def make(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
        warmup = resolve_warmup_steps(total_steps, s.warmup_fraction, s.warmup_steps)
        if warmup >= total_steps:
            raise ConfigError(f"schedule.warmup_steps: {warmup} warmup steps, but training has only {total_steps}; "
                              "allowed: fewer")
        return torch.optim.lr_scheduler.LambdaLR(optimizer, make_schedule(s.kind, warmup, total_steps, s.min_lr_ratio))

    return make


def provides_weights(callback: Callback) -> bool:
    """A callback with its own evaluation weights (EMA): best.pt's copy of them is tested with the model."""
    return type(callback).eval_weights is not Callback.eval_weights


def policies(config: RunConfig, model: torch.nn.Module) -> list[Callback]:
    """The built-in policy callbacks a config asks for, in the order they hear each event."""
    found: list[Callback] = []
    if config.ema.enabled:
        found.append(EMA(model, config.ema.decay, config.ema.warmup))
    es = config.early_stop
    if es.enabled:
        found.append(EarlyStopping(es.metric, es.mode, es.patience, es.min_delta))
    if config.gate.above or config.gate.below:
        found.append(Gate(config.gate.above, config.gate.below, config.gate.stop))
    if config.checkpoint.best_metric:
        found.append(BestMetric(config.checkpoint.best_metric, config.checkpoint.best_mode))
    train = config.train
    # Under fp16 an infinite gradient norm is the scaler's business; a non-finite loss never is.
    checked = ("loss",) if train.precision == "fp16" else ("loss", "grad_norm")
    found.append(NanPolicy(train.nan_policy, train.max_rollbacks, train.rollback_lr_scale, checked))
    return found
