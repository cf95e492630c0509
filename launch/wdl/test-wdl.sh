#!/usr/bin/env bash
# `make test-wdl`: the WDL workflow run for real by miniwdl through podman, on the bundled example
# with the tiny pack, in the CPU image built offline (launch/containers/cpu-image.sh), then its
# outputs checked as the Broad's downstream steps read them. Needs root, Debian's podman, runc and
# debootstrap (.ci/run installs them). Takes minutes (the image: once).
set -euo pipefail
ROOT_DIR=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT_DIR"
PY=${PY:-$ROOT_DIR/.venv/bin/python}
VERSION=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' vnp/__init__.py)
IMAGE=${IMAGE:-localhost/vnp:$VERSION-cpu}
RUN_DIR=${RUN_DIR:-$ROOT_DIR/build/wdl-run}

# podman here: runc (crun cannot set up this kernel's cgroups), the host network (no bridge or
# slirp inside a container host), cgroupfs and file events (no systemd), and explicit ulimits: a
# container host without CAP_SYS_RESOURCE cannot raise a limit, and podman's defaults for root
# (1048576 open files, more processes than runc may set) fail with "error setting rlimit".
nofile=$(ulimit -Hn)
nproc=$(ulimit -Hu)
[ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ] && nproc=32768
conf=$ROOT_DIR/build/containers.conf
mkdir -p "$ROOT_DIR/build"
cat > "$conf" <<CONF
[containers]
netns = "host"
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
export CONTAINERS_CONF=$conf

podman image exists "$IMAGE" || IMAGE=$IMAGE PYTHON=$PY launch/containers/cpu-image.sh
podman run --rm "$IMAGE" vnp --version

rm -rf "$RUN_DIR"
export MINIWDL__PODMAN__EXE="[\"$ROOT_DIR/launch/wdl/podman-local\"]"
"$(dirname "$PY")/miniwdl" run launch/wdl/vnp.wdl \
    in_fasta=vnp/data/example.fa virnucpro.pack=tiny virnucpro.cpu=1 virnucpro.machine_mem_gb=2 \
    virnucpro.use_gpu=false virnucpro.docker="$IMAGE" \
    --cfg launch/wdl/miniwdl.cfg --dir "$RUN_DIR" -o "$RUN_DIR.outputs.json"
"$PY" - "$RUN_DIR.outputs.json" "$VERSION" <<'CHECK'
import json, sys, tarfile
outputs = json.load(open(sys.argv[1]))["outputs"]
assert outputs["vnp_virnucpro.virnucpro_version"] == f"vnp {sys.argv[2]}", outputs
header = open(outputs["vnp_virnucpro.highestscore_tsv"]).readline().rstrip("\n").split("\t")
assert header == ["Modified_ID", "Is_Virus", "max_score_0", "max_score_1"], header
with tarfile.open(outputs["vnp_virnucpro.virnucpro_tgz"]) as tgz:
    names = tgz.getnames()
top = [n for n in names if n.endswith("_highestscore.csv") and "/" not in n]
assert top == ["prediction_results_highestscore.csv"], names
print("test-wdl: ok:", ", ".join(f"{k.split('.')[-1]}" for k in outputs), "| tgz:", " ".join(names))
CHECK
