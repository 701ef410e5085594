"""The fitter as it was before the batched core (main d72b0a6), loaded from git for side-by-side timing.

`benchmarks/fitter.py --legacy` times it in the same run as the current fitter, until the batched
core is proven on every machine we use. The four modules it needs (fitter, camera_terms,
regularizers, geometry) are written by `git show` into `out/legacy_fit_<rev>/legacy_fit/` with their imports
pointed at each other; the rest (face models, types) comes from the current tree, whose
APIs it uses are unchanged. On a machine without the repository's history (the lent GPU machine),
prepare the folder here (`python benchmarks/legacy_fitter.py`) and carry `out/legacy_fit_<rev>`.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LEGACY_REV = "d72b0a6"
_MODULES = ("fitter", "camera_terms", "regularizers", "geometry")
# Imports of the current tree whose names moved since `rev` (applied to folders written earlier
# too). The old module name is split so that search-and-replace renames leave it.
_MOVED_IMPORTS = (
    ("from mmface4d_stream.face.models import R_CAMERA_FROM_MODEL_FRONTAL, FaceModel, TemplateModel\n",
     "from mmface4d_stream.face.models import R_CAMERA_FROM_MODEL_FRONTAL, FaceModel\n"
     "from mmface4d_stream.face.template_model import TemplateModel\n"),
    ("mmface4d_stream.fit." + "types", "mmface4d_stream.fit.fit_io"),
)


def _current_imports(text: str) -> str:
    for old, new in _MOVED_IMPORTS:
        text = text.replace(old, new)
    return text


def legacy_folder(rev: str = LEGACY_REV) -> Path:
    """The folder holding the `legacy_fit` package of `rev` (written from git when missing)."""
    folder = ROOT / "out" / f"legacy_fit_{rev}"
    package = folder / "legacy_fit"
    if all((package / f"{m}.py").is_file() for m in _MODULES):
        for name in _MODULES:
            path = package / f"{name}.py"
            text = path.read_text()
            if _current_imports(text) != text:
                path.write_text(_current_imports(text))
        return folder
    package.mkdir(parents=True, exist_ok=True)
    for name in _MODULES:
        try:
            text = subprocess.run(["git", "show", f"{rev}:mmface4d_stream/fit/{name}.py"], cwd=ROOT, check=True,
                                  capture_output=True, text=True).stdout
        except (OSError, subprocess.CalledProcessError) as exc:
            raise SystemExit(f"cannot read the legacy fitter ({rev}) from git: {exc}; "
                             f"prepare {folder} on a machine with the repository's history") from None
        for other in _MODULES:
            text = text.replace(f"mmface4d_stream.fit.{other}", f"legacy_fit.{other}")
        (package / f"{name}.py").write_text(_current_imports(text))
    (package / "__init__.py").write_text("")
    return folder


def legacy_fitter_class(rev: str = LEGACY_REV):
    """`FaceFitter` of `rev` (same constructor and `process` as today's)."""
    folder = str(legacy_folder(rev))
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module("legacy_fit.fitter").FaceFitter


if __name__ == "__main__":
    print(legacy_folder())
