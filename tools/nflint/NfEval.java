import java.io.IOException;
import java.net.URI;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;

import groovy.json.JsonOutput;
import groovy.lang.Binding;
import groovy.lang.GroovyShell;
import nextflow.config.ast.ConfigAssignNode;
import nextflow.config.ast.ConfigBlockNode;
import nextflow.config.ast.ConfigIncludeNode;
import nextflow.config.ast.ConfigNode;
import nextflow.config.ast.ConfigStatement;
import nextflow.lsp.file.FileCache;
import nextflow.lsp.services.ErrorReportingMode;
import nextflow.lsp.services.LanguageServerConfiguration;
import nextflow.lsp.services.config.ConfigAstCache;
import org.codehaus.groovy.ast.expr.ClosureExpression;
import org.codehaus.groovy.ast.expr.ConstantExpression;
import org.codehaus.groovy.ast.expr.Expression;

/**
 * Two helpers for tests/python/test_pipeline.py, built on the Nextflow language server jar
 * (the same one NfLint uses) and the Groovy runtime inside it:
 *
 *   NfEval config FILE      parse a Nextflow config file with the language server's config
 *                           parser and print every setting as JSON: its scope path (profiles,
 *                           process selectors, names), line, whether it is a closure, and the
 *                           exact source text of its value as the parser delimits it.
 *   NfEval groovy           evaluate the Groovy script read from stdin with a plain
 *                           GroovyShell and print the result as JSON.
 *
 * With both, a test takes a closure exactly as the parser reads it from the config (or a
 * function from a .nf file) and runs it with the Groovy runtime, instead of re-implementing
 * it. What neither can show: Nextflow's own runtime objects (TaskConfig, Session); the test
 * passes plain maps with the properties the closures read.
 *
 * Exit code: 0 ok, 1 parse or evaluation error (message on stderr), 2 usage.
 */
public final class NfEval {

    public static void main(String[] argv) throws IOException {
        if (argv.length == 2 && argv[0].equals("config")) {
            System.exit(dumpConfig(Paths.get(argv[1]).toAbsolutePath().normalize()));
        }
        if (argv.length == 1 && argv[0].equals("groovy")) {
            String script = new String(System.in.readAllBytes(), StandardCharsets.UTF_8);
            try {
                Object result = new GroovyShell(new Binding()).evaluate(script, "NfEvalScript.groovy");
                System.out.println(JsonOutput.toJson(result));
                System.exit(0);
            } catch (Throwable e) {
                System.err.println("NfEval: " + e.getClass().getName() + ": " + e.getMessage());
                System.exit(1);
            }
        }
        System.err.println("usage: NfEval config FILE | NfEval groovy < script.groovy");
        System.exit(2);
    }

    static int dumpConfig(Path file) throws IOException {
        URI uri = file.toUri();
        FileCache fileCache = new FileCache();
        fileCache.setContents(uri, Files.readString(file));
        LanguageServerConfiguration defaults = LanguageServerConfiguration.defaults();
        LanguageServerConfiguration config = new LanguageServerConfiguration(
                defaults.dagDirection(), defaults.dagVerbose(), ErrorReportingMode.WARNINGS,
                defaults.excludePatterns(), defaults.extendedCompletion(), defaults.harshilAlignment(),
                defaults.maheshForm(), defaults.maxCompletionItems(), defaults.pluginRegistryUrl(),
                defaults.sortDeclarations(), defaults.typeChecking());
        ConfigAstCache cache = new ConfigAstCache();
        cache.initialize(config, new NfLint.OfflinePluginSpecCache());
        cache.update(Set.of(uri), fileCache);
        ConfigNode node = cache.getConfigNode(uri);
        if (node == null || cache.hasSyntaxErrors(uri)) {
            System.err.println("NfEval: " + file + " does not parse (run tools/nflint/check.sh)");
            return 1;
        }
        List<Map<String, Object>> out = new ArrayList<>();
        walk(cache, node.getConfigStatements(), new ArrayList<>(), out);
        System.out.println(JsonOutput.prettyPrint(JsonOutput.toJson(out)));
        return 0;
    }

    static void walk(ConfigAstCache cache, List<ConfigStatement> statements, List<String> scope,
                     List<Map<String, Object>> out) {
        for (ConfigStatement st : statements) {
            if (st instanceof ConfigBlockNode block) {
                List<String> inner = new ArrayList<>(scope);
                inner.add(block.kind != null ? block.kind + ":" + block.name : block.name);
                walk(cache, block.statements, inner, out);
            } else if (st instanceof ConfigAssignNode assign) {
                List<String> path = new ArrayList<>(scope);
                path.addAll(assign.names);
                Expression value = assign.value;
                Map<String, Object> entry = new LinkedHashMap<>();
                entry.put("path", path);
                entry.put("line", value.getLineNumber());
                entry.put("closure", value instanceof ClosureExpression);
                entry.put("source", cache.getSourceText(value));
                if (value instanceof ConstantExpression constant) {
                    entry.put("value", constant.getValue());
                }
                out.add(entry);
            } else if (st instanceof ConfigIncludeNode include) {
                Map<String, Object> entry = new LinkedHashMap<>();
                entry.put("path", new ArrayList<>(scope));
                entry.put("include", cache.getSourceText(include.source));
                out.add(entry);
            }
        }
    }
}
