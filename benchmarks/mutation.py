"""A small mutation pass: do the tests notice when the code is wrong?

Each mutant is one edit to one module (a flipped comparison, ``+`` for ``-``,
0 for 1, ``True`` for ``False``, ``and`` for ``or``, a dropped ``not``, a negated
condition, a statement replaced by ``pass``). The targeted tests run against it
with ``-x``; a mutant is *killed* when they fail (or run past the timeout) and
*survives* when they pass. The score is killed / all.

The sample is stable across edits of other lines: a mutant is kept when a hash of
(file, the line's text, column, edit, occurrence) falls below ``--rate``, so the
same mutants are drawn before and after new tests are written, as long as the
mutated lines themselves did not change.

The source and tests are copied into a temporary folder when the pass starts (the
working tree can change while it runs); ``--rev`` takes both from a git revision
instead, for a score "before" a change.

    python benchmarks/mutation.py --list                 # the sampled mutants
    python benchmarks/mutation.py [--rate 0.1] [--out mutation.jsonl] [--rev REV]
    python benchmarks/mutation.py --out after.jsonl --carry-killed before.jsonl   # rerun only the survivors
"""

from __future__ import annotations

import argparse
import ast
import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "src/epochal"
# Module -> the functions mutated (None: all of it). Training.py: its save/restore/rollback part only.
TARGETS = {
    "checkpoint.py": None,
    "state.py": None,
    "data.py": None,
    "step.py": None,
    "loop.py": None,
    "training.py": {"save", "restore", "roll_back", "log", "train_step"},
}
# The tests of each module, run with -x against its mutants (the slow subprocess tests of test_faults and
# test_reliability are left out, so that a pass of ~80 mutants fits in about half an hour on a busy machine).
TESTS = {
    "checkpoint.py": ["tests/test_checkpoint.py"],
    "state.py": ["tests/test_state.py", "tests/test_resume.py", "tests/test_history_epochs.py"],
    "data.py": ["tests/test_data.py"],
    "step.py": ["tests/test_step.py", "tests/test_microbatch.py", "tests/test_cli.py"],
    "loop.py": ["tests/callbacks/test_nan_policy.py", "tests/test_loop.py", "tests/test_resume.py",
                "tests/test_gate_failed.py"],
    "training.py": ["tests/callbacks/test_nan_policy.py", "tests/test_loop.py", "tests/test_resume.py",
                    "tests/test_microbatch.py"],
}
ALL_TESTS = sorted({f for files in TESTS.values() for f in files})

COMPARE_FLIPS = {ast.Lt: ast.GtE, ast.GtE: ast.Lt, ast.Gt: ast.LtE, ast.LtE: ast.Gt, ast.Eq: ast.NotEq,
                 ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is}
BINOP_SWAPS = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Mult,
               ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult}


@dataclass
class Mutant:
    file: str
    index: int  # position of the node in ast.walk order
    edit: str  # what is done to it
    line: int
    text: str  # the line's source, stripped
    key: str = ""

    def describe(self) -> str:
        return f"{self.file}:{self.line} {self.edit}: {self.text}"


def _skipped_nodes(tree: ast.Module, functions: set[str] | None) -> set[int]:
    """ids of nodes never mutated: docstrings, annotations, f-strings, imports, and code outside ``functions``."""
    skip: set[int] = set()

    def mark(node):
        skip.update(id(n) for n in ast.walk(node))

    skip.update(id(n) for n in tree.body if not isinstance(n, (ast.ClassDef, ast.FunctionDef)))  # constants, aliases
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom, ast.JoinedStr)):
            mark(node)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                mark(body[0])
        if isinstance(node, ast.AnnAssign):
            mark(node.annotation)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if node.returns is not None:
                mark(node.returns)
            for arg in [*node.args.args, *node.args.kwonlyargs, *node.args.posonlyargs]:
                if arg.annotation is not None:
                    mark(arg.annotation)
    if functions is not None:
        inside: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in functions:
                inside.update(id(n) for n in ast.walk(node))
        skip.update(id(n) for n in ast.walk(tree) if id(n) not in inside)
    return skip


