#!/usr/bin/env bash
# The OpenXR suites against Monado (simulated headset, null compositor) inside a Debian 13 root.
#
#   .ci/xr.sh test    # make test-xr: tests/xr, where a missing runtime fails instead of skipping
#   .ci/xr.sh bench   # make bench-xr: benchmarks/bench_openxr.py
#   .ci/xr.sh run CMD # any command in /src inside the root, with the same environment (for debugging)
#
# Monado is packaged for Debian 13 only and needs its glibc, so the runtime and the application under
# test both run in a trixie root made with debootstrap. The root lives at a fixed path outside the clone
# (PANOSTUDY_XR_ROOT) and is reused by later runs; from nothing it takes 1-10 minutes, as fast as the
# mirror. The clone is
# bind-mounted at /src inside it; the venv lives in the root. Python wheels are downloaded on this side
# (pip inside the root may refuse the package proxy's certificate) and installed from a folder there.
# Everything started here is stopped by pid and every mount undone, also when a step fails.
set -euo pipefail

ROOT=${PANOSTUDY_XR_ROOT:-/var/cache/panostudy/xr-trixie}
MIRROR=${PANOSTUDY_XR_MIRROR:-http://deb.debian.org/debian}
SRC=$(cd "$(dirname "$0")/.." && pwd)
HOST_PY=${HOST_PY:-$SRC/.venv/bin/python}
WHEELS=/var/cache/panostudy-wheels      # inside the root
VENV=/opt/panostudy-venv                # inside the root
DISPLAY_NUMBER=97
PACKAGES=(
    monado-service libopenxr1-monado libopenxr-loader1 libopenxr-utils
    mesa-vulkan-drivers libvulkan1 libgl1 libgl1-mesa-dri libglx-mesa0 libegl1 libegl-mesa0
    libx11-6 libxrandr2 libxinerama1 libxcursor1 libxi6 libxxf86vm1 xvfb xauth
    python3 python3-venv python3-tk fonts-dejavu-core
)

say() { printf 'test-xr: %s\n' "$*" >&2; }
die() { say "$*"; exit 2; }

case "${1:-}" in
    test|bench|run) MODE=$1; shift ;;
    *) die "usage: .ci/xr.sh test|bench [pytest or benchmark arguments] | run COMMAND" ;;
esac
[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, chroot and mount); run it as root or with sudo"
[ -x "$HOST_PY" ] || die "$HOST_PY is missing: run 'make install' (or set HOST_PY to a Python with pip)"

# one run at a time per root: runs share its mount points, display number and processes
mkdir -p "$(dirname "$ROOT")"
exec 9>"$ROOT.lock"
flock -n 9 || { say "another run holds $ROOT.lock; waiting for it"; flock 9; }

MOUNTS=()
PIDS=()

cleanup() {
    local rc=$?
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    # whatever a test left running inside the root (a runtime it restarted, ...): only processes whose
    # root is this root, each by its pid
    local left=() proc
    for proc in /proc/[0-9]*; do
        if [ "$(readlink "$proc/root" 2>/dev/null)" = "$ROOT" ]; then
            left+=("${proc#/proc/}")
            kill "${proc#/proc/}" 2>/dev/null || true
        fi
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    for _ in $(seq 50); do
        local alive=0
        for pid in "${left[@]}"; do
            kill -0 "$pid" 2>/dev/null && alive=1
        done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    local i
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        umount -R "${MOUNTS[i]}" 2>/dev/null || umount -R -l "${MOUNTS[i]}" || say "could not unmount ${MOUNTS[i]}"
    done
    MOUNTS=()
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mount_into() {   # mount_into ROOT: /proc, /sys, /dev (recursive, changes kept from the host) and /src
    local root=$1
    mount -t proc proc "$root/proc" && MOUNTS+=("$root/proc")
    mount --rbind /sys "$root/sys" && MOUNTS+=("$root/sys") && mount --make-rslave "$root/sys"
    mount --rbind /dev "$root/dev" && MOUNTS+=("$root/dev") && mount --make-rslave "$root/dev"
    mkdir -p "$root/src"
    mount --bind "$SRC" "$root/src" && MOUNTS+=("$root/src")
}

unmount_all() {
    local i
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        umount -R "${MOUNTS[i]}"
    done
    MOUNTS=()
}

in_root() { chroot "$ROOT" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 "$@"; }

build_root() {
    local started=$SECONDS new="$ROOT.new"
    if [ ! -e "$ROOT/.debootstrap-done" ]; then
        command -v debootstrap >/dev/null || {
            say "installing debootstrap"
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
        }
        # a half-built root from an interrupted run is rebuilt; never delete while anything is mounted in it
        if [ -e "$new" ]; then
            findmnt -R -n "$new" >/dev/null 2>&1 && die "$new has mounts; unmount them (umount -R) and retry"
            for sub in proc sys dev src; do
                mountpoint -q "$new/$sub" 2>/dev/null && die "$new/$sub is mounted; unmount it and retry"
            done
            rm -rf --one-file-system "$new"
        fi
        mkdir -p "$(dirname "$ROOT")"
        say "debootstrap trixie into $new (a few minutes)"
        debootstrap --variant=minbase trixie "$new" "$MIRROR" >"$(dirname "$ROOT")/debootstrap.log" 2>&1 \
            || { tail -20 "$(dirname "$ROOT")/debootstrap.log" >&2; die "debootstrap failed (log: $(dirname "$ROOT")/debootstrap.log)"; }
        touch "$new/.debootstrap-done"
        [ ! -e "$ROOT" ] || die "$ROOT exists but is not a finished root; remove it and retry"
        mv "$new" "$ROOT"
    fi
    local wanted="${PACKAGES[*]}"
    if [ "$(cat "$ROOT/.packages" 2>/dev/null)" != "$wanted" ]; then
        say "installing Monado, Mesa, Xvfb and Python into the root (a few minutes)"
        mount_into "$ROOT"
        in_root apt-get update -qq
        in_root DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
        in_root apt-get clean
        unmount_all
        echo "$wanted" >"$ROOT/.packages"
    fi
    say "root ready in $((SECONDS - started)) s: $ROOT"
}

install_project() {
    local started=$SECONDS stamp
    stamp=$(sha256sum <"$SRC/pyproject.toml" | cut -c1-16)
    if [ "$(cat "$ROOT$VENV/.installed" 2>/dev/null)" = "$stamp" ]; then
        return
    fi
    mkdir -p "$ROOT$WHEELS"
    local py
    py=$(in_root python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    # the project's requirements for [viewer,xr,test], read from pyproject.toml
    local requirements="$ROOT$WHEELS/requirements.txt" log="$ROOT$WHEELS/download.log"
    "$HOST_PY" -c '
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))
lines = ["pip"] + project["build-system"]["requires"] + project["project"]["dependencies"]
for extra in ("viewer", "xr", "test"):
    lines += project["project"]["optional-dependencies"][extra]
print("\n".join(lines))' "$SRC/pyproject.toml" >"$requirements"
    say "downloading wheels for Python $py"
    "$HOST_PY" -m pip download --disable-pip-version-check --python-version "$py" --only-binary=:all: \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64 \
        -d "$ROOT$WHEELS" -r "$requirements" >"$log" 2>&1 \
        || { grep -v "is ignored: it is neither" "$log" | tail -5 >&2; die "pip download failed (log: $log)"; }
    [ -e "$ROOT$VENV/bin/python" ] || in_root python3 -m venv "$VENV"
    mount_into "$ROOT"
    log="$ROOT$WHEELS/install.log"
    local pip=("$VENV/bin/pip" install --disable-pip-version-check --no-index --find-links "$WHEELS")
    { in_root "${pip[@]}" --upgrade pip && in_root "${pip[@]}" -e '/src[viewer,xr,test]'; } >"$log" 2>&1 \
        || { tail -20 "$log" >&2; die "installing the project into the root failed (log: $log)"; }
    unmount_all
    echo "$stamp" >"$ROOT$VENV/.installed"
    say "project installed in the root in $((SECONDS - started)) s"
}

