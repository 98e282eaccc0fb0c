#!/usr/bin/env bash
# Builds the neurosam container images with buildah (no Docker daemon, no container registry) and
# checks the CPU image from inside: the demo and a fast subset of the tests.
#
#   scripts/build_images.sh              # base + CPU image + checks, then the GPU image
#   scripts/build_images.sh --cpu-only   # base + CPU image + checks
#   scripts/build_images.sh --no-check   # build only
#
# Run as root from anywhere (it works in the repository root). Idempotent: the debootstrapped base
# is cached under $NEUROSAM_IMAGES_CACHE (default /var/tmp/neurosam-images) and buildah's --layers
# cache makes a rebuild of an unchanged tree take seconds (the checks, about 2 minutes). Images land in buildah's local storage
# (/var/lib/containers/storage):
#   localhost/neurosam-base:bookworm   Debian bookworm minbase + python3 (venv, pip, headers), g++, Boost
#   localhost/neurosam-cpu:latest      docker/Dockerfile.cpu on that base
#   localhost/neurosam-gpu:latest      docker/Dockerfile.gpu on that base (torch's CUDA build)
# Environment: NEUROSAM_IMAGES_CACHE, NEUROSAM_TORCH_WHEEL (a local torch CPU wheel to install in the
# CPU image instead of the one found through pip's find-links), NEUROSAM_DEBIAN_MIRROR,
# NEUROSAM_IMAGE_TESTS (the test files run inside the CPU image).
set -euo pipefail
cd "$(dirname "$0")/.."

CPU_ONLY=0
CHECK=1
for arg in "$@"; do
    case "$arg" in
        --cpu-only) CPU_ONLY=1 ;;
        --no-check) CHECK=0 ;;
        -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "unknown argument: $arg" >&2; exit 2 ;;
    esac
done

CACHE=${NEUROSAM_IMAGES_CACHE:-/var/tmp/neurosam-images}
SUITE=bookworm
BASE_IMAGE=localhost/neurosam-base:$SUITE
CPU_IMAGE=localhost/neurosam-cpu:latest
GPU_IMAGE=localhost/neurosam-gpu:latest
TORCH_VERSION=2.13.0
# The fast test subset run inside the CPU image (tests/test_volumes.py is left out: it imports
# pipeline_support.SHARED_DATA, which no longer exists).
IMAGE_TESTS=${NEUROSAM_IMAGE_TESTS:-tests/test_workers.py tests/test_evaluate.py tests/test_progress.py tests/test_convert.py}
# g++ and Python's headers: for the packages built from source at install (sam2).
BASE_PACKAGES=python3,python3-venv,python3-pip,python3-dev,g++,make,ca-certificates
export BUILDAH_ISOLATION=chroot
START=$(date +%s)
STEP_START=$START
STEP_NAME=

step() {
    local now
    now=$(date +%s)
    [ -z "${STEP_NAME:-}" ] || echo "--- $STEP_NAME: $((now - STEP_START)) s"
    STEP_START=$now
    STEP_NAME="step ${1%% *}"
    echo
    echo "=== [$(date +%H:%M:%S)] $*"
}

free_gb() { df -P -B1G "$1" | awk 'NR == 2 {print $4}'; }

# The host's Debian mirror for $SUITE, from sources.list(.d) (one-line and deb822 formats).
debian_mirror() {
    if [ -n "${NEUROSAM_DEBIAN_MIRROR:-}" ]; then echo "$NEUROSAM_DEBIAN_MIRROR"; return; fi
    local files=() mirror=""
    [ -f /etc/apt/sources.list ] && files+=(/etc/apt/sources.list)
    for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] && files+=("$f")
    done
    for f in "${files[@]}"; do
        mirror=$(awk -v suite="$SUITE" '
            /^[[:space:]]*deb[[:space:]]/ {
                sub(/\[[^]]*\]/, "")
                if ($3 == suite) { print $2; exit }
            }
            /^[[:space:]]*$/ { if (uris != "" && hit) { print uris; exit } uris = ""; hit = 0 }
            /^URIs:/ { uris = $2 }
            /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite) hit = 1 }
            END { if (uris != "" && hit) print uris }
        ' "$f" | head -n 1)
        if [ -n "$mirror" ] && [[ "$mirror" != *security* ]]; then echo "$mirror"; return; fi
    done
    echo "http://deb.debian.org/debian"
}

