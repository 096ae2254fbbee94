process GARAGE_GAN {
    tag "${meta.id}"
    label 'process_gpu'

    // container: set in conf/base.config from the container_registry / container_tag parameters

    input:
    tuple val(meta), path(seeds)

    output:
    tuple val(meta), path("${prefix}.synthetic.h5ad"), emit: h5ad
    tuple val(meta), path("${prefix}.generator.pt"), emit: model
    tuple val(meta), path("${prefix}.gan_log.tsv"), emit: log
    // PRIVATE: names the real seed cell of every seeded synthetic cell (published to private/);
    // absent with --no-provenance in ext.args (GARAGE_EVALUATE then runs without it)
    tuple val(meta), path("${prefix}.provenance.tsv"), optional: true, emit: provenance
    tuple val("${task.process}"), val('garage'), eval('garage --version | sed "s/^garage //"'), emit: versions_garage, topic: versions
    tuple val("${task.process}"), val('torch'), eval('python -c "import torch; print(torch.__version__)"'), emit: versions_torch, topic: versions

    script:
    def args = task.ext.args ?: ''
    // task.memory is the pre-flight memory budget (exit 3: retried with more, conf/base.config)
    def max_memory = task.memory ? "--max-memory-gb ${task.memory.toMega() / 1024}" : ''
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    garage_gan.py \\
        --input ${seeds} \\
        --prefix ${prefix} \\
        --outdir . \\
        --threads ${task.cpus} \\
        ${max_memory} \\
        ${args}
    """

    stub:
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    touch ${prefix}.synthetic.h5ad
    touch ${prefix}.generator.pt
    touch ${prefix}.gan_log.tsv
    touch ${prefix}.provenance.tsv
    """
}