start_xvfb() {
    rm -f "$ROOT/tmp/.X$DISPLAY_NUMBER-lock" "$ROOT/tmp/.X11-unix/X$DISPLAY_NUMBER"
    chroot "$ROOT" /usr/bin/env -i PATH=/usr/bin:/bin Xvfb ":$DISPLAY_NUMBER" -screen 0 1280x720x24 -nolisten tcp \
        >"$ROOT/tmp/xvfb.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 100); do
        [ -S "$ROOT/tmp/.X11-unix/X$DISPLAY_NUMBER" ] && return
        kill -0 "${PIDS[-1]}" 2>/dev/null || break
        sleep 0.1
    done
    cat "$ROOT/tmp/xvfb.log" >&2
    die "Xvfb did not start inside the root"
}

start_monado() {   # the benchmark's runtime; the tests start and stop their own
    local dir=/tmp/xr-bench
    rm -rf "$ROOT$dir" && mkdir -p "$ROOT$dir"
    chroot "$ROOT" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/root XDG_RUNTIME_DIR="$dir" SIMULATED_ENABLE=1 SIMULATED_LEFT=simple \
        SIMULATED_RIGHT=simple XRT_COMPOSITOR_NULL=1 XRT_NO_STDIN=1 monado-service >"$ROOT/tmp/monado.log" 2>&1 </dev/null &
    PIDS+=($!)
    for _ in $(seq 200); do
        [ -S "$ROOT$dir/monado_comp_ipc" ] && { sleep 0.2; XR_ENV+=(XDG_RUNTIME_DIR="$dir"); return; }
        kill -0 "${PIDS[-1]}" 2>/dev/null || break
        sleep 0.1
    done
    tail -20 "$ROOT/tmp/monado.log" >&2
    die "monado-service did not start inside the root"
}

build_root
install_project
mount_into "$ROOT"
start_xvfb
XR_ENV=(DISPLAY=":$DISPLAY_NUMBER" XR_RUNTIME_JSON=/usr/share/openxr/1/openxr_monado.json PANOSTUDY_XR_REQUIRED=1
        PYTHONDONTWRITEBYTECODE=1 MESA_SHADER_CACHE_DISABLE=true)
[ "$MODE" != bench ] || start_monado
started=$SECONDS
case "$MODE" in
    test) in_root "${XR_ENV[@]}" sh -c 'cd /src && exec "$0" -m pytest -q -p no:cacheprovider "$@" tests/xr' "$VENV/bin/python" "$@" ;;
    bench) in_root "${XR_ENV[@]}" sh -c 'cd /src && exec "$0" benchmarks/bench_openxr.py "$@"' "$VENV/bin/python" "$@" ;;
    run) in_root "${XR_ENV[@]}" PATH="$VENV/bin:/usr/bin:/bin" sh -c 'cd /src && exec "$@"' sh "$@" ;;
esac
say "$MODE ran in $((SECONDS - started)) s"
