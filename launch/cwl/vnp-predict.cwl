#!/usr/bin/env cwl-runner
# `vnp predict` as a CWL CommandLineTool.
#
#   cwltool launch/cwl/vnp-predict.cwl --reads sample.fa --pack 500 \
#       --classifier /models/500_model.pth --prefix sample
#   cwltool --no-container launch/cwl/vnp-predict.cwl --reads sample.fa --pack tiny   # vnp on PATH
#
# The DockerRequirement is a hint: build the image from launch/containers/Dockerfile
# (`docker build -t vnp:0.1.0-cuda -f launch/containers/Dockerfile .`). vnp-predict-gpu.cwl adds
# cwltool's CUDARequirement (one GPU); this file runs anywhere, on CPU too. A pack folder or YAML and
# local model copies are given as `--extra pack=/models/pack/pack.yaml` (mounted into the container
# with --preserve-environment / an extra mount) or with `--classifier`.
cwlVersion: v1.2
class: CommandLineTool
label: vnp predict
doc: |
  Viral short-sequence identification (VirNucPro method): chunks, six-frame translation,
  DNABERT-S + ESM2 embeddings, the published MLP. Writes vnp's output folder `prefix`.

hints:
  DockerRequirement:
    dockerPull: vnp:0.1.0-cuda

requirements:
  InlineJavascriptRequirement: {}
  ResourceRequirement:
    coresMin: $(inputs.threads)
    ramMin: 16000

baseCommand: [vnp, predict]

arguments:
  - position: 2
    prefix: -o
    valueFrom: $(inputs.prefix)
  - position: 3
    valueFrom: threads=$(runtime.cores)
  - position: 4
    valueFrom: pack=$(inputs.pack)

inputs:
  reads:
    type: File[]
    doc: FASTA/FASTQ (plain or gzip/bz2/xz) or unaligned BAM/CRAM; several files make one run
    inputBinding:
      position: 1
  pack:
    type: string
    default: "500"
    doc: model pack, 500, 300, tiny, or a pack folder / YAML
  classifier:
    type: File?
    doc: the published 300_model.pth / 500_model.pth (required for pack 500 and 300)
    inputBinding:
      position: 5
      prefix: classifier=
      separate: false
  chunk_length:
    type: int?
    doc: chunk length in bp (default the pack's)
    inputBinding:
      position: 6
      prefix: chunk_length=
      separate: false
  extra:
    type: string[]?
    doc: further key=value settings (vnp predict --help lists them)
    inputBinding:
      position: 7
  threads:
    type: int
    default: 8
    doc: CPU cores for the step (vnp's `threads`)
  prefix:
    type: string
    default: vnp_out
    doc: name of the output folder

outputs:
  out_dir:
    type: Directory
    doc: the whole output folder
    outputBinding: {glob: $(inputs.prefix)}
  per_frame:
    type: File
    outputBinding: {glob: $(inputs.prefix)/prediction_results.txt}
  highestscore:
    type: File
    outputBinding: {glob: $(inputs.prefix)/prediction_results_highestscore.csv}
  chunks:
    type: File
    outputBinding: {glob: $(inputs.prefix)/chunks.tsv}
  contigs:
    type: File
    outputBinding: {glob: $(inputs.prefix)/contigs.tsv}
  regions:
    type: File
    outputBinding: {glob: $(inputs.prefix)/regions.tsv}
  viral_sequences:
    type: File
    outputBinding: {glob: $(inputs.prefix)/viral_sequences.fna}
  summary:
    type: File
    outputBinding: {glob: $(inputs.prefix)/summary.tsv}
  report:
    type: File
    outputBinding: {glob: $(inputs.prefix)/report.html}
  run_json:
    type: File
    outputBinding: {glob: $(inputs.prefix)/run.json}
