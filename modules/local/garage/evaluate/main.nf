process GARAGE_EVALUATE {
    tag "${meta.id}"
    label 'process_medium'

    // container: set in conf/base.config from the container_registry / container_tag parameters

    input:
    // provenance: PREFIX.provenance.tsv, or [] when GARAGE_GAN ran with --no-provenance
    tuple val(meta), path(real), path(synthetic), path(seeds), path(provenance)

    output:
    tuple val(meta), path("${prefix}.garage_metrics.json"), emit: metrics
    tuple val(meta), path("${prefix}.per_type.tsv"), emit: per_type
    // only when the real file has a condition (samplesheet condition_key)
    tuple val(meta), path("${prefix}.per_condition.tsv"), optional: true, emit: per_condition
    tuple val(meta), path("${prefix}.{umap,per_type}.png"), optional: true, emit: plots
    path "${prefix}.{garage_metrics.json,per_type.tsv}", emit: multiqc_files
    tuple val("${task.process}"), val('garage'), eval('garage --version | sed "s/^garage //"'), emit: versions_garage, topic: versions

    script:
    def args = task.ext.args ?: ''
    // task.memory is the pre-flight memory budget (exit 3: retried with more, conf/base.config)
    def max_memory = task.memory ? "--max-memory-gb ${task.memory.toMega() / 1024}" : ''
    def provenance_arg = provenance ? "--provenance ${provenance}" : ''
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    garage_evaluate.py \\
        --real ${real} \\
        --synthetic ${synthetic} \\
        --seeds ${seeds} \\
        ${provenance_arg} \\
        --prefix ${prefix} \\
        --outdir . \\
        --threads ${task.cpus} \\
        ${max_memory} \\
        ${args}
    """

    stub:
    prefix = task.ext.prefix ?: "${meta.id}"
    def touch_per_condition = meta.condition_key ? "touch ${prefix}.per_condition.tsv" : ''
    """
    echo '{"sample": "${meta.id}", "metrics": {}}' > ${prefix}.garage_metrics.json
    printf 'cell_type\\tn_real_train\\tn_real_holdout\\tn_synthetic\\tfrac_real\\tfrac_synthetic\\tagreement\\tmmd\\tis_rare\\tmissing\\n' > ${prefix}.per_type.tsv
    touch ${prefix}.umap.png
    touch ${prefix}.per_type.png
    ${touch_per_condition}
    """
}
