#!/usr/bin/env python3
"""Checks the public surface recorded in symbol graphs (scripts/build-docs.sh makes them).

Usage: check-docs.py GRAPH_DIR SURFACE_FILE [--update]

- Every public symbol declared in Sources/ must have a documentation comment; each one without is listed and the
  check fails.
- The surface (one line per public symbol: module, kind, declaration) must equal SURFACE_FILE, so that a change to
  the public API shows in review as a change to that file. `--update` rewrites the file instead of comparing.
Symbols the compiler synthesizes (Equatable's !=, OptionSet's methods) have no source location and are skipped.
"""
import difflib
import glob
import json
import os
import sys


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__)
        return 2
    graph_dir, surface_file = sys.argv[1], sys.argv[2]
    update = "--update" in sys.argv[3:]
    seen = {}
    undocumented = []
    for path in sorted(glob.glob(os.path.join(graph_dir, "*.symbols.json"))):
        graph = json.load(open(path))
        graph_module = graph["module"]["name"]
        for symbol in graph["symbols"]:
            uri = symbol.get("location", {}).get("uri", "")
            if "/Sources/" not in uri:
                continue
            source = uri.split("/Sources/", 1)[1]
            module = source.split("/", 1)[0]
            if module != graph_module:
                continue  # re-exported into another module's graph (the umbrella's): recorded under its own
            declaration = "".join(f["spelling"] for f in symbol.get("declarationFragments", []))
            declaration = " ".join(declaration.split())
            name = ".".join(symbol["pathComponents"])
            kind = symbol["kind"]["identifier"].removeprefix("swift.")
            key = (module, name, kind, declaration)
            if key in seen:
                continue
            line = symbol["location"]["position"]["line"] + 1
            seen[key] = f"{source}:{line}"
            if "docComment" not in symbol:
                undocumented.append(f"{source}:{line}: {kind} {name}")
    surface = [f"{m} {k} {n} | {d}" for (m, n, k, d) in sorted(seen, key=lambda t: (t[0], t[1], t[3]))]
    failed = False
    if undocumented:
        print(f"{len(undocumented)} public symbol(s) without a documentation comment:")
        for entry in undocumented:
            print("  " + entry)
        failed = True
    text = "\n".join(surface) + "\n"
    if update:
        with open(surface_file, "w") as f:
            f.write(text)
        print(f"wrote {len(surface)} public symbols to {surface_file}")
    else:
        recorded = open(surface_file).read() if os.path.exists(surface_file) else ""
        if recorded != text:
            print(f"the public surface differs from {surface_file} (run scripts/build-docs.sh --update-surface):")
            sys.stdout.writelines(
                difflib.unified_diff(
                    recorded.splitlines(True), text.splitlines(True), surface_file, "built"))
            failed = True
        else:
            print(f"public surface: {len(surface)} symbols, as recorded in {surface_file}; every one documented")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