# A torch $TORCH_VERSION CPU wheel for cp311 on this machine: where the host's pip finds it
# (find-links from pip's configuration or PIP_FIND_LINKS), or NEUROSAM_TORCH_WHEEL.
local_torch_wheel() {
    if [ -n "${NEUROSAM_TORCH_WHEEL:-}" ]; then echo "$NEUROSAM_TORCH_WHEEL"; return; fi
    local dirs=() d
    for d in ${PIP_FIND_LINKS:-}; do dirs+=("$d"); done
    if command -v python3 >/dev/null; then
        while read -r d; do dirs+=("$d"); done < <(
            python3 -m pip config list 2>/dev/null | sed -n "s/^[^=]*find-links='\(.*\)'$/\1/p" | tr ' ' '\n')
    fi
    for d in "${dirs[@]}"; do
        d=${d#file://}
        [ -d "$d" ] || continue
        ls "$d"/torch-"$TORCH_VERSION"+cpu-cp311-cp311-*manylinux*x86_64.whl 2>/dev/null | head -n 1
    done | head -n 1
}

# --- 0. Disk ---------------------------------------------------------------------------------
step "0. free disk"
mkdir -p "$CACHE" /var/lib/containers
{ df -h /var/tmp /work /var/lib/containers 2>/dev/null || true; } | awk '!seen[$0]++'
need=8
[ "$CPU_ONLY" = 1 ] || need=25
if [ "$(free_gb /var/lib/containers)" -lt "$need" ] || [ "$(free_gb "$CACHE")" -lt 2 ]; then
    echo "need about $need GB free under /var/lib/containers (and 2 GB under $CACHE)" >&2
    exit 1
fi

# --- 1. Tools ----------------------------------------------------------------------------------
step "1. buildah and debootstrap"
missing=()
command -v buildah >/dev/null || missing+=(buildah)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}"
fi
buildah --version
debootstrap --version

# --- 2. Debian base ----------------------------------------------------------------------------
step "2. Debian $SUITE base image ($BASE_IMAGE)"
ROOTFS=$CACHE/rootfs-$SUITE
STAMP=$ROOTFS/.neurosam-complete
MIRROR=$(debian_mirror)
WANTED="$MIRROR $BASE_PACKAGES"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANTED" ]; then
    echo "debootstrap --variant=minbase --include=$BASE_PACKAGES $SUITE $ROOTFS $MIRROR"
    rm -rf "$ROOTFS"
    debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$ROOTFS" "$MIRROR"
    chroot "$ROOTFS" apt-get clean
    rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin
    echo "$WANTED" > "$STAMP"
else
    echo "reusing $ROOTFS (delete it to debootstrap again)"
fi
chroot "$ROOTFS" sh -c 'python3 --version; g++ --version | head -n 1'
# The image records which rootfs it was made from; a new rootfs makes a new image.
ROOTFS_ID=$(stat -c %Y "$STAMP")
if [ "$(buildah inspect --type image --format '{{index .OCIv1.Config.Labels "neurosam.rootfs"}}' "$BASE_IMAGE" 2>/dev/null)" != "$ROOTFS_ID" ]; then
    container=$(buildah from scratch)
    mnt=$(buildah mount "$container")
    tar -C "$ROOTFS" --exclude=./.neurosam-complete --exclude='./dev/*' --exclude='./proc/*' \
        --exclude='./sys/*' --exclude='./run/*' -cf - . | tar -C "$mnt" -xpf -
    buildah umount "$container" >/dev/null
    buildah config --env LANG=C.UTF-8 --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --cmd /bin/bash --label neurosam.rootfs="$ROOTFS_ID" \
        --label org.opencontainers.image.description="Debian $SUITE minbase: $BASE_PACKAGES" "$container"
    buildah commit --quiet --rm "$container" "$BASE_IMAGE"
else
    echo "$BASE_IMAGE is already in buildah's storage, made from that rootfs"
fi
buildah images "$BASE_IMAGE"

