"""bnfold.textout: tables that are never wrapped, aligned in terminal cells, colour only when asked."""

from __future__ import annotations

import io

import pytest

from bnfold.textout import SECTION, Out, render_table, wants_color, width


def body(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("│")]


def test_a_table_has_a_title_a_head_one_line_per_row_and_a_caption():
    text = render_table(("name", "n"), [("a", "1"), ("long name", "22")], title="T", right={"n"}, caption="c")
    assert text.splitlines() == [
        "T",
        "┏━━━━━━━━━━━┳━━━━┓",
        "┃ name      ┃  n ┃",
        "┡━━━━━━━━━━━╇━━━━┩",
        "│ a         │  1 │",
        "│ long name │ 22 │",
        "└───────────┴────┘",
        "c",
    ]


def test_long_cells_are_not_wrapped():
    name = "x" * 500
    [row] = body(render_table(("node",), [(name,)]))
    assert row == f"│ {name} │"


def test_wide_and_combining_characters_are_aligned_by_the_cells_they_take():
    assert width("ab") == 2 and width("名前") == 4 and width("e\u0301") == 1
    rows = body(render_table(("n",), [("名前",), ("abcd",), ("e\u0301xyz",)]))
    assert [width(r) for r in rows] == [8, 8, 8]


def test_colour_takes_no_width():
    out = Out(io.StringIO(), color=True)
    red = out.paint("FAILED", "red")
    assert red == "\x1b[31mFAILED\x1b[0m" and width(red) == 6
    rows = body(render_table(("v",), [(red,), ("passed",)]))
    assert width(rows[0]) == width(rows[1])


def test_a_section_row_draws_a_rule_and_a_last_one_is_dropped():
    lines = render_table(("a",), [("1",), SECTION, ("2",), SECTION]).splitlines()
    assert lines[3:] == ["│ 1 │", "├───┤", "│ 2 │", "└───┘"]


def test_a_row_of_the_wrong_length_is_an_error():
    with pytest.raises(ValueError, match="a row of 1 cells in a table of 2 columns"):
        render_table(("a", "b"), [("1",)])


def test_colour_only_for_a_terminal(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    for var in ("NO_COLOR", "FORCE_COLOR", "TERM"):
        monkeypatch.delenv(var, raising=False)
    assert wants_color(Tty()) and not wants_color(io.StringIO())
    assert Out(io.StringIO()).paint("x", "bold") == "x"
    monkeypatch.setenv("NO_COLOR", "1")
    assert not wants_color(Tty())
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setenv("TERM", "dumb")
    assert not wants_color(Tty())
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert wants_color(io.StringIO())


def test_a_stream_without_box_characters_gets_ascii_boxes_and_escapes():
    stream = io.TextIOWrapper(io.BytesIO(), encoding="latin-1")
    out = Out(stream, color=False)
    out.line("a → b, é, 名")
    out.table(("node", "n"), [("bn_é→名", "1")], title="Folded (1)")
    stream.flush()
    text = stream.buffer.getvalue().decode("latin-1")
    assert text.splitlines() == [
        "a -> b, é, \\u540d",
        "Folded (1)",
        "+--------------+---+",
        "| node         | n |",
        "+==============+===+",
        "| bn_é->\\u540d | 1 |",
        "+--------------+---+",
    ]


@pytest.mark.parametrize("encoding", ["ascii", "latin-1"])
def test_names_the_terminal_cannot_encode_do_not_fail_a_run(tmp_path, encoding):
    """A node named in CJK on a latin-1 (or ASCII) terminal: the model is written, the report says so,
    the exit code is the command's own, never an encoding error's 2."""
    import os
    import subprocess
    import sys

    import onnx

    import builders

    model = builders.conv_bn_model()
    next(n for n in model.graph.node if n.op_type == "BatchNormalization").name = "bn_é→名"
    src = tmp_path / "m.onnx"
    onnx.save(model, src)
    env = {**os.environ, "PYTHONIOENCODING": encoding}

    def run(*args):
        return subprocess.run([sys.executable, "-m", "bnfold", *map(str, args)], capture_output=True, env=env)

    checked = run("check", src)
    assert checked.returncode == 1 and b"can fold into Conv 'conv' [conv-bn]" in checked.stdout, checked.stderr
    folded = run("optimize", src, "-o", tmp_path / "out.onnx", "--no-validate")
    assert folded.returncode == 0 and b"| BatchNormalization 'bn_" in folded.stdout, folded.stderr
    assert b"\\u540d" in folded.stdout and (tmp_path / "out.onnx").exists()
    many = run("optimize", src, src.with_name("m.onnx"), "-o", tmp_path / "outdir", "--no-validate")
    assert many.returncode == 0 and b"1 written" in many.stdout, many.stderr
