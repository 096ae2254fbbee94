process GARAGE_PREPROCESS {
    tag "${meta.id}"
    label 'process_medium'

    // container: set in conf/base.config from the container_registry / container_tag parameters

    input:
    tuple val(meta), path(counts)

    output:
    tuple val(meta), path("${prefix}.preprocessed.h5ad"), emit: h5ad
    tuple val("${task.process}"), val('garage'), eval('garage --version | sed "s/^garage //"'), emit: versions_garage, topic: versions

    script:
    def args = task.ext.args ?: ''
    // task.memory is the pre-flight memory budget (exit 3: retried with more, conf/base.config)
    def max_memory = task.memory ? "--max-memory-gb ${task.memory.toMega() / 1024}" : ''
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    garage_preprocess.py \\
        --input ${counts} \\
        --prefix ${prefix} \\
        --outdir . \\
        ${max_memory} \\
        ${args}
    """

    stub:
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    touch ${prefix}.preprocessed.h5ad
    """
}
