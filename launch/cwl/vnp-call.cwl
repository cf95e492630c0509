#!/usr/bin/env cwl-runner
# `vnp call` as a CWL CommandLineTool: new calls, regions and FASTA of a finished `vnp predict`
# run (no model loaded, no GPU). The run folder is copied (writable) and rewritten.
#
#   cwltool launch/cwl/vnp-call.cwl --run vnp_out --settings call.min_score=0.9
cwlVersion: v1.2
class: CommandLineTool
label: vnp call
doc: Recompute calls, regions, viral FASTA and summaries of a finished run with new cutoffs.

hints:
  DockerRequirement:
    dockerPull: vnp:0.1.0-cuda

requirements:
  InitialWorkDirRequirement:
    listing:
      - entry: $(inputs.run)
        writable: true

baseCommand: [vnp, call]

inputs:
  run:
    type: Directory
    doc: the output folder of a finished vnp predict (out_dir of vnp-predict.cwl)
    inputBinding:
      position: 1
      valueFrom: $(self.basename)
  settings:
    type: string[]
    doc: call.*, regions.* and tables.* settings, e.g. call.min_score=0.9
    inputBinding:
      position: 2

outputs:
  out_dir:
    type: Directory
    outputBinding: {glob: $(inputs.run.basename)}
  highestscore:
    type: File
    outputBinding: {glob: $(inputs.run.basename)/prediction_results_highestscore.csv}
  chunks:
    type: File
    outputBinding: {glob: $(inputs.run.basename)/chunks.tsv}
  contigs:
    type: File
    outputBinding: {glob: $(inputs.run.basename)/contigs.tsv}
  regions:
    type: File
    outputBinding: {glob: $(inputs.run.basename)/regions.tsv}
  viral_sequences:
    type: File
    outputBinding: {glob: $(inputs.run.basename)/viral_sequences.fna}
  summary:
    type: File
    outputBinding: {glob: $(inputs.run.basename)/summary.tsv}
