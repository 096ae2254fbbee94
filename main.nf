#!/usr/bin/env nextflow
/*
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
    GARAGE: graph-attention seeded GAN for synthetic scRNA-seq that keeps rare cell types
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
    Usage : nextflow run <repo> -profile docker|singularity|apptainer[,gpu] \
                --input samplesheet.csv --outdir results
    Docs  : docs/usage.md, docs/output.md
----------------------------------------------------------------------------------------
*/

include { GARAGE                  } from './workflows/garage'
include { PIPELINE_INITIALISATION } from './subworkflows/local/utils_nfcore_garage_pipeline'
include { PIPELINE_COMPLETION     } from './subworkflows/local/utils_nfcore_garage_pipeline'

/*
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
    NAMED WORKFLOW FOR PIPELINE
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
*/

workflow GARAGE_PIPELINE {

    take:
    samplesheet          // channel: [ val(meta), path(counts) ]
    report_files         // channel: path(*_mqc.yaml): parameter summary and methods description
    extra_multiqc_config // string: --multiqc_config, or null
    outdir               // string: --outdir

    main:
    ch_multiqc_config = channel.fromPath("${projectDir}/assets/multiqc_config.yml", checkIfExists: true)
    ch_extra_mqc_config = extra_multiqc_config
        ? channel.fromPath(extra_multiqc_config, checkIfExists: true)
        : channel.empty()

    GARAGE(
        samplesheet,
        ch_multiqc_config,
        ch_extra_mqc_config,
        report_files,
        outdir
    )

    emit:
    multiqc_report = GARAGE.out.multiqc_report // channel: [ path(multiqc_report.html) ]
    sample_status  = GARAGE.out.sample_status  // channel: [ list of status maps ]
}

/*
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
    RUN MAIN WORKFLOW
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
*/

workflow {

    main:
    //
    // Version, parameter validation, samplesheet -> [meta, counts]
    //
    PIPELINE_INITIALISATION(
        params.version.toString().toBoolean(),
        params.validate_params.toString().toBoolean(),
        params.use_gpu.toString().toBoolean(),
        params.input,
        params.label_key,
        params.outdir,
        params,
        params.multiqc_methods_description
    )

    //
    // preprocess -> gat -> gan -> evaluate -> MultiQC
    //
    GARAGE_PIPELINE(
        PIPELINE_INITIALISATION.out.samplesheet,
        PIPELINE_INITIALISATION.out.multiqc_files,
        params.multiqc_config,
        params.outdir
    )

    //
    // Completion summary
    //
    PIPELINE_COMPLETION(
        params.outdir,
        GARAGE_PIPELINE.out.multiqc_report,
        GARAGE_PIPELINE.out.sample_status
    )
}
