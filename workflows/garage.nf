/*
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
    GARAGE: preprocess -> GAT seed selection -> seeded GAN -> evaluation -> MultiQC
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
*/

include { GARAGE_PREPROCESS } from '../modules/local/garage/preprocess/main'
include { GARAGE_GAT        } from '../modules/local/garage/gat/main'
include { GARAGE_GAN        } from '../modules/local/garage/gan/main'
include { GARAGE_EVALUATE   } from '../modules/local/garage/evaluate/main'
include { MULTIQC           } from '../modules/local/multiqc/main'
include { softwareVersionsToYAML } from '../subworkflows/local/utils_nfcore_garage_pipeline'

workflow GARAGE {

    take:
    ch_samplesheet       // channel: [ val(meta), path(counts) ]
    ch_multiqc_config    // channel: path(multiqc_config.yml)
    ch_extra_mqc_config  // channel: path(extra config) or empty
    outdir               // string: where pipeline_info/ goes

    main:
    ch_multiqc_files = channel.empty()

    //
    // Stage 1: QC, HVGs, PCA, kNN graph, stratified train/holdout split
    //
    GARAGE_PREPROCESS(ch_samplesheet)

    //
    // Stage 2: graph attention network scores cells and picks seeds (rare types first)
    //
    GARAGE_GAT(GARAGE_PREPROCESS.out.h5ad)

    //
    // Stage 3: conditional WGAN-GP seeded with the GAT's seed cells
    //
    GARAGE_GAN(GARAGE_GAT.out.h5ad)

    //
    // Stage 4: fidelity, utility and privacy against the real holdout (with a real-vs-real control)
    //
    // join by meta: a sample whose GAN failed under errorStrategy 'ignore' just drops out
    ch_evaluate_input = GARAGE_PREPROCESS.out.h5ad
        .join(GARAGE_GAN.out.h5ad, failOnDuplicate: true)
    GARAGE_EVALUATE(ch_evaluate_input)
    ch_multiqc_files = ch_multiqc_files.mix(GARAGE_EVALUATE.out.multiqc_files.flatten())

    //
    // Software versions from the `versions` topic, as a MultiQC custom-content YAML
    //
    ch_versions_yml = softwareVersionsToYAML(channel.topic('versions'))
        .collectFile(
            storeDir: "${outdir}/pipeline_info",
            name: 'garage_software_mqc_versions.yml',
            sort: true,
            newLine: true
        )
    ch_multiqc_files = ch_multiqc_files.mix(ch_versions_yml)

    //
    // One MultiQC report for every sample
    //
    MULTIQC(
        ch_multiqc_files.collect(),
        ch_multiqc_config.toList(),
        ch_extra_mqc_config.toList()
    )

    emit:
    preprocessed   = GARAGE_PREPROCESS.out.h5ad    // channel: [ val(meta), path(h5ad) ]
    seeds          = GARAGE_GAT.out.h5ad           // channel: [ val(meta), path(h5ad) ]
    synthetic      = GARAGE_GAN.out.h5ad           // channel: [ val(meta), path(h5ad) ]
    metrics        = GARAGE_EVALUATE.out.metrics   // channel: [ val(meta), path(json) ]
    multiqc_report = MULTIQC.out.report.toList()   // channel: [ path(multiqc_report.html) ]
}
