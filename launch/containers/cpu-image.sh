#!/usr/bin/env bash
# The CPU image of vnp, built without pulling any image: Debian's debootstrap makes a minimal
# root file system, vnp and its requirements go into a venv in it (/opt/vnp), and
# `podman import` turns it into the local image $IMAGE. Run as root (debootstrap, chroot).
#
#   launch/containers/cpu-image.sh                 # -> localhost/vnp:<version>-cpu
#   IMAGE=localhost/vnp:dev WORK=/scratch/img launch/containers/cpu-image.sh
#
# Packages come from the Debian mirror ($MIRROR) and the Python packages from this host's pip
# configuration (PyPI, local wheel folders: the CPU build of torch, $TORCH_PIN), downloaded on the
# host into a wheel folder and installed in the root file system with --no-index.
set -euo pipefail
ROOT_DIR=$(cd "$(dirname "$0")/../.." && pwd)
VERSION=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$ROOT_DIR/vnp/__init__.py")
IMAGE=${IMAGE:-localhost/vnp:$VERSION-cpu}
WORK=${WORK:-$ROOT_DIR/build/cpu-image}
SUITE=${SUITE:-bookworm}             # its python3 (3.11) must match the host's for the wheels
MIRROR=${MIRROR:-http://deb.debian.org/debian}
TORCH_PIN=${TORCH_PIN:-torch==2.13.0}
PYTHON=${PYTHON:-python3}
ROOTFS=$WORK/rootfs

if [ ! -x "$ROOTFS/usr/bin/python3" ]; then
    rm -rf "$ROOTFS"
    mkdir -p "$WORK"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,procps \
        "$SUITE" "$ROOTFS" "$MIRROR"
fi
host_py=$($PYTHON -c 'import sys; print("%d.%d" % sys.version_info[:2])')
root_py=$(chroot "$ROOTFS" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$host_py" != "$root_py" ]; then
    echo "cpu-image.sh: $PYTHON is $host_py but $SUITE's python3 is $root_py; set PYTHON to a $root_py" >&2
    exit 2
fi

# Wheels of vnp and of every requirement, for the root file system's Python.
rm -rf "$ROOTFS/tmp/wheels"
mkdir -p "$ROOTFS/tmp/wheels"
$PYTHON -m pip wheel -q --no-deps -w "$ROOTFS/tmp/wheels" "$ROOT_DIR"
$PYTHON -m pip download -q -d "$ROOTFS/tmp/wheels" "$TORCH_PIN" "$ROOTFS"/tmp/wheels/vnp-*.whl

rm -rf "$ROOTFS/opt/vnp"  # a rebuild installs this checkout afresh
chroot "$ROOTFS" python3 -m venv /opt/vnp
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin chroot "$ROOTFS" /opt/vnp/bin/pip install -q --no-index --find-links /tmp/wheels "$TORCH_PIN" vnp
rm -rf "$ROOTFS/tmp/wheels" "$ROOTFS/root/.cache"
chroot "$ROOTFS" /opt/vnp/bin/vnp --version

tar -C "$ROOTFS" -c . | podman import \
    --change "ENV PATH=/opt/vnp/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change "ENV LC_ALL=C.UTF-8" \
    --change "CMD [\"vnp\", \"--help\"]" - "$IMAGE"
echo "built $IMAGE"
