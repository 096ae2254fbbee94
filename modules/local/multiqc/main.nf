process MULTIQC {
    label 'process_single'

    // container: set in conf/base.config from the container_registry / container_tag parameters

    input:
    path multiqc_files, stageAs: "?/*"
    path multiqc_config
    path extra_multiqc_config

    output:
    path "*.html", emit: report
    path "*_data", emit: data
    path "*_plots", optional: true, emit: plots
    // NOT on the `versions` topic: this process's input is collected from that topic, and a
    // topic closes only when every process emitting into it has finished, so emitting here
    // would make MULTIQC wait for itself forever. Its version reaches the report through
    // multiqc_mqc_versions.yml (written below, merged by MultiQC with the pipeline's YAML).
    tuple val("${task.process}"), val('multiqc'), eval('multiqc --version | sed "s/.* //"'), emit: versions_multiqc

    script:
    def args = task.ext.args ?: ''
    def prefix = task.ext.prefix ? "--filename ${task.ext.prefix}.html" : ''
    def config = multiqc_config ? "--config ${multiqc_config}" : ''
    def extra_config = extra_multiqc_config ? "--config ${extra_multiqc_config}" : ''
    """
    printf '%s:\\n    multiqc: "%s"\\n' \\
        "\$(echo '${task.process}' | sed 's/.*://')" \\
        "\$(multiqc --version | sed 's/.* //')" > multiqc_mqc_versions.yml

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
