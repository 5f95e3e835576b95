#!/usr/bin/env python3
"""Lists import cycles between the files of each workspace crate.

A file's module imports another when it names it by path: `crate::a::b`,
`super::x`, `self::y` (in `use` items or inline), or glob-imports it
(`use super::*`). Each reference is mapped to the module file that defines
the item: the deepest module file the path reaches, and, when that file
only re-exports the name (`pub use m::{Name}`), the file it re-exports
from. A parent re-exporting its child's item and a child using its
parent's item is a cycle like any other. Cycles are the strongly connected
components of that graph with more than one file. Exits 1 when any crate
has a cycle, so CI or a reviewer can run it as a check.

    scripts/module-cycles.py            # every crate of the workspace
    scripts/module-cycles.py kv-server  # one crate
"""

import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CRATES = ["kv-alloc", "kv-contract", "kv-proto", "kv-engine", "kv-redis", "kv-server", "kv-client", "tests", "kv-bench", "kvctl"]


def modules(src):
    """Maps module path tuples to files under `src`."""
    found = {}
    for dirpath, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, f), src)
            parts = rel[:-3].split(os.sep)
            if parts[-1] in ("mod", "lib", "main"):
                parts = parts[:-1]
            found[tuple(parts)] = os.path.join(dirpath, f)
    return found


def strip_comments(text):
    """The code of a file: comments dropped, and its inline test module
    (`#[cfg(test)] mod tests { .. }`, by convention at the end) too, since
    a test module's `super::*` names its own file, not the parent."""
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    code = "\n".join(line.split("//")[0] for line in text.splitlines())
    m = re.search(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", code)
    return code[: m.start()] if m else code


def use_paths(text):
    """Every path a `use` item names, nested groups flattened."""
    out = []

    def flatten(prefix, tree):
        tree = tree.strip()
        if not tree:
            return
        if tree.startswith("{") and tree.endswith("}"):
            depth, item = 0, ""
            for ch in tree[1:-1] + ",":
                if ch == "{":
                    depth += 1
                elif ch == "}":
                    depth -= 1
                if ch == "," and depth == 0:
                    flatten(prefix, item)
                    item = ""
                else:
                    item += ch
            return
        head, sep, rest = tree.partition("::")
        if sep:
            flatten(prefix + [head.strip()], rest)
        else:
            name = tree.split(" as ")[0].strip()
            out.append(prefix + ([name] if name not in ("self", "*") else []))

    for m in re.finditer(r"\buse\s+([^;]+);", text):
        flatten([], " ".join(m.group(1).split()))
    return out


def paths(text):
    """Every `crate::`, `super::` or `self::` path, with `use` groups
    expanded one level deep (enough for this code base's imports)."""
    out = []
    for m in re.finditer(r"\b(crate|super|self)((?:::\w+)*)(::\{([^{}]*(?:\{[^{}]*\}[^{}]*)*)\})?", text):
        head = [m.group(1)] + [p for p in m.group(2).split("::") if p]
        if len(head) == 1 and m.group(4) is None:
            # `self` as a receiver, not a path.
            continue
        if m.group(4) is None:
            out.append(head)
            continue
        depth, item = 0, ""
        for ch in m.group(4) + ",":
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            if ch == "," and depth == 0:
                first = item.strip().split("::")[0].split(" ")[0].strip("{} ")
                if first:
                    out.append(head + [first])
                item = ""
            else:
                item += ch
    return out


def reexports(mods):
    """Maps (module, name) to the module a `use` there takes it from: a
    name imported into a module (publicly or not) can be named through it
    by that module's descendants."""
    out = {}
    for mod, path in mods.items():
        text = strip_comments(open(path, encoding="utf-8").read())
        for m in re.finditer(r"(?:pub(?:\([a-z]+\))?\s+)?\buse\s+([\w:]+?)::(\{[^;]*\}|\w+)\s*;", text):
            base = [p for p in m.group(1).split("::") if p]
            names = re.findall(r"(\w+)(?:\s+as\s+(\w+))?", m.group(2).strip("{}"))
            for name, alias in names:
                if name in ("self", "crate", "super"):
                    continue
                out[(mod, alias or name)] = (base, name)
    return out


def resolve(mods, exports, here, is_dir_mod, p, depth=0):
    """The module tuple a path names, following re-exports."""
    if p[0] == "crate":
        base, rest = (), p[1:]
    elif p[0] == "super":
        base, rest = here[:-1] if is_dir_mod else here, p[1:]
        while rest and rest[0] == "super":
            base, rest = base[:-1], rest[1:]
    elif p[0] == "self":
        base, rest = here, p[1:]
    elif here + (p[0],) in mods:
        # A relative path to a child module (`use expiry::X` in a mod.rs).
        base, rest = here, p
    else:
        return None
    target = base
    for i, part in enumerate(rest):
        if target + (part,) in mods:
            target = target + (part,)
            continue
        hop = exports.get((target, part))
        if hop and depth < 8:
            src, name = hop
            return resolve(mods, exports, target, True, src + [name] + list(rest[i + 1 :]), depth + 1)
        break
    return target


def graph(src):
    mods = modules(src)
    exports = reexports(mods)
    edges = {m: set() for m in mods}
    for mod, path in mods.items():
        is_dir_mod = os.path.basename(path) in ("mod.rs", "lib.rs", "main.rs")
        here = mod if is_dir_mod else mod[:-1]
        text = strip_comments(open(path, encoding="utf-8").read())
        # Inline paths through a child module (`watch::Subscription` in a
        # signature) name it as much as a `use` does.
        children = [
            [m.group(1)] + [x for x in m.group(2).split("::") if x]
            for m in re.finditer(r"(?<![\w:])([a-z_]\w*)((?:::\w+)+)", text)
            if here + (m.group(1),) in mods
        ]
        for p in paths(text) + use_paths(text) + children:
            p = [x for x in p if x]
            if not p:
                continue
            target = resolve(mods, exports, here, is_dir_mod, p)
            if target is not None and target in mods and target != mod:
                edges[mod].add(target)
        continue
        for p in paths(text):
            if p[0] == "crate":
                base, rest = (), p[1:]
            elif p[0] == "super":
                base, rest = here[:-1] if is_dir_mod else here, p[1:]
                while rest and rest[0] == "super":
                    base, rest = base[:-1], rest[1:]
            else:
                base, rest = here, p[1:]
            target = base
            for part in rest:
                if target + (part,) in mods:
                    target = target + (part,)
                else:
                    break
            if target in mods and target != mod and target != ():
                edges[mod].add(target)
    return mods, edges


def cycles(edges):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    sys.setrecursionlimit(10000)
    for v in edges:
        if v not in index:
            visit(v)
    return out


def main():
    crates = sys.argv[1:] or CRATES
    found = False
    for crate in crates:
        src = os.path.join(ROOT, crate, "src")
        if not os.path.isdir(src):
            continue
        mods, edges = graph(src)
        comps = cycles(edges)
        if not comps:
            print(f"{crate}: no cycles among {len(mods)} files")
        for comp in comps:
            found = True
            names = sorted(os.path.relpath(mods[m], ROOT) for m in comp)
            print(f"{crate}: cycle: {' <-> '.join(names)}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
