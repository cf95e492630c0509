version 1.0

# vnp as a drop-in for the Broad's `virnucpro` task (viral-pipelines, branch feature-virnucpro):
# the same kind of inputs (FASTA or unaligned BAM, chunk length, model pack, GPU runtime keys) and
# outputs that the Broad's downstream steps read unchanged:
#   * `highestscore_tsv`: the highest-score table with `max_score_0`/`max_score_1` (vnp writes them
#     with tables.highestscore_scores=true, always set here), read by viral-ngs
#     `metagenomics virnucpro_contigs` (classify_contigs);
#   * `virnucpro_tgz` (`<name>.virnucpro.tgz`): vnp's result files at the archive's top level,
#     `prediction_results_highestscore.csv` among them, read by `classify_virnucpro_contigs`
#     (which looks for `*_highestscore.csv` at the top level, not one folder down);
#   * `virnucpro_version`: `vnp --version`.
#
#   miniwdl run launch/wdl/vnp.wdl in_fasta=contigs.fasta classifier=500_model.pth
#   make test-wdl     # builds a CPU image offline and runs this workflow through podman

workflow vnp_virnucpro {
  meta {
    description: "vnp (distributed VirNucPro) on one FASTA/FASTQ or unaligned BAM/CRAM file."
  }
  input {
    File    in_fasta
    Int     expected_length = 500
  }
  call virnucpro {
    input:
      in_fasta = in_fasta,
      expected_length = expected_length
  }
  output {
    File   predictions_tsv   = virnucpro.predictions_tsv
    File   highestscore_tsv  = virnucpro.highestscore_tsv
    File   contigs_tsv       = virnucpro.contigs_tsv
    File   report_html       = virnucpro.report_html
    File   virnucpro_tgz     = virnucpro.virnucpro_tgz
    String virnucpro_version = virnucpro.virnucpro_version
  }
}

