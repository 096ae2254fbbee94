//
// Pipeline initialisation (version, parameter validation, samplesheet parsing) and completion
//

include { validateParameters   } from 'plugin/nf-schema'
include { paramsSummaryLog     } from 'plugin/nf-schema'
include { paramsSummaryMap     } from 'plugin/nf-schema'
include { samplesheetToList    } from 'plugin/nf-schema'

/*
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
    SUBWORKFLOW TO INITIALISE PIPELINE
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
*/

workflow PIPELINE_INITIALISATION {

    take:
    version           // boolean: print the version and exit
    validate_params   // boolean: validate params against nextflow_schema.json
    input             // string: path to the samplesheet
    default_label_key // string: label column used when the samplesheet gives none
    outdir            // string: the results folder (params JSON goes to pipeline_info/)
    run_params        // map: every param of the run, recorded in pipeline_info/

    main:

    //
    // Print the version and exit
    //
    if (version) {
        log.info("${workflow.manifest.name} ${getWorkflowVersion()}")
        System.exit(0)
    }

    //
    // Validate parameters against nextflow_schema.json and print a summary of non-default ones
    //
    if (validate_params) {
        validateParameters()
    }
    log.info(paramsSummaryLog(workflow))

    //
    // Record the parameters of this run next to its results
    //
    if (outdir) {
        dumpParametersToJSON(outdir, run_params)
    }

    //
    // Samplesheet: nf-schema checks columns, types, id pattern and unique sample ids against
    // assets/schema_input.json; relative `counts` paths then resolve against the samplesheet's
    // own folder (like `garage run`), and a missing file stops the run before any task starts.
    //
    def samplesheet = file(input, checkIfExists: true)
    def rows = samplesheetToList(input, "${projectDir}/assets/schema_input.json")
    validateSampleIds(rows.collect { row -> row[0] })

    ch_samplesheet = channel
        .fromList(rows)
        .map { row ->
            def sample    = row[0]
            def counts    = row[1]
            def label_key = row[2]
            def layer     = row[3]
            def meta = [
                id: sample,
                label_key: label_key ?: default_label_key,
                layer: layer ?: null
            ]
            [meta, resolveCountsPath(counts, samplesheet, sample)]
        }

    emit:
    samplesheet = ch_samplesheet // channel: [ val(meta), path(counts) ]
}

/*
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
    SUBWORKFLOW FOR PIPELINE COMPLETION
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
*/

workflow PIPELINE_COMPLETION {

    take:
    outdir          // string: the results folder
    multiqc_report  // channel: [ path(multiqc_report.html) ]

    main:
    def summary_params = paramsSummaryMap(workflow)
    def report_list = []
    multiqc_report.subscribe { reports -> report_list = reports }

    workflow.onComplete {
        completionSummary(summary_params, outdir, report_list)
    }

    workflow.onError {
        log.error("GARAGE failed: ${workflow.errorMessage}. See .nextflow.log and the failing task's .command.err (its work folder is printed above).")
    }
}

/*
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
    FUNCTIONS
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
*/

//
// Duplicate sample ids would overwrite each other's outputs (nf-schema's uniqueEntries
// catches them too; this keeps the check when validation is switched off)
//
def validateSampleIds(sample_ids) {
    def dups = sample_ids.countBy { id -> id }.findAll { _id, n -> n > 1 }.keySet()
    if (dups) {
        error("Samplesheet: duplicate sample id(s) ${dups.sort().join(', ')}. Give every row a unique `sample`.")
    }
}

//
// A `counts` entry may be absolute, a URL (s3://, gs://, https://) or relative to the samplesheet
//
def resolveCountsPath(counts, samplesheet, sample) {
    def text = counts.toString()
    def path = (text.startsWith('/') || text.contains('://'))
        ? file(text)
        : samplesheet.parent.resolve(text)
    if (!path.exists()) {
        error("Samplesheet: counts `${text}` for sample `${sample}` does not exist (relative paths resolve against the samplesheet's folder ${samplesheet.parent}).")
    }
    return path
}

//
// params -> OUTDIR/pipeline_info/params_<timestamp>.json (works for local and cloud outdirs)
//
def dumpParametersToJSON(outdir, run_params) {
    def timestamp = new java.util.Date().format('yyyy-MM-dd_HH-mm-ss')
    def filename = "params_${timestamp}.json"
    def temp_pf = new File(workflow.launchDir.toString(), ".${filename}")
    def jsonStr = groovy.json.JsonOutput.toJson(run_params)
    temp_pf.text = groovy.json.JsonOutput.prettyPrint(jsonStr)
    nextflow.extension.FilesEx.copyTo(temp_pf.toPath(), "${outdir}/pipeline_info/params_${timestamp}.json")
    temp_pf.delete()
}

//
// Pipeline version string, e.g. v0.1.0-g1234567
//
def getWorkflowVersion() {
    def version_string = "" as String
    if (workflow.manifest.version) {
        def prefix_v = workflow.manifest.version[0] != 'v' ? 'v' : ''
        version_string += "${prefix_v}${workflow.manifest.version}"
    }
    if (workflow.commitId) {
        def git_shortsha = workflow.commitId.substring(0, 7)
        version_string += "-g${git_shortsha}"
    }
    return version_string
}

//
// `versions` topic tuples [process, tool, version] -> MultiQC software-versions YAML
//
def softwareVersionsToYAML(ch_versions) {
    return ch_versions
        .unique()
        .map { process, tool, version -> [process.tokenize(':').last(), tool, version] }
        .groupTuple()
        .map { process, tools, versions ->
            def lines = [tools, versions].transpose().collect { pair -> "    ${pair[0]}: ${pair[1]}" }
            "${process}:\n${lines.join('\n')}"
        }
        .mix(channel.of(workflowVersionToYAML()))
}

def workflowVersionToYAML() {
    return """
    Workflow:
        ${workflow.manifest.name}: ${getWorkflowVersion()}
        Nextflow: ${workflow.nextflow.version}
    """.stripIndent().trim()
}

//
// One summary block at the end of the run
//
def completionSummary(summary_params, outdir, report_list) {
    def status = workflow.success ? 'completed successfully' : 'completed with errors'
    def lines = [
        "-${'-' * 60}-",
        "GARAGE ${getWorkflowVersion()} ${status}",
        "  run name : ${workflow.runName}",
        "  duration : ${workflow.duration}",
        "  results  : ${outdir}",
        "  succeeded: ${workflow.stats.succeededCount} task(s), failed: ${workflow.stats.failedCount}, ignored: ${workflow.stats.ignoredCount}",
    ]
    if (report_list) {
        lines << "  report   : ${report_list.collect { r -> r.toString() }.join(', ')}"
    }
    if (summary_params?.containsKey('Core Nextflow options')) {
        lines << "  profile  : ${workflow.profile}"
    }
    lines << "-${'-' * 60}-"
    if (workflow.success) {
        log.info(lines.join('\n'))
    } else {
        log.error(lines.join('\n'))
    }
}
