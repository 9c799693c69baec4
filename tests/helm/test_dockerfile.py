"""The Dockerfile, parsed (dockerfile-parse) and checked against the image rules, and its install
steps replayed into a fresh virtual environment to prove the entrypoints start (no Docker here)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def stages() -> list[list[dict]]:
    """Instructions grouped by stage (each starts with FROM)."""
    parser = DockerfileParser(path=str(ROOT / "Dockerfile"))
    out: list[list[dict]] = []
    for ins in parser.structure:
        if ins["instruction"] == "FROM":
            out.append([])
        if out:
            out[-1].append(ins)
    return out


def _all(stage: list[dict], name: str) -> list[str]:
    return [i["value"] for i in stage if i["instruction"] == name]


def _commands(stage: list[dict]) -> list[str]:
    """Shell commands of the stage's RUN instructions (split at &&, BuildKit --mount flags dropped)."""
    cmds = []
    for run in _all(stage, "RUN"):
        run = re.sub(r"^(--mount=\S+\s+)+", "", run.strip())
        cmds += [c.strip() for c in run.split("&&")]
    return cmds


def test_multi_stage_slim_base(stages: list[list[dict]]) -> None:
    assert len(stages) == 3, "the UI's build stage, the wheels' build stage and a runtime stage"
    ui_from, build_from, final_from = (_all(s, "FROM")[0] for s in stages)
    assert ui_from == "${NODE_IMAGE} AS ui" and "npm ci --no-audit --no-fund" in _commands(stages[0])
    assert build_from.endswith(" AS build")
    assert final_from == "${PYTHON_IMAGE}"
    default_base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert default_base and re.fullmatch(r"python:3\.\d+-slim(-\w+)?", default_base.group(1))


def test_wheel_built_in_the_build_stage_installed_in_the_runtime_stage(stages: list[list[dict]]) -> None:
    build, final = stages[1:]
    assert any(c.startswith("python -m pip wheel") for c in _commands(build))
    install = [c for c in _commands(final) if c.startswith("python -m pip install")]
    assert len(install) == 1 and "--no-index --find-links /wheels" in install[0]
    assert "--mount=type=bind,from=build,source=/wheels" in _all(final, "RUN")[0], "wheels never become a layer"
    assert not _all(final, "COPY") and not _all(final, "ADD")


def test_no_caches_and_no_build_tools(stages: list[list[dict]]) -> None:
    for stage in stages:
        for cmd in _commands(stage):
            if cmd.startswith("python -m pip"):
                assert "--no-cache-dir" in cmd, cmd
    final = " ".join(_commands(stages[-1]))
    for tool in ("apt-get", "apk", "gcc", "build-essential", "make", "git"):
        assert not re.search(rf"\b{tool}\b", final), f"{tool} in the runtime stage"
    assert "PIP_NO_CACHE_DIR=1" in _all(stages[-1], "ENV")[0]


def test_runs_as_a_numeric_non_root_user(stages: list[list[dict]]) -> None:
    users = _all(stages[-1], "USER")
    assert users and re.fullmatch(r"[1-9]\d*:[1-9]\d*", users[-1]), users
    assert users[-1].split(":")[0] == "65532", "the chart's runAsUser and the task pods' RUNNER_UID"


def test_oci_labels_and_entrypoints(stages: list[list[dict]]) -> None:
    labels = " ".join(_all(stages[-1], "LABEL"))
    for key in ("title", "description", "source", "licenses", "version", "revision"):
        assert f"org.opencontainers.image.{key}=" in labels, key
    assert _all(stages[-1], "ENTRYPOINT") == ['["compozy"]'] and _all(stages[-1], "CMD") == ['["operator"]']


def test_install_steps_replayed_into_a_fresh_venv(stages: list[list[dict]], tmp_path: Path) -> None:
    """COPY and RUN of the build stage, then the runtime stage's pip install, with /src, /wheels and
    ``python`` mapped to temporary directories and a fresh venv (the pip cache is reused for speed).
    The UI stage's output is the checkout's own build of it (make ui; `make test` builds it first)."""
    build, final = stages[1:]
    src, wheels = tmp_path / "src", tmp_path / "wheels"
    src.mkdir()
    for copy in _all(build, "COPY"):
        *sources, dest = shlex.split(copy)
        if sources[0] == "--from=ui":  # /src/<path> of the ui stage: the same path of the checkout
            built = ROOT / Path(sources[1]).relative_to("/src")
            shutil.copytree(built, src / dest, dirs_exist_ok=True)
            continue
        for s in sources:
            target = src / dest / Path(s).name if dest.endswith("/") else src / dest
            (shutil.copytree if (ROOT / s).is_dir() else shutil.copy)(ROOT / s, target)
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True)
    venv_python = str(tmp_path / "venv" / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "VIRTUAL_ENV"))}

    def replay(cmd: str, python: str) -> None:
        argv = [python if a == "python" else str(wheels) if a == "/wheels" else a
                for a in shlex.split(cmd) if a != "--no-cache-dir"]
        out = subprocess.run(argv, cwd=src, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, f"{cmd}:\n{out.stdout[-2000:]}{out.stderr[-4000:]}"

    for cmd in _commands(build):
        replay(cmd, sys.executable)
    assert list(wheels.glob("compozy_operator-*.whl")), "the project's wheel"
    for cmd in _commands(final):
        if cmd.startswith("python -m pip"):
            replay(cmd, venv_python)
    compozy = str(tmp_path / "venv" / "bin" / "compozy")
    for args in ([], ["operator"], ["task", "run"]):
        out = subprocess.run([compozy, *args, "--help"], capture_output=True, text=True, env=env, cwd=tmp_path)
        assert out.returncode == 0 and "usage: compozy" in out.stdout, out.stderr
    # the installed package, not the checkout, answers (the venv has no editable link to the source)
    where = subprocess.run([venv_python, "-c", "import compozy_operator, kopf; print(compozy_operator.__file__)"],
                           capture_output=True, text=True, env=env, cwd=tmp_path)
    assert where.returncode == 0 and str(tmp_path / "venv") in where.stdout, where.stdout + where.stderr
    # the UI's static files are in the wheel, where api.Service serves them from
    ui = subprocess.run([venv_python, "-c", "from compozy_operator.api_service.ui import UI_DIR; "
                         "print((UI_DIR / 'index.html').is_file(), len(list((UI_DIR / 'assets').iterdir())))"],
                        capture_output=True, text=True, env=env, cwd=tmp_path)
    assert ui.returncode == 0 and ui.stdout.split()[0] == "True" and int(ui.stdout.split()[1]) >= 2, ui.stdout + ui.stderr
