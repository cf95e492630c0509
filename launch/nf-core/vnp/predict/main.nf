process VNP_PREDICT {
    tag "$meta.id"
    label 'process_gpu'

    conda "${moduleDir}/environment.yml"
    container "${ workflow.containerEngine == 'singularity' && !task.ext.singularity_pull_docker_container ?
        'vnp_0.1.0-cuda.sif' :
        'vnp:0.1.0-cuda' }"

    input:
    tuple val(meta), path(fasta)
    val pack

    output:
    tuple val(meta), path("${prefix}/prediction_results.txt")             , emit: per_frame
    tuple val(meta), path("${prefix}/prediction_results_highestscore.csv"), emit: highestscore
    tuple val(meta), path("${prefix}/chunks.tsv")                         , emit: chunks
    tuple val(meta), path("${prefix}/contigs.tsv")                        , emit: contigs
    tuple val(meta), path("${prefix}/regions.tsv")                        , emit: regions
    tuple val(meta), path("${prefix}/viral_sequences.fna")                , emit: viral_sequences
    tuple val(meta), path("${prefix}/summary.tsv")                        , emit: summary
    tuple val(meta), path("${prefix}/report.html")                        , emit: report
    tuple val(meta), path("${prefix}/run.json")                           , emit: run_json
    path "versions.yml"                                                   , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    vnp predict $fasta -o $prefix threads=$task.cpus pack=$pack $args

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        vnp: \$(vnp --version | sed 's/^vnp //')
    END_VERSIONS
    """

    stub:
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    mkdir -p $prefix
    touch $prefix/prediction_results.txt
    touch $prefix/prediction_results_highestscore.csv
    touch $prefix/chunks.tsv
    touch $prefix/contigs.tsv
    touch $prefix/regions.tsv
    touch $prefix/viral_sequences.fna
    touch $prefix/summary.tsv
    touch $prefix/report.html
    touch $prefix/run.json

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        vnp: \$(vnp --version | sed 's/^vnp //')
    END_VERSIONS
    """
}