task virnucpro {
  meta {
    description: "Classifies viral sequences with vnp (VirNucPro method) on GPUs; FASTA/FASTQ or unaligned BAM/CRAM in."
  }

  input {
    File    in_fasta

    Int     expected_length = 500
    String? pack
    File?   classifier
    File?   model_pack_tgz
    Array[String] settings = []
    Boolean parallel = false
    String? gpus

    Int     machine_mem_gb = 64
    Int     cpu = 8
    Boolean use_gpu = true
    String? accelerator_type
    Int?    accelerator_count
    String? gpu_type
    Int?    gpu_count
    String? vm_size
    String  docker = "vnp:0.1.0-cuda"
  }

  String out_basename = basename(basename(basename(basename(basename(basename(in_fasta, ".gz"), ".fasta"), ".fa"), ".fna"), ".bam"), ".cram")
  String model_pack = select_first([pack, "~{expected_length}"])
  Int disk_size = 375

  parameter_meta {
    in_fasta: {
      description: "Input sequences: FASTA/FASTQ (plain or gzip/bz2/xz) or unaligned BAM/CRAM (reads of a pair get /1 and /2).",
      patterns: ["*.fasta", "*.fa", "*.fna", "*.fastq", "*.fq", "*.gz", "*.bam", "*.cram"],
      category: "required"
    }
    expected_length: {description: "Chunk length in bp (300 or 500 for the published models); also the default pack.", category: "common"}
    pack: {description: "vnp model pack: 500, 300, tiny (random weights, tests only); default expected_length.", category: "common"}
    classifier: {description: "The published 300_model.pth / 500_model.pth (or a folder from vnp pack convert, tarred in model_pack_tgz).", category: "common"}
    model_pack_tgz: {description: "A vnp pack folder as .tgz, pack.yaml at its top level (local models: no hub download); overrides pack.", category: "advanced"}
    settings: {description: "Further vnp predict key=value settings, e.g. call.min_score=0.9.", category: "advanced"}
    parallel: {description: "Use every GPU of the machine (one rank per GPU, under torchrun).", category: "advanced"}
    gpus: {description: "Comma-separated GPU IDs to use, e.g. 0,1 (implies parallel).", category: "advanced"}
    use_gpu: {description: "Request a GPU from the backend (false: CPU only, e.g. for tests).", category: "runtime"}
    accelerator_type: {description: "[GCP/PAPIv2] GPU model, e.g. nvidia-tesla-t4.", category: "runtime"}
    accelerator_count: {description: "[GCP/PAPIv2] Number of GPUs.", category: "runtime"}
    gpu_type: {description: "[Terra] GPU model, e.g. nvidia-tesla-t4.", category: "runtime"}
    gpu_count: {description: "[Terra] Number of GPUs.", category: "runtime"}
    vm_size: {description: "[TES/Azure] GPU VM size.", category: "runtime"}
    docker: {description: "vnp image (launch/containers/Dockerfile), models mounted or fetched, not baked in."}
  }

  command <<<
    set -euo pipefail
    vnp --version | tee VERSION

    pack="~{model_pack}"
    if [ -n "~{default="" model_pack_tgz}" ]; then
      mkdir -p model_pack
      tar -xzf "~{default="" model_pack_tgz}" -C model_pack
      pack="$(pwd)/model_pack/pack.yaml"
    fi
    gpus="~{default="" gpus}"
    if [ -z "$gpus" ] && [ "~{parallel}" = "true" ]; then
      gpus="$(nvidia-smi --query-gpu=index --format=csv,noheader | paste -sd, -)"
    fi

    vnp predict ${gpus:+--gpus "$gpus"} "~{in_fasta}" -o vnp_out threads=~{cpu} pack="$pack" \
      chunk_length=~{expected_length} ~{"classifier=" + classifier} tables.highestscore_scores=true \
      ~{sep=" " settings}

    cp vnp_out/prediction_results.txt "~{out_basename}.virnucpro.predictions.tsv"
    cp vnp_out/prediction_results_highestscore.csv "~{out_basename}.virnucpro.highestscore.tsv"
    cp vnp_out/contigs.tsv "~{out_basename}.virnucpro.contigs_vnp.tsv"
    cp vnp_out/report.html "~{out_basename}.virnucpro.report.html"
    # the result files at the archive's top level (work/ holds the packed inputs: left out)
    (cd vnp_out && find . -maxdepth 1 -type f -printf '%f\n' | LC_ALL=C sort > ../tgz_members.txt \
      && tar -czf "../~{out_basename}.virnucpro.tgz" -T ../tgz_members.txt)

    { cat /sys/fs/cgroup/memory.peak 2>/dev/null || cat /sys/fs/cgroup/memory/memory.max_usage_in_bytes 2>/dev/null || echo 0; } > MEM_BYTES
  >>>

  output {
    File   predictions_tsv   = "~{out_basename}.virnucpro.predictions.tsv"
    File   highestscore_tsv  = "~{out_basename}.virnucpro.highestscore.tsv"
    File   contigs_tsv       = "~{out_basename}.virnucpro.contigs_vnp.tsv"
    File   report_html       = "~{out_basename}.virnucpro.report.html"
    File   virnucpro_tgz     = "~{out_basename}.virnucpro.tgz"
    Int    max_ram_gb        = ceil(read_float("MEM_BYTES") / 1000000000)
    String virnucpro_version = read_string("VERSION")
  }

  runtime {
    docker: docker
    memory: "~{machine_mem_gb} GB"
    cpu: cpu
    disks: "local-disk ~{disk_size} LOCAL"
    disk: "~{disk_size} GB"
    vm_size: select_first([vm_size, "Standard_NC6s_v3"])
    gpu: use_gpu
    acceleratorType: select_first([accelerator_type, "nvidia-tesla-t4"])
    acceleratorCount: select_first([accelerator_count, gpu_count, 1])
    gpuType: select_first([gpu_type, "nvidia-tesla-t4"])
    gpuCount: select_first([gpu_count, accelerator_count, 1])
    preemptible: 2
    maxRetries: 2
  }
}
