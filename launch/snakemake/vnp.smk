# The vnp rule for Snakemake (>= 8): `include:` this file, set `config["samples"]` (a sample
# sheet) and `config["pack"]`, then ask for `results/{sample}/contigs.tsv` (see Snakefile).
#
#   Sample sheet: tab-separated, a header line `sample<TAB>input`, one line per sample; the input
#   is FASTA/FASTQ (plain or compressed) or unaligned BAM/CRAM, relative to the working directory.
#
#   config:  samples   the sample sheet (default samples.tsv)
#            pack      model pack: 500, 300, tiny, or a pack folder/YAML (default 500)
#            extra     further `key=value` settings, e.g. "classifier=/models/500_model.pth"
#            gpus      GPUs per sample (default 1; resources for a cluster executor, e.g. SLURM's)
#            threads   CPU threads per sample (default 8)
#
# On one machine with one GPU, run one sample at a time: `snakemake --cores 8 --resources gpu=1`.

import csv


def vnp_samples(sheet):
    """{sample: input} from a `sample<TAB>input` sheet; duplicate sample names are refused."""
    samples = {}
    with open(sheet, newline="") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            if row["sample"] in samples:
                raise ValueError(f"{sheet}: sample {row['sample']!r} is listed twice")
            samples[row["sample"]] = row["input"]
    return samples


VNP_SAMPLES = vnp_samples(config.get("samples", "samples.tsv"))


rule vnp_predict:
    input:
        reads=lambda wildcards: VNP_SAMPLES[wildcards.sample],
    output:
        per_frame="results/{sample}/prediction_results.txt",
        highestscore="results/{sample}/prediction_results_highestscore.csv",
        chunks="results/{sample}/chunks.tsv",
        contigs="results/{sample}/contigs.tsv",
        regions="results/{sample}/regions.tsv",
        viral_sequences="results/{sample}/viral_sequences.fna",
        summary="results/{sample}/summary.tsv",
        report="results/{sample}/report.html",
        run_json="results/{sample}/run.json",
    params:
        out=lambda wildcards, output: os.path.dirname(output.contigs),
        pack=config.get("pack", "500"),
        extra=config.get("extra", ""),
    threads: int(config.get("threads", 8))
    resources:
        gpu=int(config.get("gpus", 1)),
    log:
        "logs/vnp_predict/{sample}.log",
    shell:
        "vnp predict {input.reads} -o {params.out} threads={threads} pack={params.pack} {params.extra} 2> {log}"
