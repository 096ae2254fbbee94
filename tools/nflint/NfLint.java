import java.io.IOException;
import java.net.URI;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Set;
import java.util.regex.Pattern;
import java.util.stream.Collectors;
import java.util.stream.Stream;

import nextflow.lsp.ast.ASTNodeCache;
import nextflow.lsp.file.FileCache;
import nextflow.lsp.services.ErrorReportingMode;
import nextflow.lsp.services.LanguageServerConfiguration;
import nextflow.lsp.services.config.ConfigAstCache;
import nextflow.lsp.services.script.ScriptAstCache;
import nextflow.lsp.spec.PluginSpec;
import nextflow.lsp.spec.PluginSpecCache;
import org.codehaus.groovy.control.messages.WarningMessage;
import org.codehaus.groovy.syntax.CSTNode;
import org.codehaus.groovy.syntax.SyntaxException;

/**
 * Offline Nextflow lint: parse every .nf and .config file under a folder with the
 * Nextflow language server's script and config AST caches (the parser and the
 * semantic checks the language server runs in an editor) and print every error
 * and warning as PATH:LINE:COL: severity: message.
 *
 * The plugin registry cannot be reached offline, so plugin lookups are stubbed
 * (no network call); the resulting "Plugin '...' does not exist" errors are
 * reported as "allowed" and do not fail the run, and so are warnings about the config
 * scope that only the plugin defines ("Unrecognized config option 'validation.*'").
 * Every other error fails; with --warnings-as-errors every other warning fails too.
 *
 * Usage: java -cp language-server-all.jar:BUILD NfLint [--warnings-as-errors] ROOT [FILE...]
 * Exit code: 0 clean, 1 errors (or warnings with --warnings-as-errors), 2 usage.
 */
public final class NfLint {

    /** The only error tolerated offline: nf-schema etc. cannot be resolved without the registry. */
    static final Pattern ALLOWED = Pattern.compile("^Plugin '[^']+' does not exist.*");

    /** Config scopes that only a plugin defines (nf-schema's `validation`): unknown offline. */
    static final Pattern ALLOWED_WARNING = Pattern.compile("^Unrecognized config option '(validation)(\\.[^']*)?'.*");

    /** A plugin cache that never touches the network. */
    static final class OfflinePluginSpecCache extends PluginSpecCache {
        OfflinePluginSpecCache() {
            super("http://127.0.0.1:9/");
        }

        @Override
        public PluginSpec get(String name, String version) {
            return null;
        }

        @Override
        public PluginSpec getCurrent(String name) {
            return null;
        }
    }

    static final Set<String> SKIP_DIRS = Set.of(".git", ".venv", "work", ".nextflow", "node_modules",
            "results", "build", ".nf-test", "__pycache__");

