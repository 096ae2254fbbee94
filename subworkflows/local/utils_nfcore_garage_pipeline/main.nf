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
    use_gpu           // boolean: params.use_gpu (set by -profile gpu)
    input             // string: path to the samplesheet
    default_label_key // string: label column used when the samplesheet gives none
    outdir            // string: the results folder (params JSON goes to pipeline_info/)
    run_params        // map: every param of the run, recorded in pipeline_info/
    methods_template  // string: --multiqc_methods_description, or null for the bundled one

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
    warnIfNoContainerEngine()

    //
    // -profile gpu is the one GPU switch: --use_gpu alone would pick the CUDA image and
    // --device cuda without the GPU request, the container's GPU options or --gpu_max_forks
    //
    def gpu_error = gpuSwitchError(use_gpu, workflow.profile)
    if (gpu_error) {
        error(gpu_error)
    }

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

    // Each row is [meta, counts]: the schema's "meta" keys build the map (an empty cell is
    // [] there); optional keys are normalised to a string or null here.
    validateSampleIds(rows.collect { row -> row[0].id })

    ch_samplesheet = channel
        .fromList(rows)
        .map { row ->
            def sheet_meta = row[0]
            def counts     = row[1]
            def meta = [
                id: sheet_meta.id.toString(),
                label_key: optionalColumn(sheet_meta.label_key) ?: default_label_key,
                layer: optionalColumn(sheet_meta.layer),
                condition_key: optionalColumn(sheet_meta.condition_key)
            ]
            [meta, resolveCountsPath(counts, samplesheet, meta.id)]
        }

    //
    // MultiQC custom content: the parameter summary and the methods description with citations
    //
    def methods_file = methods_template
        ? file(methods_template, checkIfExists: true)
        : file("${projectDir}/assets/methods_description_template.yml", checkIfExists: true)
    ch_params_summary = channel.value(paramsSummaryMultiqc(paramsSummaryMap(workflow, parameters_schema: 'nextflow_schema.json'), workflow.manifest.name))
        .collectFile(name: 'garage_params_summary_mqc.yaml')
    ch_methods = channel.value(methodsDescriptionText(methods_file.text, methodsDescriptionFields()))
        .collectFile(name: 'garage_methods_description_mqc.yaml')

    emit:
    samplesheet   = ch_samplesheet                 // channel: [ val(meta), path(counts) ]
    multiqc_files = ch_params_summary.mix(ch_methods) // channel: path(*_mqc.yaml)
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
    sample_status   // channel: [ list of status maps ] (one item; see sampleStatusRows)

    main:
    def summary_params = paramsSummaryMap(workflow)
    def report_list = []
    def status_rows = []
    multiqc_report.subscribe { reports -> report_list = reports }
    sample_status.subscribe { rows -> status_rows = rows }

    //
    // Dropping bad samples keeps a batch going; dropping all of them is a setup problem (an
    // unknown flag in --<stage>_args, no GPU under -profile gpu): once the report exists, fail.
    //
    multiqc_report
        .map { reports -> [reports: reports] }
        .combine(sample_status.map { rows -> [rows: rows] })
        .map { _reports, status -> failIfNoSampleCompleted(status.rows, outdir) }

    workflow.onComplete {
        completionSummary(summary_params, outdir, report_list, status_rows)
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
def completionSummary(summary_params, outdir, report_list, status_rows) {
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
    if (status_rows) {
        def failed = status_rows.findAll { row -> row.status != 'ok' }
        lines << "  samples  : ${status_rows.size() - failed.size()} of ${status_rows.size()} completed (${outdir}/pipeline_info/garage_sample_status.tsv)"
        failed.each { row -> lines << "  dropped  : ${row.sample} at ${row.stage} (exit ${row.exit_status}, ${row.reason}): ${row.message}" }
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

//
// An optional samplesheet cell: nf-schema gives [] for an empty one; values become strings
//
def optionalColumn(value) {
    if (value == null || value == [] || value.toString().trim() == '') {
        return null
    }
    return value.toString()
}

//
// params.use_gpu is set by -profile gpu, which also adds what the GPU tasks need (accelerator,
// --gpus all / --nv, maxForks); null when consistent, else the error to stop the run with
//
def gpuSwitchError(use_gpu, profile) {
    def profiles = (profile ?: '').toString().tokenize(',').collect { name -> name.trim() }
    if (use_gpu && !profiles.contains('gpu')) {
        return "--use_gpu is set without -profile gpu (profiles: ${profile ?: 'none'}). Use -profile <docker/singularity/...>,gpu instead: it also requests the GPU and exposes it to the container.".toString()
    }
    return null
}

//
// Without -profile docker/singularity/apptainer/podman the tasks need `garage` on PATH
//
def warnIfNoContainerEngine() {
    if (!workflow.containerEngine) {
        log.warn("No container engine is enabled (-profile docker, singularity, apptainer or podman): every task will run `garage` and `multiqc` from your PATH.")
    }
}

/*
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
    RUN SUMMARY: which samples completed, which were dropped and why
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
    conf/base.config's errorStrategy writes one record per task that exited 2 (bad input), or
    3 at its last attempt (did not fit the resource limits), to
    workflow.workDir/garage-failed/<runName>/<PROCESS>.<sample>.tsv:
        sample <TAB> process <TAB> exit status <TAB> the CLI's one-line error <TAB> work dir
        <TAB> reason ('input' or 'resources')
    The workflow compares the samples of the samplesheet with the samples each stage
    emitted and takes the error and its reason from those records.
*/

//
// The failure records of this run (an empty list when nothing failed)
//
def readFailureRecords() {
    def failed_dir = workflow.workDir.resolve('garage-failed').resolve(workflow.runName.toString())
    if (!failed_dir.exists()) {
        return []
    }
    def record_files = []
    failed_dir.eachFile { record_file -> record_files << record_file }
    return record_files
        .findAll { record_file -> record_file.name.endsWith('.tsv') }
        .collect { record_file -> parseFailureRecord(record_file.text) }
        .findAll { record -> record != null }
}

def parseFailureRecord(text) {
    def fields = text.readLines().find { line -> line.trim() }?.split('\t', -1)
    if (!fields || fields.size() < 4) {
        return null
    }
    def reason = fields.size() > 5 ? fields[5].trim() : (fields[2] == '2' ? 'input' : '')
    return [sample: fields[0], process: fields[1], exit_status: fields[2], message: fields[3], work_dir: fields.size() > 4 ? fields[4] : '', reason: reason]
}

//
// A failure record's reason -> the words of the run summary, the TSV and the report
//
def failureReasonText(reason) {
    def texts = [input: 'bad input', resources: 'did not fit the resource limits']
    return texts[reason?.toString()] ?: 'unknown'
}

//
// stage_ids: [stage, sample id] pairs ('input' for the samplesheet); failures: parseFailureRecord maps.
// One row per sample, sorted: status 'ok', or 'failed' with the first stage that has no output for
// it and the reason: 'bad input' (exit 2), 'did not fit the resource limits' (exit 3 at the last
// attempt) or 'unknown' (no record: see the message).
//
def sampleStatusRows(stage_ids, failures) {
    def stages = ['GARAGE_PREPROCESS', 'GARAGE_GAT', 'GARAGE_GAN', 'GARAGE_EVALUATE']
    def seen = stage_ids
        .groupBy { entry -> entry[0].toString() }
        .collectEntries { stage, entries -> [stage, entries.collect { entry -> entry[1].toString() }] }
    def samples = (seen['input'] ?: []).unique().sort()
    return samples.collect { sample ->
        def lost_at = stages.find { stage -> !(seen[stage] ?: []).contains(sample) }
        if (!lost_at) {
            return [sample: sample, status: 'ok', stage: '', exit_status: '', message: '', reason: '']
        }
        def record = failures.find { failure -> failure.sample == sample && failure.process == lost_at }
        def message = record
            ? record.message
            : "${lost_at} produced no output; see that task's .command.err (its work dir is in pipeline_info/execution_trace_*.txt)".toString()
        return [sample: sample, status: 'failed', stage: lost_at, exit_status: record ? record.exit_status.toString() : '', message: message, reason: failureReasonText(record?.reason)]
    }
}

def sampleStatusTsv(rows) {
    def lines = ['sample\tstatus\tstage\texit_status\tmessage\treason']
    rows.each { row ->
        lines << [row.sample, row.status, row.stage, row.exit_status, row.message, row.reason ?: '']
            .collect { value -> value.toString().replaceAll('[\\t\\r\\n]+', ' ') }
            .join('\t')
    }
    return lines.join('\n') + '\n'
}

//
// MultiQC custom content (a table section); every value is a JSON string, which YAML reads as-is
//
def sampleStatusMultiqc(rows) {
    def failed = rows.findAll { row -> row.status != 'ok' }
    def description = failed
        ? "${rows.size() - failed.size()} of ${rows.size()} samples completed. A stage that rejects a sample's input (exit status 2), or that still lacks memory or a GPU after its retries (exit status 3: did not fit the resource limits), drops only that sample; the error it printed and the reason are listed here and in pipeline_info/garage_sample_status.tsv."
        : "All ${rows.size()} samples completed every stage (pipeline_info/garage_sample_status.tsv)."
    def lines = [
        "id: 'garage-sample-status'",
        "section_name: 'Sample status'",
        "description: ${yamlString(description)}",
        "plot_type: 'table'",
        "pconfig:",
        "  id: 'garage-sample-status-table'",
        "  title: 'GARAGE: sample status'",
        "  col1_header: 'Sample'",
        "headers:",
        "  status:",
        "    title: 'Status'",
        "  stage:",
        "    title: 'Dropped at'",
        "  exit_status:",
        "    title: 'Exit status'",
        "  reason:",
        "    title: 'Reason'",
        "  message:",
        "    title: 'Error'",
        "data:",
    ]
    rows.each { row ->
        lines << "  ${yamlString(row.sample)}:".toString()
        ['status', 'stage', 'exit_status', 'reason', 'message'].each { key ->
            lines << "    ${key}: ${yamlString(row[key] ?: '')}".toString()
        }
    }
    return lines.join('\n') + '\n'
}

def yamlString(value) {
    return groovy.json.JsonOutput.toJson(value.toString())
}

def failIfNoSampleCompleted(rows, outdir) {
    if (rows && rows.every { row -> row.status != 'ok' }) {
        error("Every sample failed (first: ${rows[0].sample} at ${rows[0].stage}: ${rows[0].message}). A setting common to all samples is wrong; see ${outdir}/pipeline_info/garage_sample_status.tsv and the MultiQC report.")
    }
    return rows
}

def warnFailedSamples(rows) {
    rows.findAll { row -> row.status != 'ok' }.each { row ->
        log.warn("Sample '${row.sample}' was dropped at ${row.stage} (exit ${row.exit_status ?: '?'}, ${row.reason ?: 'unknown'}): ${row.message}")
    }
}

/*
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
    REPORT: parameter summary and methods description (MultiQC custom content)
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
*/

def htmlEscape(value) {
    return value.toString().replace('&', '&amp;').replace('<', '&lt;').replace('>', '&gt;').replace('"', '&quot;')
}

//
// summary_params: nf-schema's paramsSummaryMap (group -> [param: value]) -> an HTML section
//
def paramsSummaryMultiqc(summary_params, pipeline_name) {
    def html = []
    summary_params.each { group, group_params ->
        if (group_params) {
            html << "    <p><b>${htmlEscape(group)}</b></p>".toString()
            html << '    <dl class="dl-horizontal">'
            group_params.keySet().sort().each { name ->
                def value = group_params[name]
                def shown = (value == null || value.toString() == '') ? '<span class="text-muted">not set</span>' : "<samp>${htmlEscape(value)}</samp>"
                html << "        <dt>${htmlEscape(name)}</dt><dd>${shown}</dd>".toString()
            }
            html << '    </dl>'
        }
    }
    def name = pipeline_name.toString()
    def lines = [
        "id: 'garage-params-summary'",
        "section_name: ${yamlString(name + ' parameters')}",
        "description: 'Parameters of this run that differ from the pipeline defaults, with the core Nextflow options (collected when the run started).'",
        "section_href: ${yamlString('https://github.com/' + name)}",
        "plot_type: 'html'",
        "data: |",
    ] + (html ?: ['    <p>All parameters at their defaults.</p>'])
    return lines.join('\n') + '\n'
}

//
// Values filled into assets/methods_description_template.yml (${...} placeholders)
//
def methodsDescriptionFields() {
    def manifest = workflow.manifest
    def doi = manifest.doi ? manifest.doi.toString() : ''
    return [
        pipeline_name: manifest.name.toString(),
        pipeline_version: getWorkflowVersion(),
        nextflow_version: workflow.nextflow.version.toString(),
        command_line: htmlEscape(workflow.commandLine ?: ''),
        container_engine: workflow.containerEngine ? workflow.containerEngine.toString() : 'no container engine',
        doi_text: doi ? " (doi: <a href=\"https://doi.org/${doi.replace('https://doi.org/', '')}\">${doi.replace('https://doi.org/', '')}</a>)".toString() : '',
    ]
}

def methodsDescriptionText(template_text, fields) {
    def engine = new groovy.text.SimpleTemplateEngine()
    return engine.createTemplate(template_text.toString()).make(fields).toString()
}
