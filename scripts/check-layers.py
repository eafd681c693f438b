#!/usr/bin/env python3
"""Checks the shape of the Rust sources: the top-level modules must form layers, and no file
may be too long.

    scripts/check-layers.py [SRC_DIR] [--max-lines N]

SRC_DIR defaults to the repository's src/. Every `.rs` file under it is mapped to its module
path (src/lib.rs is the crate root, src/a.rs and src/a/mod.rs are `a`, src/a/b.rs is `a::b`),
and every path it writes that starts with `crate::` (or `$crate::`, `super::`, `self::`) is
resolved to a module of the crate: `use` declarations, grouped ones included
(`use crate::{a, b::{c, d}}`), and paths written inline (`crate::store::clock_now()`). Comments
(doc comments and their intra-doc links included) and string literals are ignored; code in
`#[cfg(test)]` modules counts like any other. Each reference is reduced to an edge between
top-level modules (`a::b` -> `a`); references inside one top-level module, references from the
crate root, and references to items of the crate root are left out.

The check fails (exit status 1) when the top-level modules form a cycle, printed as
`a -> b -> c -> a` with the references that make it, or when a file has more than N lines
(default 400; the project's rule is "no Rust file over about 400 lines"). Otherwise it prints
the modules from the bottom layer up, each with the modules it uses. Python 3 standard library
only.
"""

import argparse
import collections
import pathlib
import sys

DEFAULT_MAX_LINES = 400


# --- Tokens -----------------------------------------------------------------------------------

def tokens(text):
    """The identifiers and punctuation of Rust source `text` as (token, line) pairs, without
    comments, string, byte-string and character literals, lifetimes and numbers."""
    i, line, n = 0, 1, len(text)
    out = []

    def skip_string(j):
        # j is just after the opening quote; returns the index just after the closing one.
        nonlocal line
        while j < n:
            c = text[j]
            if c == "\\":
                j += 2
                continue
            if c == "\n":
                line += 1
            if c == '"':
                return j + 1
            j += 1
        return n

    def skip_raw_string(j):
        # j is at the `r`; returns the index just after the closing `"###`.
        nonlocal line
        j += 1
        hashes = 0
        while j < n and text[j] == "#":
            hashes += 1
            j += 1
        j += 1  # the opening quote
        closing = '"' + "#" * hashes
        end = text.find(closing, j)
        end = n if end < 0 else end + len(closing)
        line += text.count("\n", j, end)
        return end

    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
        elif c.isspace():
            i += 1
        elif text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    if text[i] == "\n":
                        line += 1
                    i += 1
        elif c == '"':
            i = skip_string(i + 1)
        elif c in "bc" and text.startswith('"', i + 1):
            i = skip_string(i + 2)
        elif c == "b" and text.startswith("'", i + 1):
            i = skip_char(text, i + 1)
        elif c in "bc" and text.startswith("r", i + 1) and raw_string_at(text, i + 1):
            i = skip_raw_string(i + 1)
        elif c == "r" and raw_string_at(text, i):
            i = skip_raw_string(i)
        elif c == "r" and text.startswith("#", i + 1) and i + 2 < n and is_ident_start(text[i + 2]):
            i += 2  # a raw identifier: r#name is name
        elif c == "'":
            i = skip_char(text, i)
        elif is_ident_start(c):
            j = i + 1
            while j < n and is_ident_char(text[j]):
                j += 1
            out.append((text[i:j], line))
            i = j
        elif c.isdigit():
            j = i + 1
            while j < n and (is_ident_char(text[j]) or (text[j] == "." and j + 1 < n and text[j + 1].isdigit())):
                j += 1
            i = j
        elif text.startswith("::", i):
            out.append(("::", line))
            i += 2
        else:
            out.append((c, line))
            i += 1
    return out


def is_ident_start(c):
    return c == "_" or c.isalpha()


def is_ident_char(c):
    return c == "_" or c.isalnum()


def raw_string_at(text, i):
    """Whether a raw string literal (r"...", r#"..."#) starts at text[i] == 'r'."""
    j = i + 1
    while j < len(text) and text[j] == "#":
        j += 1
    return j < len(text) and text[j] == '"'


