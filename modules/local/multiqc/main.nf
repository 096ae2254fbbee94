process MULTIQC {
    label 'process_single'

    container 'ghcr.io/garage-sc/garage:0.1.0'

    input:
    path multiqc_files, stageAs: "?/*"
    path multiqc_config
    path extra_multiqc_config

    output:
    path "*.html", emit: report
    path "*_data", emit: data
    path "*_plots", optional: true, emit: plots
    tuple val("${task.process}"), val('multiqc'), eval('multiqc --version | sed "s/.* //"'), emit: versions_multiqc, topic: versions

    script:
    def args = task.ext.args ?: ''
    def prefix = task.ext.prefix ? "--filename ${task.ext.prefix}.html" : ''
    def config = multiqc_config ? "--config ${multiqc_config}" : ''
    def extra_config = extra_multiqc_config ? "--config ${extra_multiqc_config}" : ''
    """
    multiqc \\
        --force \\
        ${args} \\
        ${config} \\
        ${prefix} \\
        ${extra_config} \\
        .
    """

    stub:
    """
    mkdir multiqc_data
    touch multiqc_data/multiqc.log
    mkdir multiqc_plots
    touch multiqc_report.html
    """
}
