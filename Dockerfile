# The training image: the pinned requirements in /opt/venv plus the segmentation extra, whose onedl-mmcv is
# compiled here with CUDA ops. Never built in CI (no registry to pull the base images from there);
# tests/test_dockerfile.py checks this file statically and lints it with hadolint.
#
# Why CUDA 13.0: torch 2.14.1's PyPI wheel is the cu130 build (torch.version.cuda == "13.0", it pulls
# nvidia-cuda-runtime 13.0.96), and mmcv's CUDA ops have to be compiled by an nvcc of the same CUDA
# major.minor as torch. Hosts need an NVIDIA driver >= 580, the minimum for CUDA 13.0.

FROM nvidia/cuda:13.0.2-cudnn-devel-ubuntu24.04 AS build
# Ubuntu 24.04 ships Python 3.12; the project pins and tests 3.11, which deadsnakes packages for 24.04.
# python3.11-dev: mmcv's extension includes Python.h; g++: the host half of the nvcc build.
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get install -y --no-install-recommends python3.11 python3.11-dev python3.11-venv g++ \
 && rm -rf /var/lib/apt/lists/*
# tools/install.sh is the install that make and CI run too: here with /opt/venv and no pip cache in the image.
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHON=python3.11 \
    VENV=/opt/venv
WORKDIR /src
COPY requirements.txt requirements-seg.txt requirements-seg-nodeps.txt ./
COPY tools/install.sh tools/
RUN tools/install.sh runtime
# CUDA 13 dropped Volta: nvcc 13 cannot target sm_70 and the cu130 torch wheel has no sm_70 kernels, so V100
# needs another image (a CUDA 12.x torch build and an mmcv compiled by nvcc 12.x). 8.0 is A100 and, since a
# cubin runs on later minors of its major, also A10/A40/L40 (8.6/8.9); 9.0 is H100/H200. Blackwell would need
# "10.0;12.0" added. Each architecture costs roughly 70 CPU-minutes of compiling (an estimate, not measured).
ARG TORCH_CUDA_ARCH_LIST="8.0;9.0"
ARG MAX_JOBS=8
# the segmentation extra as `make seg` installs it, but with mmcv's CUDA ops compiled (FORCE_CUDA=1)
RUN WHEEL_CACHE=/wheels FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$TORCH_CUDA_ARCH_LIST" MAX_JOBS="$MAX_JOBS" \
      tools/install.sh seg

# No compiler toolchain here, and no cuDNN from the image either: torch's wheel brings its own (nvidia-cudnn-cu13).
# Without a C compiler, --compile (torch.compile) fails on the GPU: Triton builds its launcher with gcc and
# Python.h at first use; add gcc and python3.11-dev to this stage to use it.
FROM nvidia/cuda:13.0.2-runtime-ubuntu24.04 AS runtime
# The same deadsnakes Python 3.11 as the build stage, at /usr/bin/python3.11 where /opt/venv points;
# software-properties-common only adds the PPA, so it goes again in the same layer.
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get install -y --no-install-recommends python3.11 \
 && apt-get purge -y --auto-remove software-properties-common \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 1001 mim \
 && useradd --create-home --shell /bin/bash --uid 1001 --gid mim mim
COPY --from=build /opt/venv /opt/venv
WORKDIR /opt/mim
COPY . .
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1
# Root owns the code, so runs write only where --output_dir points (a mounted folder). Numeric, so that
# runAsNonRoot-style checks can verify it; 1000 is taken by the base image's "ubuntu" user.
USER 1001:1001
CMD ["python", "main_pretrain.py", "--help"]