def skip_char(text, i):
    """text[i] is a quote: skips a character literal ('x', '\\n', '\\u{..}'), or only the quote
    of a lifetime ('a, 'static), whose name then reads as an identifier (never a path)."""
    if text.startswith("\\", i + 1):
        end = text.find("'", i + 3)
        return len(text) if end < 0 else end + 1
    if i + 2 < len(text) and text[i + 2] == "'":
        return i + 3
    return i + 1


# --- Paths ------------------------------------------------------------------------------------

def parse_use_tree(toks, i, prefix, paths):
    """Parses one use tree starting at toks[i] under `prefix`, appending each (path, line) it
    names to `paths`; returns the index after the tree."""
    segments = list(prefix)
    line = toks[i][1] if i < len(toks) else 0
    if i < len(toks) and toks[i][0] == "::":  # `use ::std::...`: an extern crate
        i += 1
    while i < len(toks):
        tok, line = toks[i]
        if tok == "{":
            i += 1
            while i < len(toks) and toks[i][0] != "}":
                after = parse_use_tree(toks, i, segments, paths)
                i = after if after > i else i + 1  # always move on, whatever the tree holds
                if i < len(toks) and toks[i][0] == ",":
                    i += 1
            return i + 1
        if tok == "*":
            paths.append((segments, line))
            return i + 1
        if tok == "$" and i + 1 < len(toks) and toks[i + 1][0] == "crate":
            i += 1
            continue
        if not is_ident_start(tok[0]):
            break
        segments = segments + [tok]
        i += 1
        if i < len(toks) and toks[i][0] == "::":
            i += 1
            continue
        break
    if segments:
        paths.append((segments, line))
    if i < len(toks) and toks[i][0] == "as":
        i += 2
    return i


def references(text, module):
    """The crate-relative paths that Rust source `text` of module `module` (a list of
    segments, [] for the crate root) refers to, as (absolute path, line) pairs."""
    toks = tokens(text)
    found = []
    inline = []  # (name, brace depth) of the inline `mod name { ... }` blocks we are in
    depth = 0
    i = 0
    while i < len(toks):
        tok = toks[i][0]
        current = module + [name for name, _ in inline]
        if tok == "{":
            depth += 1
        elif tok == "}":
            depth -= 1
            if inline and inline[-1][1] == depth:
                inline.pop()
        elif tok == "mod" and i + 2 < len(toks) and toks[i + 2][0] == "{":
            inline.append((toks[i + 1][0], depth))
            depth += 1
            i += 3
            continue
        elif tok == "use":
            paths = []
            i = parse_use_tree(toks, i + 1, [], paths)
            for segments, line in paths:
                resolved = resolve(segments, current)
                if resolved is not None:
                    found.append((resolved, line))
            continue
        elif tok in ("crate", "super", "self") and i + 1 < len(toks) and toks[i + 1][0] == "::":
            previous = toks[i - 1][0] if i else ""
            if previous != "::":  # not the middle of a longer path
                segments, line = [], toks[i][1]
                j = i
                while j < len(toks) and is_ident_start(toks[j][0][0]):
                    segments.append(toks[j][0])
                    if j + 1 < len(toks) and toks[j + 1][0] == "::":
                        j += 2
                    else:
                        j += 1
                        break
                resolved = resolve(segments, current)
                if resolved is not None:
                    found.append((resolved, line))
                i = j
                continue
        i += 1
    return found


def resolve(segments, current):
    """The absolute module path of a path written in module `current`, or None if it does not
    start in this crate (an extern crate, a name imported or defined in scope)."""
    if not segments:
        return None
    head = segments[0]
    if head == "crate":
        return segments[1:]
    if head == "self":
        return current + segments[1:]
    if head == "super":
        base = list(current)
        k = 0
        while k < len(segments) and segments[k] == "super":
            if not base:
                return None
            base.pop()
            k += 1
        return base + segments[k:]
    return None


# --- Modules ----------------------------------------------------------------------------------

def module_path(relative):
    """The module path of a file, given its path relative to src/ (a PurePath)."""
    parts = list(relative.parts)
    parts[-1] = parts[-1][: -len(".rs")]
    if parts in (["lib"], ["main"]):
        return []
    if parts[-1] == "mod":
        parts.pop()
    return parts


