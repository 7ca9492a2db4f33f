"""Build hook: stamp the commit the package is built from into it (epochal/_build_info.json).

Every run folder records the commit of the code that ran. A checkout answers
through git; an installed wheel has no .git, so the commit is written into the
package here. An sdist carries the stamp of the checkout it was made from, so a
wheel built from it without git keeps that commit. Everything else about the
package is in pyproject.toml.
"""

import hashlib
import json
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

ROOT = Path(__file__).resolve().parent
STAMP = Path("epochal", "_build_info.json")  # inside the package, next to provenance.py


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.decode(errors="replace")


def _from_git() -> dict | None:
    top = _git("rev-parse", "--show-toplevel")
    # Only our own checkout counts, not an sdist unpacked inside another repository.
    if top is None or Path(top.strip()).resolve() != ROOT:
        return None
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return None
    diff = _git("diff", "HEAD") or ""
    return {"commit": commit.strip(), "dirty": bool(diff),
            "diff_sha256": hashlib.sha256(diff.encode()).hexdigest() if diff else None}


def build_info() -> dict:
    carried = ROOT / "src" / STAMP
    if (info := _from_git()) is not None:
        return info
    if carried.is_file():  # building from an sdist: the checkout's stamp came with it
        return json.loads(carried.read_text(encoding="utf-8"))
    return {"commit": None, "reason": "built outside a git checkout from sources without a stamp"}


def _write(path: Path, info: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)  # sdist trees hard-link sources: never write through a link
    path.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


class BuildPyWithStamp(build_py):
    def run(self) -> None:
        super().run()
        if not self.editable_mode:  # an editable install runs from the checkout, where git answers
            _write(Path(self.build_lib) / STAMP, build_info())


class SdistWithStamp(sdist):
    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        _write(Path(base_dir, "src") / STAMP, build_info())


setup(cmdclass={"build_py": BuildPyWithStamp, "sdist": SdistWithStamp})
