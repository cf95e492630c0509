#!/usr/bin/env bash
# Several nodes through torchrun with a c10d rendezvous: run this same command on every node.
#
#   NNODES=2 RDZV_HOST=node01 launch/torchrun_multinode.sh INPUT.fa -o /shared/OUT pack=500 classifier=500_model.pth
#
# RDZV_HOST is any one node of the job that every node can reach (its rendezvous store listens on
# RDZV_PORT); torchrun numbers the ranks and gives every worker MASTER_ADDR/MASTER_PORT.
# OUT must be on a filesystem every node sees. vnp chooses each node's socket interface (the one
# whose route reaches MASTER_ADDR) unless GLOO_SOCKET_IFNAME or NCCL_SOCKET_IFNAME is set.
set -euo pipefail
NNODES=${NNODES:?set NNODES to the number of nodes}
RDZV_HOST=${RDZV_HOST:?set RDZV_HOST to one node every node can reach}
RDZV_PORT=${RDZV_PORT:-29400}
JOB_ID=${JOB_ID:-vnp-$RDZV_HOST}  # the same on every node of one job
NGPU=${NGPU:-$(python -c "import torch; print(max(1, torch.cuda.device_count()))")}
exec torchrun --nnodes="$NNODES" --nproc_per_node="$NGPU" --rdzv_backend=c10d \
    --rdzv_endpoint="$RDZV_HOST:$RDZV_PORT" --rdzv_id="$JOB_ID" -m vnp.predict "$@"
