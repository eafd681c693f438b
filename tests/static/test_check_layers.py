"""Self-test of scripts/check-layers.py on small source trees made up for each test.

Run by the static layer of scripts/test.sh, before the check runs on the real src/. Needs no
server and no build: `.venv/bin/pytest tests/static`."""

import pathlib
import subprocess
import sys

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "check-layers.py"


def make_tree(root, files):
    """Writes `files` ({path under src/: text}) and returns the src directory."""
    src = root / "src"
    for name, text in files.items():
        path = src / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return src


def check(src, *options):
    done = subprocess.run([sys.executable, str(SCRIPT), str(src), *options], capture_output=True, text=True)
    return done.returncode, done.stdout + done.stderr


def layer_lines(output):
    """The module lines of a successful run: {module: what it uses}."""
    lines = [line for line in output.splitlines() if " -> " in line]
    return dict(line.split(" -> ", 1) for line in lines)


LIB = "mod a;\nmod b;\nmod c;\nuse crate::a::f;\n"


def test_layers_without_a_cycle_pass_bottom_up(tmp_path):
    src = make_tree(tmp_path, {
        "lib.rs": LIB,
        "a.rs": "use crate::b::Thing;\npub fn f() { crate::c::g(); }\n",
        "b.rs": "use crate::c;\npub struct Thing;\n",
        "c.rs": "pub fn g() {}\n",
    })
    status, output = check(src)
    assert status == 0, output
    assert layer_lines(output) == {"c": "(nothing)", "b": "c", "a": "b, c"}
    order = [line.split(" -> ")[0] for line in output.splitlines() if " -> " in line]
    assert order == ["c", "b", "a"], output
    assert "lines: ok" in output


def test_a_cycle_fails_and_is_named(tmp_path):
    src = make_tree(tmp_path, {
        "lib.rs": LIB,
        "a.rs": "use crate::b;\n",
        "b.rs": "pub fn g() { crate::c::h() }\n",
        "c.rs": "pub fn h() { let _ = crate::a::X; }\n",
    })
    status, output = check(src)
    assert status == 1, output
    assert "a -> b -> c -> a" in output.splitlines(), output
    assert "c -> a  (src/c.rs:1)" in output, output


def test_grouped_and_nested_use_is_parsed(tmp_path):
    src = make_tree(tmp_path, {
        "lib.rs": "mod a;\nmod b;\nmod c;\nmod d;\n",
        "a.rs": "use crate::{\n    b::{self, Thing as Other},\n    c::{x::{Y, Z}, *},\n};\n",
        "b.rs": "",
        "c.rs": "",
        "d.rs": "use crate::{a};\n",
    })
    status, output = check(src)
    assert status == 0, output
    assert layer_lines(output) == {"b": "(nothing)", "c": "(nothing)", "a": "b, c", "d": "a"}


def test_a_grouped_use_closes_a_cycle(tmp_path):
    src = make_tree(tmp_path, {
        "lib.rs": "mod a;\nmod b;\n",
        "a.rs": "use crate::{b::Thing, a::x};\n",
        "b.rs": "use crate::{a as first};\n",
    })
    status, output = check(src)
    assert status == 1, output
    assert "a -> b -> a" in output.splitlines(), output


def test_comments_strings_and_the_crate_root_make_no_edges(tmp_path):
    src = make_tree(tmp_path, {
        "lib.rs": "mod a;\nmod b;\npub const LIMIT: u32 = 1;\nfn main() { b::f(); a::g(); }\n",
        "a.rs": "use crate::b;\npub fn g() {}\n",
        "b.rs": (
            "//! Called from [`crate::a`].\n"
            "/* crate::a::g() /* nested crate::a */ */\n"
            "pub fn f<'x>(s: &'x str) -> char {\n"
            "    let _ = \"crate::a::g\";\n"
            "    let _ = r#\"crate::a::g \"quoted\"\"#;\n"
            "    let _ = crate::LIMIT;\n"
            "    '\\''\n"
            "}\n"
        ),
    })
    status, output = check(src)
    assert status == 0, output
    assert layer_lines(output) == {"b": "(nothing)", "a": "b"}


def test_submodules_reduce_to_their_top_level_module(tmp_path):
    src = make_tree(tmp_path, {
        "lib.rs": "mod a;\nmod b;\n",
        "a/mod.rs": "mod inner;\nmod other;\n",
        # inside a: ignored; super::super::b is the top-level module b
        "a/inner.rs": "use super::other::X;\nuse crate::a::other;\nuse super::super::b::Y;\n",
        "a/other.rs": "pub struct X;\n",
        "b.rs": "pub struct Y;\n#[cfg(test)]\nmod tests {\n    use super::*;\n    fn t() { let _ = super::Y; }\n}\n",
    })
    status, output = check(src)
    assert status == 0, output
    assert layer_lines(output) == {"b": "(nothing)", "a": "b"}


def test_a_file_over_the_limit_fails(tmp_path):
    src = make_tree(tmp_path, {
        "lib.rs": "mod a;\nmod b;\n",
        "a.rs": "// line\n" * 401,
        "b.rs": "// line\n" * 400,
    })
    status, output = check(src)
    assert status == 1, output
    assert "src/a.rs: 401 lines" in output, output
    assert "src/b.rs" not in output, output
    assert "layers: ok" in output, output
    status, output = check(src, "--max-lines", "401")
    assert status == 0, output
