#!/usr/bin/env cwl-runner
# vnp-predict.cwl with one GPU required: cwltool's CUDARequirement extension (CWL v1.2 has no
# GPU requirement of its own). cwltool enforces it even as a hint, and refuses the step on a host
# without a GPU, so it lives here and not in vnp-predict.cwl (which runs anywhere, on CPU too).
#
#   cwltool --enable-ext launch/cwl/vnp-predict-gpu.cwl --reads sample.fa --pack 500 \
#       --classifier /models/500_model.pth
cwlVersion: v1.2
$namespaces:
  cwltool: "http://commonwl.org/cwltool#"
$mixin: vnp-predict.cwl
hints:
  DockerRequirement:
    dockerPull: vnp:0.1.0-cuda
  cwltool:CUDARequirement:
    cudaVersionMin: "12.1"
    cudaComputeCapability: "7.0"
    cudaDeviceCountMin: 1
    cudaDeviceCountMax: 1
