"""Where the deployment templates are, whether knowctl runs from a checkout or a wheel.

The templates live once, at ``templates/`` in the repository root (next to the package),
so operators and reviewers read them where the design says they are. Two install shapes:

* source checkout or editable install (``pip install -e .``): ``knowctl/`` is still in the
  repository, so ``templates/`` is its sibling: use it, never a stale copy.
* built wheel: setuptools ``data-files`` (pyproject ``[tool.setuptools.data-files]``) puts
  the same tree under ``<prefix>/share/knowctl/templates``; the wheel's RECORD says
  exactly where it landed, whatever the install scheme (venv, --user, --prefix).
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

import knowctl

TARGETS = ("k8s", "compose")
_DATA_DIR = "share/knowctl/templates"


class TemplatesNotFound(RuntimeError):
    """No template tree could be found: the install is incomplete."""


def _is_root(path: Path) -> bool:
    return all((path / target).is_dir() for target in TARGETS)


def _checkout_root() -> Path | None:
    repo = Path(knowctl.__file__).resolve().parent.parent
    # pyproject.toml proves this is the source tree, not some unrelated site-packages/templates.
    if (repo / "pyproject.toml").is_file() and _is_root(repo / "templates"):
        return repo / "templates"
    return None


def _wheel_root() -> Path | None:
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution("knowctl")
    except PackageNotFoundError:
        return None
    for entry in dist.files or ():
        posix = entry.as_posix()
        marker = posix.find(_DATA_DIR + "/")
        if marker < 0:
            continue
        located = Path(str(dist.locate_file(posix[: marker + len(_DATA_DIR)]))).resolve()
        if _is_root(located):
            return located
    return None


def _prefix_root() -> Path | None:
    # Fallback when RECORD is missing (some system packagers strip it).
    candidate = Path(sysconfig.get_path("data")) / _DATA_DIR
    return candidate if _is_root(candidate) else None


def templates_root(override: Path | None = None) -> Path:
    """The directory that holds ``k8s/`` and ``compose/``."""
    if override is not None:
        if not _is_root(override):
            raise TemplatesNotFound(f"{override} has no k8s/ and compose/ template folders")
        return override
    for finder in (_checkout_root, _wheel_root, _prefix_root):
        found = finder()
        if found is not None:
            return found
    raise TemplatesNotFound(
        "deployment templates not found: expected templates/ beside the knowctl package (checkout) "
        f"or {_DATA_DIR} in the install prefix (wheel); reinstall knowctl"
    )
