#!/usr/bin/env bash
# One node, one rank per GPU, through torchrun.
#
#   NGPU=4 launch/torchrun.sh INPUT.fa -o OUT pack=500 classifier=500_model.pth
#
# Any `vnp predict` arguments pass through unchanged. NGPU defaults to every visible GPU.
set -euo pipefail
NGPU=${NGPU:-$(python -c "import torch; print(max(1, torch.cuda.device_count()))")}
exec torchrun --standalone --nproc_per_node="$NGPU" -m vnp.predict "$@"
