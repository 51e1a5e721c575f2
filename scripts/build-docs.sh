#!/usr/bin/env bash
# Builds the documentation with the toolchain's own tools (no plugin dependency): the compiler's symbol graphs for
# every library module, then `docc convert` for the umbrella (Sources/Attention/Attention.docc, with the articles)
# and the core module (Sources/AttentionCore/AttentionCore.docc). Fails when a public symbol has no documentation
# comment, when the public surface differs from docs/public-api.txt (scripts/check-docs.py), or when docc warns
# (an unresolved or ambiguous link).
#
#   scripts/build-docs.sh                    # archives in .build-docs/Attention.doccarchive, AttentionCore.doccarchive
#   scripts/build-docs.sh --update-surface   # after an intended API change: rewrite docs/public-api.txt
#
# To browse an archive: `docc preview Sources/Attention/Attention.docc --additional-symbol-graph-dir
# .build-docs/graphs-Attention`, or serve the archive's directory from any static web server.
set -euo pipefail
cd "$(dirname "$0")/.."
out=.build-docs
update=""
[[ "${1:-}" == "--update-surface" ]] && update="--update"
docc=$(command -v docc || echo "$(dirname "$(readlink -f "$(command -v swift)")")/docc")

# Not emptied between runs: an incremental build re-emits only the graphs of the modules it recompiles. The
# umbrella module's graph carries the core's symbols it re-exports, but a change to the core alone (a new symbol, a
# doc comment) does not always recompile the umbrella, which left its graph stale; its one small file is recompiled
# every run.
graphs="$PWD/$out/symbol-graphs"
mkdir -p "$graphs"
rm -rf "$out"/*/debug/Attention.build
swift build --build-path "$out" --target Attention \
    -Xswiftc -emit-symbol-graph -Xswiftc -emit-symbol-graph-dir -Xswiftc "$graphs"
python3 scripts/check-docs.py "$graphs" docs/public-api.txt $update

for module in Attention AttentionCore; do
    moduleGraphs="$out/graphs-$module"
    rm -rf "$moduleGraphs" && mkdir -p "$moduleGraphs"
    cp "$graphs/$module"@*.symbols.json "$moduleGraphs"/ 2>/dev/null || true  # extensions of other modules
    cp "$graphs/$module".symbols.json "$moduleGraphs"/
    rm -rf "$out/$module.doccarchive"
    "$docc" convert "Sources/$module/$module.docc" --additional-symbol-graph-dir "$moduleGraphs" \
        --output-path "$out/$module.doccarchive" --fallback-display-name "$module" \
        --fallback-bundle-identifier "org.swift-attention.$module" --warnings-as-errors
    echo "built $out/$module.doccarchive"
done