# --- 3. CPU image ------------------------------------------------------------------------------
step "3. CPU image ($CPU_IMAGE)"
# Files the RUN steps see at /neurosam-build (a bind mount, never copied into a layer): the host's
# CA bundle (pip's TLS may go through this machine's proxy) and the local torch CPU wheel.
SUPPORT=$CACHE/build-support
mkdir -p "$SUPPORT"
rm -f "$SUPPORT"/torch-*.whl
support_args=(--volume "$SUPPORT:/neurosam-build:ro")
HOST_CA=${PIP_CERT:-$(python3 -m pip config get global.cert 2>/dev/null || true)}
HOST_CA=${HOST_CA:-/etc/ssl/certs/ca-certificates.crt}
if [ -f "$HOST_CA" ]; then
    cp "$HOST_CA" "$SUPPORT/ca-certificates.crt"
    support_args+=(--build-arg PIP_CERT=/neurosam-build/ca-certificates.crt)
fi
WHEEL=$(local_torch_wheel || true)
torch_args=()
if [ -n "$WHEEL" ]; then
    ln "$WHEEL" "$SUPPORT/" 2>/dev/null || cp "$WHEEL" "$SUPPORT/"
    echo "torch from the local wheel $WHEEL"
    torch_args=(--build-arg TORCH_WHEELS=/neurosam-build)
else
    echo "no local torch $TORCH_VERSION CPU wheel: torch from https://download.pytorch.org/whl/cpu"
fi
buildah bud --isolation chroot --layers --force-rm --build-arg BASE_IMAGE="$BASE_IMAGE" \
    "${support_args[@]}" "${torch_args[@]}" -f docker/Dockerfile.cpu -t "$CPU_IMAGE" .
buildah images "$CPU_IMAGE"

# --- 4. Checks inside the CPU image ---------------------------------------------------------------
if [ "$CHECK" = 1 ]; then
    container=$(buildah from "$CPU_IMAGE")
    trap 'buildah rm "$container" >/dev/null 2>&1 || true' EXIT
    step "4a. demo inside the CPU image: neurosam run configs/demo.yaml"
    buildah run --isolation chroot "$container" -- neurosam run configs/demo.yaml
    step "4b. waterz compiles a scoring function it does not ship prebuilt (g++, Boost, Python headers)"
    buildah run --isolation chroot "$container" -- env WATERZ_NO_PREBUILT=1 python -c '
import numpy as np, waterz
affs = np.random.default_rng(0).random((3, 8, 16, 16), dtype=np.float32)
function = "OneMinus<HistogramQuantileAffinity<RegionGraphType, 33, ScoreValue, 256>>"
segmentation = next(waterz.agglomerate(affs, [0.5], scoring_function=function))
print("compiled and ran", function, "->", len(np.unique(segmentation)), "segments")'
    step "4c. tests inside the CPU image"
    # shellcheck disable=SC2086  # a list of test files
    buildah run --isolation chroot "$container" -- python -m pytest -q -p no:cacheprovider $IMAGE_TESTS
    buildah rm "$container" >/dev/null
    trap - EXIT
fi

# --- 5. GPU image ------------------------------------------------------------------------------
if [ "$CPU_ONLY" = 0 ]; then
    step "5. GPU image ($GPU_IMAGE): torch's CUDA build from PyPI (GBs)"
    buildah bud --isolation chroot --layers --force-rm --build-arg BASE_IMAGE="$BASE_IMAGE" \
        "${support_args[@]}" -f docker/Dockerfile.gpu -t "$GPU_IMAGE" .
    buildah images "$GPU_IMAGE"
    if [ "$CHECK" = 1 ]; then
        step "5b. inside the GPU image (no GPU here: the CUDA build imports, CUDA is unavailable)"
        container=$(buildah from "$GPU_IMAGE")
        trap 'buildah rm "$container" >/dev/null 2>&1 || true' EXIT
        buildah run --isolation chroot "$container" -- neurosam --help
        buildah run --isolation chroot "$container" -- python -c \
            'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, "available:", torch.cuda.is_available())'
        buildah rm "$container" >/dev/null
        trap - EXIT
    fi
fi

step "done in $(( $(date +%s) - START )) s"
buildah images --filter reference='localhost/neurosam-*'