    public static void main(String[] argv) throws IOException {
        boolean warningsAsErrors = false;
        List<String> args = new ArrayList<>();
        for (String a : argv) {
            if (a.equals("--warnings-as-errors")) {
                warningsAsErrors = true;
            } else {
                args.add(a);
            }
        }
        if (args.isEmpty()) {
            System.err.println("usage: NfLint [--warnings-as-errors] ROOT [FILE...]");
            System.exit(2);
        }
        Path root = Paths.get(args.get(0)).toAbsolutePath().normalize();
        List<Path> files = new ArrayList<>();
        if (args.size() > 1) {
            for (String f : args.subList(1, args.size())) {
                files.add(Paths.get(f).toAbsolutePath().normalize());
            }
        } else {
            files = collect(root);
        }
        Set<URI> scripts = new LinkedHashSet<>();
        Set<URI> configs = new LinkedHashSet<>();
        FileCache fileCache = new FileCache();
        for (Path f : files) {
            URI uri = f.toUri();
            fileCache.setContents(uri, Files.readString(f));
            if (f.toString().endsWith(".nf")) {
                scripts.add(uri);
            } else if (f.toString().endsWith(".config")) {
                configs.add(uri);
            }
        }
        if (scripts.isEmpty() && configs.isEmpty()) {
            System.err.println("nflint: no .nf or .config files under " + root);
            System.exit(2);
        }

        LanguageServerConfiguration defaults = LanguageServerConfiguration.defaults();
        // same settings as an editor, but report everything down to warnings
        LanguageServerConfiguration config = new LanguageServerConfiguration(
                defaults.dagDirection(), defaults.dagVerbose(), ErrorReportingMode.WARNINGS,
                defaults.excludePatterns(), defaults.extendedCompletion(), defaults.harshilAlignment(),
                defaults.maheshForm(), defaults.maxCompletionItems(), defaults.pluginRegistryUrl(),
                defaults.sortDeclarations(), defaults.typeChecking());
        PluginSpecCache plugins = new OfflinePluginSpecCache();

        int[] counts = new int[3]; // errors, allowed, warnings
        if (!scripts.isEmpty()) {
            ScriptAstCache cache = new ScriptAstCache(root.toUri().toString());
            cache.initialize(config, plugins);
            cache.update(scripts, fileCache);
            report(cache, scripts, root, counts);
        }
        if (!configs.isEmpty()) {
            ConfigAstCache cache = new ConfigAstCache();
            cache.initialize(config, plugins);
            cache.update(configs, fileCache);
            report(cache, configs, root, counts);
        }
        System.out.printf("nflint: %d script(s), %d config(s): %d error(s), %d warning(s), %d allowed offline%n",
                scripts.size(), configs.size(), counts[0], counts[2], counts[1]);
        boolean fail = counts[0] > 0 || (warningsAsErrors && counts[2] > 0);
        System.exit(fail ? 1 : 0);
    }

    static List<Path> collect(Path root) throws IOException {
        try (Stream<Path> walk = Files.walk(root)) {
            return walk.filter(p -> {
                        for (Path part : root.relativize(p)) {
                            if (SKIP_DIRS.contains(part.toString())) {
                                return false;
                            }
                        }
                        String n = p.getFileName().toString();
                        return Files.isRegularFile(p) && (n.endsWith(".nf") || n.endsWith(".config"));
                    })
                    .sorted()
                    .collect(Collectors.toList());
        }
    }

    static void report(ASTNodeCache cache, Set<URI> uris, Path root, int[] counts) {
        List<URI> sorted = new ArrayList<>(uris);
        Collections.sort(sorted);
        for (URI uri : sorted) {
            String rel = root.relativize(Paths.get(uri)).toString();
            if (!cache.hasAST(uri) && !cache.hasErrors(uri)) {
                System.out.printf("%s:1:1: error: not parsed%n", rel);
                counts[0]++;
                continue;
            }
            List<SyntaxException> errors = cache.getErrors(uri);
            if (errors != null) {
                for (SyntaxException e : errors) {
                    String msg = e.getOriginalMessage();
                    boolean allowed = ALLOWED.matcher(msg).matches();
                    System.out.printf("%s:%d:%d: %s: %s%n", rel, e.getStartLine(), e.getStartColumn(),
                            allowed ? "allowed (offline)" : "error", msg);
                    counts[allowed ? 1 : 0]++;
                }
            }
            List<WarningMessage> warnings = cache.getWarnings(uri);
            if (warnings != null) {
                for (WarningMessage w : warnings) {
                    CSTNode ctx = w.getContext();
                    int line = ctx != null ? ctx.getStartLine() : 0;
                    int col = ctx != null ? ctx.getStartColumn() : 0;
                    boolean allowed = ALLOWED_WARNING.matcher(w.getMessage()).matches();
                    System.out.printf("%s:%d:%d: %s: %s%n", rel, line, col,
                            allowed ? "allowed warning (offline)" : "warning", w.getMessage());
                    counts[allowed ? 1 : 2]++;
                }
            }
        }
    }
}