def _edits(node: ast.AST) -> list[str]:
    """The single edits this node allows."""
    edits = []
    if isinstance(node, ast.Compare):
        edits += [f"flip comparison {i}" for i, op in enumerate(node.ops) if type(op) in COMPARE_FLIPS]
    elif isinstance(node, ast.BinOp) and type(node.op) in BINOP_SWAPS:
        edits.append(f"{type(node.op).__name__} -> {BINOP_SWAPS[type(node.op)].__name__}")
    elif isinstance(node, ast.AugAssign) and type(node.op) in BINOP_SWAPS:
        edits.append(f"{type(node.op).__name__}= -> {BINOP_SWAPS[type(node.op)].__name__}=")
    elif isinstance(node, ast.Constant):
        if node.value is True or node.value is False:
            edits.append(f"{node.value} -> {not node.value}")
        elif isinstance(node.value, int) and not isinstance(node.value, bool):
            edits.append(f"{node.value} -> {1 if node.value == 0 else 0 if node.value == 1 else node.value + 1}")
    elif isinstance(node, ast.BoolOp):
        edits.append("and <-> or")
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        edits.append("drop not")
    if isinstance(node, (ast.If, ast.While, ast.IfExp)):
        edits.append("negate condition")
    if isinstance(node, (ast.Expr, ast.Assign, ast.AugAssign, ast.Return, ast.Raise, ast.If, ast.For, ast.With,
                         ast.Try, ast.Delete)):
        edits.append("drop statement")
    return edits


def _apply(tree: ast.Module, index: int, edit: str) -> ast.Module:
    tree = copy.deepcopy(tree)
    nodes = list(ast.walk(tree))
    node = nodes[index]
    if edit.startswith("flip comparison"):
        i = int(edit.rsplit(" ", 1)[1])
        node.ops[i] = COMPARE_FLIPS[type(node.ops[i])]()
    elif isinstance(node, ast.BinOp) and "->" in edit:
        node.op = BINOP_SWAPS[type(node.op)]()
    elif isinstance(node, ast.AugAssign) and "= ->" in edit:
        node.op = BINOP_SWAPS[type(node.op)]()
    elif isinstance(node, ast.Constant):
        node.value = eval(edit.split("-> ")[1])  # a literal True/False/int we wrote ourselves
    elif edit == "and <-> or":
        node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
    elif edit == "drop not":
        parent, field, position = _parent_slot(tree, node)
        _put(parent, field, position, node.operand)
    elif edit == "negate condition":
        node.test = ast.UnaryOp(op=ast.Not(), operand=node.test)
    elif edit == "drop statement":
        parent, field, position = _parent_slot(tree, node)
        _put(parent, field, position, ast.Pass())
    else:
        raise ValueError(edit)
    return ast.fix_missing_locations(tree)


def _parent_slot(tree, target):
    for parent in ast.walk(tree):
        for field, value in ast.iter_fields(parent):
            if value is target:
                return parent, field, None
            if isinstance(value, list):
                for position, item in enumerate(value):
                    if item is target:
                        return parent, field, position
    raise LookupError("node without a parent")


def _put(parent, field, position, new):
    if position is None:
        setattr(parent, field, new)
    else:
        getattr(parent, field)[position] = new


def mutants_of(file: str, source: str) -> list[Mutant]:
    tree = ast.parse(source)
    lines = source.splitlines()
    skip = _skipped_nodes(tree, TARGETS[file])
    found, seen = [], {}
    for index, node in enumerate(ast.walk(tree)):
        if id(node) in skip or not hasattr(node, "lineno"):
            continue
        for edit in _edits(node):
            text = lines[node.lineno - 1].strip()
            base = f"{file}|{text}|{node.col_offset}|{type(node).__name__}|{edit}"
            seen[base] = seen.get(base, 0) + 1
            found.append(Mutant(file, index, edit, node.lineno, text, f"{base}|{seen[base]}"))
    return found


def sampled(mutants: list[Mutant], rate: float) -> list[Mutant]:
    def fraction(m: Mutant) -> float:
        return int(hashlib.sha256(m.key.encode()).hexdigest()[:8], 16) / 2**32

    return [m for m in mutants if fraction(m) < rate]


def snapshot(into: Path, rev: str | None) -> None:
    """src/, tests/ and pyproject.toml, from the working tree or from git revision ``rev``."""
    if rev is None:
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        for name in ("src", "tests"):
            shutil.copytree(ROOT / name, into / name, ignore=ignore)
        shutil.copy(ROOT / "pyproject.toml", into / "pyproject.toml")
    else:
        archive = subprocess.run(["git", "archive", rev, "src", "tests", "pyproject.toml"], cwd=ROOT, check=True,
                                 capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)