def rust_files(src):
    return sorted(p for p in src.rglob("*.rs") if p.is_file())


def module_graph(src):
    """Top-level module -> {used top-level module: (file, line) of the first reference}."""
    files = [(path, path.relative_to(src)) for path in rust_files(src)]
    crates_of_their_own = [rel for _, rel in files if rel.parts[0] == "bin"]
    modules = {}
    for path, rel in files:
        if rel in crates_of_their_own:
            continue
        modules[path] = module_path(rel)
    top_level = {m[0] for m in modules.values() if m}
    graph = {name: {} for name in top_level}
    for path, module in modules.items():
        if not module:
            continue  # the crate root may use every module
        text = path.read_text(encoding="utf-8", errors="replace")
        for target, line in references(text, module):
            if not target or target[0] not in top_level or target[0] == module[0]:
                continue
            graph[module[0]].setdefault(target[0], (path, line))
    return graph


def strongly_connected(graph):
    """The strongly connected components of `graph` (Tarjan), each a sorted list."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []
    counter = [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            components.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph) + 100))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def shortest_cycle(graph, start, members):
    """The shortest cycle from `start` back to it inside `members`, as a list of nodes."""
    previous = {start: None}
    queue = collections.deque([start])
    while queue:
        node = queue.popleft()
        for target in sorted(graph[node]):
            if target not in members:
                continue
            if target == start:
                path = [node]
                while previous[path[-1]] is not None:
                    path.append(previous[path[-1]])
                return list(reversed(path)) + [start]
            if target not in previous:
                previous[target] = node
                queue.append(target)
    return [start, start]


def bottom_up(graph):
    """The modules of an acyclic graph, each after every module it uses (ties by name)."""
    placed, order = set(), []
    remaining = set(graph)
    while remaining:
        ready = sorted(m for m in remaining if set(graph[m]) <= placed)
        order.extend(ready)
        placed.update(ready)
        remaining.difference_update(ready)
    return order


def long_files(src, max_lines):
    found = []
    for path in rust_files(src):
        count = len(path.read_text(encoding="utf-8", errors="replace").splitlines())
        if count > max_lines:
            found.append((path, count))
    return found


def main(argv=None):
    root = pathlib.Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description="Checks that the top-level Rust modules form layers "
                                     "(no cycle) and that no Rust file is too long.")
    parser.add_argument("src", nargs="?", default=str(root / "src"), help="the crate's src directory")
    parser.add_argument("--max-lines", type=int, default=DEFAULT_MAX_LINES,
                        help=f"longest allowed file, in lines (default {DEFAULT_MAX_LINES})")
    args = parser.parse_args(argv)
    src = pathlib.Path(args.src)
    if not src.is_dir():
        print(f"check-layers: {src} is not a directory", file=sys.stderr)
        return 2

    def shown(path):
        try:
            return str(path.relative_to(src.parent))
        except ValueError:
            return str(path)

    failed = False
    graph = module_graph(src)
    cycles = [c for c in strongly_connected(graph) if len(c) > 1]
    if cycles:
        failed = True
        print("layers: FAIL: the top-level modules form a cycle")
        for members in cycles:
            cycle = shortest_cycle(graph, members[0], set(members))
            print(" -> ".join(cycle))
            print(f"  modules caught in it: {', '.join(members)}")
            print("  references between them (the first of each):")
            for source in members:
                for target in sorted(t for t in graph[source] if t in members):
                    path, line = graph[source][target]
                    print(f"    {source} -> {target}  ({shown(path)}:{line})")
    else:
        print(f"layers: ok, {len(graph)} top-level modules, from the bottom up:")
        for module in bottom_up(graph):
            used = ", ".join(sorted(graph[module])) or "(nothing)"
            print(f"{module} -> {used}")

    too_long = long_files(src, args.max_lines)
    if too_long:
        failed = True
        print(f"lines: FAIL: {len(too_long)} file(s) over {args.max_lines} lines")
        for path, count in too_long:
            print(f"{shown(path)}: {count} lines")
    else:
        print(f"lines: ok, no file over {args.max_lines} lines")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
