"""The README's first steps, as a new user takes them: what it says to run is what works."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.support.fixtures import start_gateway

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def section(title: str) -> str:
    start = README.index(f"## {title}")
    end = README.find("\n## ", start + 3)
    return README[start : end if end > 0 else None]


def test_it_says_where_knowctl_is_after_make_run() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "VENV ?= .venv" in makefile and "$(VENV)/bin/knowctl serve --simulate" in makefile
    first_steps = section("Try it")
    assert "`.venv/bin/knowctl`" in first_steps and "source .venv/bin/activate" in first_steps
    # The command is where it says, next to the Python that runs these tests (the venv's).
    knowctl = Path(sys.executable).parent / "knowctl"
    done = subprocess.run([str(knowctl), "--version"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stdout.startswith("knowctl ")


def test_its_sdk_example_runs_once_google_genai_is_installed(tmp_path: Path) -> None:
    first_steps = section("Try it")
    example = re.search(r"```python\n(.*?)```", first_steps, flags=re.S)
    assert example is not None
    assert "pip install google-genai" in first_steps[: example.start()]  # said before the code
    handle, process = start_gateway(tmp_path, "--simulate")
    with process:
        code = example.group(1).replace("http://127.0.0.1:8080", handle.url)
        assert code != example.group(1)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()


def test_it_leads_with_google_genai_for_vertex_and_marks_the_vertexai_sdk_legacy() -> None:
    sdks = section("Pointing the official SDKs at the gateway")
    rows = [line for line in sdks.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert rows[0].startswith("| google-genai, Vertex AI |") and "vertexai=True" in rows[0]
    legacy = [row for row in rows if row.startswith("| `vertexai` SDK")]
    assert len(legacy) == 1 and "legacy" in legacy[0] and "2026-06-24" in legacy[0]
    assert rows[-1] == legacy[0]  # after every current SDK
    assert "legacy" in README[: README.index("## Try it")]  # and so from the first paragraph
