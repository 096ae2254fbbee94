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
include { readFailureRecords     } from '../subworkflows/local/utils_nfcore_garage_pipeline'
include { sampleStatusRows       } from '../subworkflows/local/utils_nfcore_garage_pipeline'
include { sampleStatusTsv        } from '../subworkflows/local/utils_nfcore_garage_pipeline'
include { sampleStatusMultiqc    } from '../subworkflows/local/utils_nfcore_garage_pipeline'
include { warnFailedSamples      } from '../subworkflows/local/utils_nfcore_garage_pipeline'

workflow GARAGE {

    take:
    ch_samplesheet       // channel: [ val(meta), path(counts) ]
    ch_multiqc_config    // channel: path(multiqc_config.yml)
    ch_extra_mqc_config  // channel: path(extra config) or empty
    ch_report_files      // channel: path(*_mqc.yaml): parameter summary and methods description
    outdir               // string: where pipeline_info/ goes

    main:
    ch_multiqc_files = channel.empty()

    //
    // Stage 1: QC, HVGs, PCA, kNN graph, stratified train/holdout split, rare types
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
    // A sample whose input a stage rejected (exit 2, errorStrategy 'ignore' in conf/base.config)
    // emits nothing from that stage on, so the join simply leaves it out. The seeds and the
    // private provenance make the privacy metrics seed-aware. The provenance is optional
    // (--no-provenance in --gan_args): remainder keeps a sample without one, and [] tells
    // GARAGE_EVALUATE to run without --provenance.
    ch_evaluate_input = GARAGE_PREPROCESS.out.h5ad
        .join(GARAGE_GAN.out.h5ad, failOnDuplicate: true)
        .join(GARAGE_GAT.out.h5ad, failOnDuplicate: true)
        .join(GARAGE_GAN.out.provenance, failOnDuplicate: true, remainder: true)
        .map { meta, real, synthetic, seeds, provenance -> [meta, real, synthetic, seeds, provenance ?: []] }
    GARAGE_EVALUATE(ch_evaluate_input)
    // per_condition: samples with a condition_key only
    ch_multiqc_files = ch_multiqc_files
        .mix(GARAGE_EVALUATE.out.multiqc_files.flatten())
        .mix(GARAGE_EVALUATE.out.per_condition.map { _meta, tsv -> tsv })
        .mix(GARAGE_EVALUATE.out.plots.map { _meta, pngs -> pngs }.flatten())

    //
    // Which samples finished and which were dropped, at which stage and why. toList() waits
    // for every per-sample process to end, so every errorStrategy record is written by then.
    //
    ch_sample_status = channel.empty()
        .mix(
            ch_samplesheet.map { meta, _counts -> ['input', meta.id] },
            GARAGE_PREPROCESS.out.h5ad.map { meta, _h5ad -> ['GARAGE_PREPROCESS', meta.id] },
            GARAGE_GAT.out.h5ad.map { meta, _h5ad -> ['GARAGE_GAT', meta.id] },
            GARAGE_GAN.out.h5ad.map { meta, _h5ad -> ['GARAGE_GAN', meta.id] },
            GARAGE_EVALUATE.out.metrics.map { meta, _json -> ['GARAGE_EVALUATE', meta.id] }
        )
        .toList()
        .map { stage_ids -> sampleStatusRows(stage_ids, readFailureRecords()) }
    ch_sample_status.subscribe { rows -> warnFailedSamples(rows) }

    ch_status_tsv = ch_sample_status
        .map { rows -> sampleStatusTsv(rows) }
        .collectFile(storeDir: "${outdir}/pipeline_info", name: 'garage_sample_status.tsv')
    ch_multiqc_files = ch_multiqc_files.mix(
        ch_sample_status
            .map { rows -> sampleStatusMultiqc(rows) }
            .collectFile(name: 'garage_sample_status_mqc.yaml')
    )

    //
    // Software versions from the `versions` topic, as a MultiQC custom-content YAML. MULTIQC
    // consumes this topic, so it must never emit into it (tests/python/test_pipeline.py checks).
    //
    ch_versions_yml = softwareVersionsToYAML(channel.topic('versions'))
        .collectFile(
            storeDir: "${outdir}/pipeline_info",
            name: 'garage_software_mqc_versions.yml',
            sort: true,
            newLine: true
        )
    ch_multiqc_files = ch_multiqc_files
        .mix(ch_versions_yml)
        .mix(ch_report_files)

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
    sample_status  = ch_sample_status              // channel: [ list of status maps ] (one item)
    status_tsv     = ch_status_tsv                 // channel: path(garage_sample_status.tsv)
    multiqc_report = MULTIQC.out.report.toList()   // channel: [ path(multiqc_report.html) ]
}
