process GARAGE_GAT {
    tag "${meta.id}"
    label 'process_gpu'

    // container: set in conf/base.config from the container_registry / container_tag parameters

    input:
    tuple val(meta), path(h5ad)

    output:
    tuple val(meta), path("${prefix}.seeds.h5ad"), emit: h5ad
    tuple val(meta), path("${prefix}.gat.pt"), emit: model
    tuple val(meta), path("${prefix}.gat_log.tsv"), emit: log
    tuple val("${task.process}"), val('garage'), eval('garage --version | sed "s/^garage //"'), emit: versions_garage, topic: versions
    tuple val("${task.process}"), val('torch'), eval('python -c "import torch; print(torch.__version__)"'), emit: versions_torch, topic: versions

    script:
    def args = task.ext.args ?: ''
    // task.memory is the pre-flight memory budget (exit 3: retried with more, conf/base.config)
    def max_memory = task.memory ? "--max-memory-gb ${task.memory.toMega() / 1024}" : ''
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    garage_gat.py \\
        --input ${h5ad} \\
        --prefix ${prefix} \\
        --outdir . \\
        --threads ${task.cpus} \\
        ${max_memory} \\
        ${args}
    """

    stub:
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    touch ${prefix}.seeds.h5ad
    touch ${prefix}.gat.pt
    touch ${prefix}.gat_log.tsv
    """
}