def run_tests(work: Path, files: list[str], timeout: float) -> tuple[str, float, str]:
    env = {**os.environ, "PYTHONPATH": str(work / "src"), "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
    started = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                               f"--timeout={int(timeout)}", *files], cwd=work, env=env, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "killed (timeout)", time.monotonic() - started, ""
    tail = (done.stdout + done.stderr).strip().splitlines()
    last = tail[-1] if tail else ""
    return ("survived" if done.returncode == 0 else "killed"), time.monotonic() - started, last


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=0.1, help="fraction of all mutants sampled (stable hash)")
    parser.add_argument("--timeout", type=float, default=240, help="seconds per mutant before it counts as killed")
    parser.add_argument("--out", type=Path, default=None, help="one JSON line per mutant")
    parser.add_argument("--rev", default=None, help="take src/ and tests/ from this git revision (a 'before' score)")
    parser.add_argument("--list", action="store_true", help="list the sampled mutants and stop")
    parser.add_argument("--carry-killed", type=Path, default=None,
                        help="a previous --out file: mutants it killed count as killed without a rerun (tests were "
                             "only added since, so they still fail); only its survivors and new mutants are run")
    parser.add_argument("--range", default=None, metavar="START:END",
                        help="only the sampled mutants START..END-1 (1-based, as printed): split a pass over workers")
    parser.add_argument("--score", type=Path, nargs="+", default=None,
                        help="print the score of --out files (the parts of a split pass) and their survivors")
    parser.add_argument("--no-check", action="store_true", help="skip the run of the unmutated code (a second worker)")
    args = parser.parse_args()
    if args.score:
        return score(args.score)

    with tempfile.TemporaryDirectory(prefix="epochal-mutation-") as tmp:
        work = Path(tmp)
        snapshot(work, args.rev)
        return mutate(work, args)


def mutate(work: Path, args: argparse.Namespace) -> int:
    sources = {file: (work / PACKAGE / file).read_text() for file in TARGETS}
    every = [m for file, source in sources.items() for m in mutants_of(file, source)]
    chosen = sampled(every, args.rate)
    print(f"{len(chosen)} of {len(every)} mutants sampled (rate {args.rate})", flush=True)
    if args.list:
        for m in chosen:
            print(m.describe())
        return 0
    present = [f for f in ALL_TESTS if (work / f).exists()]
    target_files = {file: work / PACKAGE / file for file in TARGETS}
    trees = {file: ast.parse(source) for file, source in sources.items()}
    for file, path in target_files.items():  # the pass runs on unparsed code: check that is still green
        path.write_text(ast.unparse(trees[file]))
    verdict, seconds, last = ("survived", 0.0, "") if args.no_check else run_tests(work, present, args.timeout * 3)
    if verdict != "survived":
        print(f"the tests fail without any mutation ({last}); fix that first", file=sys.stderr)
        return 1
    checked = "not run (--no-check)" if args.no_check else f"green in {seconds:.0f}s"
    print(f"unmutated: {checked} ({', '.join(present)})", flush=True)
    out = open(args.out, "w") if args.out else None
    killed = tried = 0
    carried = set()
    if args.carry_killed:
        for line in args.carry_killed.read_text().splitlines():
            record = json.loads(line)
            if record["verdict"] != "survived":
                carried.add(record["key"])
    start, stop = (int(x) for x in args.range.split(":")) if args.range else (1, len(chosen) + 1)
    for n, m in enumerate(chosen, 1):
        if not start <= n < stop:
            continue
        if m.key in carried:
            killed, tried = killed + 1, tried + 1
            print(f"[{n}/{len(chosen)}] {'killed (carried)':16} {0:5.1f}s  {m.describe()}", flush=True)
            if out:
                out.write(json.dumps({"mutant": m.describe(), "key": m.key, "verdict": "killed (carried)",
                                      "seconds": 0, "last_line": ""}) + "\n")
            continue
        original = ast.unparse(trees[m.file])
        mutated = ast.unparse(_apply(trees[m.file], m.index, m.edit))
        if mutated == original:
            continue
        target_files[m.file].write_text(mutated)
        order = [f for f in TESTS[m.file] if f in present]
        try:
            verdict, seconds, last = run_tests(work, order, args.timeout)
        finally:
            target_files[m.file].write_text(original)
        killed, tried = killed + (verdict != "survived"), tried + 1
        print(f"[{n}/{len(chosen)}] {verdict:16} {seconds:5.1f}s  {m.describe()}", flush=True)
        if out:
            out.write(json.dumps({"mutant": m.describe(), "key": m.key, "verdict": verdict,
                                  "seconds": round(seconds, 1), "last_line": last}) + "\n")
            out.flush()
    print(f"score: {killed}/{tried} killed = {killed / max(1, tried):.0%}", flush=True)
    if out:
        out.close()
    return 0


def score(files: list[Path]) -> int:
    records = {}
    for file in files:
        for line in file.read_text().splitlines():
            record = json.loads(line)
            records[record["key"]] = record
    survivors = [r for r in records.values() if r["verdict"] == "survived"]
    killed = len(records) - len(survivors)
    print(f"score: {killed}/{len(records)} killed = {killed / max(1, len(records)):.0%}")
    for record in survivors:
        print(f"  survived: {record['mutant']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
