"""train(run): the training loop, top to bottom, and the loop's contract.

    a run loaded from a preemption checkpoint trains on (Resume)
    on_fit_start
    while the budget (max_epochs, max_steps) lasts and nothing asked to stop:
        on_epoch_start
        for each batch of the epoch, from the saved position on:
            step(batch)                       numerics on the device (step.py); no host sync
                                              out of memory (microbatch auto): act(Split), the same batch again
            on_step_end                       EMA; may ask for a checkpoint or, on a signal, a stop
            every log_every steps, and before any save or stop:
                fetch -> on_log               the one host sync: history, console, NaN policy
            act                               roll back / stop / save: here and nowhere else
        end of the epoch: fetch -> on_log; act
        evaluate when due -> on_eval_end      gate, early stopping, best (also every eval_every_steps)
        on_epoch_end -> act                   epoch checkpoint, history, result.json
    a run that ended without passing its gate is gate_failed (status.py)
    final checkpoint (not of a failed run); export weights; test the last and the best weights
    on_fit_end                                result.json, plots

Callbacks hear the events above with the run's read-only view (view.py) and return
decisions (decisions.py); the run itself decides a Split (out of memory) and a
Resume. ``act`` carries out all the decisions of one moment, and nothing else
changes the run's course:

    Split      undo the failed attempt; train in more micro-batches from now on
    Resume     status running again (a preempted run that is resumed)
    RollBack   reload the newest valid checkpoint and supersede the rest; with none to go
               back to, the run fails (a Stop)
    Stop       end training after this step or epoch; the first reason wins
    Save       one checkpoint for the saves of the moment; none once the run has failed
               (its state is not to be trusted: last.pt stays the last good one)
"""

from __future__ import annotations

import time

from epochal.decisions import Decision, Resume, RollBack, Save, Split, Stop
from epochal.state import TrainState
from epochal.status import COMPLETED, GATE_FAILED, PREEMPTED
from epochal.training import Training


def train(run: Training) -> dict:
    """Train from wherever ``run.state`` stands to the end; returns result.json's content."""
    state = run.state
    act(run, resumption(state))
    act(run, run.emit("on_fit_start"))
    while not state.stopped and not run.out_of_budget():
        act(run, run.emit("on_epoch_start"))
        if not train_epoch(run):
            continue  # stopped, rolled back to an earlier position, or out of steps
        decisions: list[Decision] = []
        if run.eval_due_at_epoch_end():
            decisions += run.emit("on_eval_end", run.evaluate())
        act(run, decisions + run.emit("on_epoch_end"))
    return finish(run)


def resumption(state: TrainState) -> list[Decision]:
    """A run loaded from the checkpoint its preemption wrote trains on."""
    return [Resume(state.stop_reason)] if state.status == PREEMPTED else []


def train_epoch(run: Training) -> bool:
    """Train from the saved position to the end of the epoch; False if a decision left it early."""
    state, log_every = run.state, run.config.train.log_every
    started = time.perf_counter()
    try:
        for batch in run.batches.epoch(state.epoch, state.batch_in_epoch):
            if run.out_of_steps():
                return False  # the step budget ends training inside this epoch
            split = run.train_step(batch)
            while split is not None:  # out of memory: the same batch again, in more micro-batches
                act(run, [split])
                split = run.train_step(batch)
            decisions = run.emit("on_step_end")
            evaluate = run.eval_due_at_step()
            if state.step % log_every == 0 or evaluate or any(isinstance(d, (Save, Stop)) for d in decisions):
                decisions = run.fetch() + decisions  # fetch first: a rollback or failure it decides beats a save or stop
            if evaluate:
                decisions += run.emit("on_eval_end", run.evaluate())
            if not act(run, decisions):
                return False
        if not act(run, run.fetch()):
            return False
    finally:
        state.train_seconds += time.perf_counter() - started
    state.epoch, state.epoch_steps, state.batch_in_epoch = state.epoch + 1, state.batch_in_epoch, 0
    return True


def act(run: Training, decisions: list[Decision]) -> bool:
    """Carry out the decisions of one moment; False when training must leave the current epoch."""
    if not decisions:  # most steps
        return not run.state.stopped
    for split in (d for d in decisions if isinstance(d, Split)):
        run.split(split)
    if any(isinstance(d, Resume) for d in decisions):
        run.state.resume()
    rollback = next((d for d in decisions if isinstance(d, RollBack)), None)
    if rollback is not None:
        failed = run.roll_back(rollback)
        if failed is not None:
            act(run, [failed])
        return False
    for decision in decisions:
        if isinstance(decision, Stop):
            run.state.stop(decision.reason, decision.status)
    saves = [d for d in decisions if isinstance(d, Save)]
    if saves and run.state.status != "failed":  # a failed run's state is not to be trusted: last.pt stays the last good one
        run.save(saves)
    return not run.state.stopped


def finish(run: Training) -> dict:
    """After the loop: the final checkpoint, exported weights, test metrics, then on_fit_end."""
    state = run.state
    act(run, run.fetch())  # a stop decided without a save may leave steps unfetched
    if not state.stopped:
        if run.out_of_steps() and state.step not in state.eval_steps:
            act(run, run.emit("on_eval_end", run.evaluate()))  # a step budget ends between evaluations
        state.stop("max_steps reached" if run.out_of_steps() else "max_epochs reached", COMPLETED)
    if state.status == COMPLETED and run.gate_failed():
        state.status = GATE_FAILED  # trained to the end without passing its gate: final, not a crash
    if run.last_saved_step != state.step and state.status != PREEMPTED:
        act(run, [Save("final")])  # act saves nothing for a failed run
    run.writer.wait()
    if state.status in (COMPLETED, GATE_FAILED):  # a gate-failed run's weights are kept for inspection
        run.export_weights()
        state.tested = run.test()
    act(run, run.emit("on_fit_end"))
    return run.result()
