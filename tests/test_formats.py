"""``--format markdown`` and ``--format github`` (``bnfold.formats``), and ``--json`` as an alias.

Markdown is read back with GitHub's own parser (cmark-gfm, through ``cmarkgfm``) and with
markdown-it-py (rich's, always there), HTML allowed: a hostile node, tensor or file name must
stay the text of its one cell, never a cell, a row, a heading, a tag or a link of its own.
Where the figures would depend on the machine (validation errors), validation is replaced by
a fixed result, so the expected text is exact.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import builders
import onnx
import pytest
from click.testing import CliRunner, Result
from markdown_it import MarkdownIt

import bnfold
import bnfold.pipeline
from bnfold import formats
from bnfold.cli import cli
from bnfold.text import printable
from bnfold.validation import OutputComparison, ValidationResult

RELU_REASON = ("its input 'relu\\_out' comes from Relu 'relu', not a linear op (Conv, ConvTranspose, Gemm, "
               "MatMul)")
HOSTILE = ("bn|x`y`</td><script>alert(1)</script>\n| forged | row |\x1b[31m<img src=x onerror=alert(1)> "
           "@octocat $x$ **b**")


def run(*args) -> Result:
    return CliRunner().invoke(cli, [*map(str, args)], prog_name="bnfold")


def without_time(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith("Time: ")).rstrip("\n") + "\n"


def rename_tensor(model: onnx.ModelProto, old: str, new: str) -> None:
    g = model.graph
    for node in g.node:
        node.input[:] = [new if x == old else x for x in node.input]
        node.output[:] = [new if x == old else x for x in node.output]
    for vi in [*g.input, *g.output, *g.value_info]:
        if vi.name == old:
            vi.name = new


def fixed_validation(output: str = "Z", verdict: str = "passed", reason: str | None = None, inputs=None):
    """A validation result that does not depend on the machine: one output, one input set."""
    inputs = inputs or {"X": [1, 4, 8, 8]}
    comparison = OutputComparison(name=output, dtype="float32", shape=[1, 8, 8, 8], verdict=verdict,
                                  stage="fast pass" if verdict == "passed" else "exact reference", max_abs=1.5e-6,
                                  mean_abs=1e-7, median_abs=1e-7, p99_abs=9.5e-7, max_rel=1e-6, scale=3.5,
                                  needed=2.75 if verdict == "passed" else 9000.0, worst_set="wide")
    return ValidationResult(verdict, [comparison], backend="onnxruntime (CPU, ORT_DISABLE_ALL)", inputs=inputs,
                            seed=0, reason=reason, sets=[{"label": "normal", "inputs": inputs}],
                            shapes_chosen="declared")


@pytest.fixture
def fixed(monkeypatch):
    """Validation replaced by ``fixed_validation``; call the fixture's value to change what it returns."""
    result = {"value": fixed_validation()}
    monkeypatch.setattr("bnfold.validation.validate", lambda *a, **k: result["value"])
    return lambda **kw: result.update(value=fixed_validation(**kw))


def md_table(text: str, heading: str) -> list[str]:
    """The lines (header, delimiter, rows) of the first table after the line ``heading``."""
    lines = text.splitlines()
    start = next(i for i in range(lines.index(heading), len(lines)) if lines[i].startswith("|"))
    end = next(i for i in range(start, len(lines) + 1) if i == len(lines) or not lines[i].startswith("|"))
    return lines[start:end]


# -- markdown read back ------------------------------------------------------------------------


def parsed_tables(markdown: str) -> list[list[list[str]]]:
    """Every table markdown-it-py (GFM tables, HTML on) reads: rows of cell texts, header first.
    Fails on any HTML token: bnfold's markdown has none."""
    tokens = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"]).parse(markdown)
    tables, row = [], None
    for tok in tokens:
        assert tok.type not in ("html_block", "html_inline"), tok
        if tok.type == "table_open":
            tables.append([])
        elif tok.type == "tr_open":
            row = []
            tables[-1].append(row)
        elif tok.type == "inline" and row is not None:
            for child in tok.children:
                assert child.type != "html_inline", child
            row.append("".join(c.content for c in tok.children if c.type in ("text", "code_inline")))
        elif tok.type == "tr_close":
            row = None
    return tables


def github_html(markdown: str) -> str:
    """HTML from GitHub's parser, raw HTML allowed (what GitHub keeps of it is a subset)."""
    cmarkgfm = pytest.importorskip("cmarkgfm")
    from cmarkgfm.cmark import Options

    return cmarkgfm.github_flavored_markdown_to_html(markdown, options=Options.CMARK_OPT_UNSAFE)


def github_cells(html: str) -> list[list[str]]:
    """Rows of cells (inner HTML) of every table in GitHub's HTML."""
    return [re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S) for row in re.findall(r"<tr>(.*?)</tr>", html, re.S)]


# -- optimize ----------------------------------------------------------------------------------


def test_optimize_markdown_is_exact(tmp_path, fixed):
    src = tmp_path / "m.onnx"
    onnx.save(builders.fold_and_refusal_model(), src)
    dst = tmp_path / "m.out.onnx"

    result = run("optimize", src, "-o", dst, "--format", "markdown")

    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    doc = json.loads(run("optimize", src, "-o", dst, "--json").stdout)
    b, a = doc["before"], doc["after"]
    assert without_time(result.stdout) == f"""\
## bnfold optimize `{src}` → `{dst}`

**Validation passed** · 1 fold, 1 refusal · nodes 4 → 3 (-25.0%) · written → `{dst}`

### Folded (1)

| node | into | rule | graph | saves per inference |
|---|---|---|---|---|
| BatchNormalization `bn` | Conv `conv` | conv-bn | main | 288 MAC, 2.2 KiB |

Saved per inference (X=1x4x8x8): 288 multiply-adds and 2.2 KiB of activation traffic; parameters \
{bnfold.text.size(b['parameter_bytes'])} → {bnfold.text.size(a['parameter_bytes'])}

### Not folded (1)

| node | rule | reason |
|---|---|---|
| BatchNormalization `bn_tail` | conv-bn | {RELU_REASON} |

### Validation: passed

onnxruntime (CPU, ORT\\_DISABLE\\_ALL), seed 0; inputs: 1 set (normal), X=1x4x8x8 (shapes: declared)

| output | dtype | scale | max abs | p99 abs | needed | worst set | verdict |
|---|---|---:|---:|---:|---:|---|---|
| `Z` | float32 | 3.5 | 1.5e-06 | 9.5e-07 | 2.8 | wide | passed (fast pass) |

### Model

|  | before | after | change |
|---|---:|---:|---:|
| nodes | 4 | 3 | -25.0% |
| parameters | {b['parameters']:,} | {a['parameters']:,} | {bnfold.text.change(b['parameters'], a['parameters'])} |
| parameter bytes | {bnfold.text.size(b['parameter_bytes'])} | {bnfold.text.size(a['parameter_bytes'])} | \
{bnfold.text.change(b['parameter_bytes'], a['parameter_bytes'])} |
| file size | {bnfold.text.size(b['file_bytes'])} | {bnfold.text.size(a['file_bytes'])} | \
{bnfold.text.change(b['file_bytes'], a['file_bytes'])} |
"""
    assert re.fullmatch(r"Time: load [\d.]+ s, fold [\d.]+ s, save [\d.]+ s, validate [\d.]+ s",
                        result.stdout.splitlines()[-1])
    assert [len(t[0]) for t in parsed_tables(result.stdout)] == [5, 3, 8, 4]


def test_optimize_markdown_with_real_validation(tmp_path):
    """The verdict, the row of each output, exit 0: the figures are the machine's, the layout is not."""
    src = tmp_path / "m.onnx"
    onnx.save(builders.conv_bn_model(), src)

    result = run("optimize", src, "-o", tmp_path / "out.onnx", "--format", "markdown")

    assert result.exit_code == 0, result.output
    assert "**Validation passed** · 1 fold, 0 refusals · nodes 2 → 1 (-50.0%)" in result.stdout
    header, _, row = md_table(result.stdout, "### Validation: passed")
    assert header == "| output | dtype | scale | max abs | p99 abs | needed | worst set | verdict |"
    assert re.fullmatch(r"\| `Y` \| float32 \| \S+ \| \S+ \| \S+ \| \S+ \| (normal|image|wide) \| passed \((fast pass|"
                        r"exact reference)\) \|", row), row
    assert "### Not folded" not in result.stdout


def test_optimize_markdown_failed_validation_exits_1_and_names_the_worst_output(tmp_path, fixed):
    src = tmp_path / "m.onnx"
    onnx.save(builders.conv_bn_model(), src)
    fixed(output="Y", verdict="failed", reason="output 'Y' differs by 0.5 on set 'wide'")

    result = run("optimize", src, "--format", "markdown")

    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"## bnfold optimize `{src}`"  # nothing written: no arrow
    assert lines[2] == ("**Validation FAILED** (output 'Y' differs by 0.5 on set 'wide') · 1 fold, 0 refusals · "
                        "nodes 2 → 1 (-50.0%) · nothing written")
    assert "Worst: output 'Y' differs by 0.5 on set 'wide'" in lines
    assert "| `Y` | float32 | 3.5 | 1.5e-06 | 9.5e-07 | 9e+03 | wide | failed (exact reference) |" in lines
    assert result.stderr.startswith(f"bnfold: error: {src}: validation failed")
    assert not (tmp_path / "m.folded.onnx").exists()


def test_optimize_markdown_unproven_exits_3(tmp_path, fixed):
    src = tmp_path / "m.onnx"
    onnx.save(builders.conv_bn_model(), src)
    fixed(output="Y", verdict="unproven", reason="no exact answer could decide")

    result = run("optimize", src, "--format", "markdown")

    assert result.exit_code == 3, result.output
    assert ("**Validation could not prove the fold** (no exact answer could decide) · 1 fold, 0 refusals · nodes 2 → 1 "
            "(-50.0%) · nothing written (--accept-unproven writes it)") in result.stdout.splitlines()


def test_optimize_markdown_without_validation(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(builders.bn_after_relu_model(), src)

    result = run("optimize", src, "-o", tmp_path / "o.onnx", "--format", "markdown")

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[2] == ("Validation not run (nothing folded) · 0 folds, 1 refusal · nodes 3 → 3 · "
                        f"written → `{tmp_path / 'o.onnx'}`")
    assert md_table(result.stdout, "### Not folded (1)") == [
        "| node | rule | reason |", "|---|---|---|", f"| BatchNormalization `bn` | conv-bn | {RELU_REASON} |"]
    assert "### Folded" not in result.stdout and "### Validation" not in result.stdout


def test_optimize_github_is_one_annotation(tmp_path, fixed):
    src = tmp_path / "m.onnx"
    onnx.save(builders.conv_bn_model(), src)
    fixed(output="Y")

    ok = run("optimize", src, "-o", tmp_path / "o.onnx", "--format", "github")
    fixed(output="Y", verdict="failed", reason="output 'Y' differs: 50% off, a:b,c\nd")
    failed = run("optimize", src, "-o", tmp_path / "o.onnx", "--format", "github")

    assert ok.exit_code == 0 and failed.exit_code == 1
    assert ok.stdout == (f"::notice file={src},title=bnfold optimize::folded 1 (BatchNormalization 'bn' into Conv "
                         f"'conv'); validation passed; written → {tmp_path / 'o.onnx'}\n")
    assert failed.stdout == (f"::error file={src},title=bnfold optimize::validation failed (output 'Y' differs: "
                             "50%25 off, a:b,c%0Ad); nothing written; folded 1 (BatchNormalization 'bn' into Conv "
                             "'conv')\n")


def test_batch_markdown_summary_table(tmp_path, fixed):
    folder = tmp_path / "models"
    folder.mkdir()
    onnx.save(builders.conv_bn_model(), folder / "a.onnx")
    onnx.save(builders.bn_after_relu_model(), folder / "b.onnx")
    (folder / "c.onnx").write_bytes(b"not a model")
    fixed(output="Y")
    out = tmp_path / "out"

    result = run("optimize", folder, "-o", out, "--format", "markdown")

    assert result.exit_code == 2, result.output  # c.onnx is unusable
    lines = result.stdout.splitlines()
    assert lines[:4] == ["## bnfold optimize: 3 files", "",
                         "3 files: 2 written, 0 failed validation, 0 not proven, 1 unusable; 1 fold, 1 refusal", ""]
    table = lines[4:9]
    assert table == [
        "| file | folds | refusals | validation | nodes before → after | status |",
        "|---|---:|---:|---|---|---|",
        f"| `{folder / 'a.onnx'}` | 1 | 0 | passed | 2 → 1 | written → `{out / 'a.onnx'}` |",
        f"| `{folder / 'b.onnx'}` | 0 | 1 | not run | 3 → 3 | written → `{out / 'b.onnx'}` |",
        f"| `{folder / 'c.onnx'}` | - | - | - | - | unusable |",
    ]
    errors = md_table(result.stdout, "### Errors")
    broken = folder / "c.onnx"
    assert len(errors) == 3 and errors[2].startswith(f"| `{broken}` | {formats.escape(str(broken))}: ")
    assert f"### `{folder / 'a.onnx'}`" in lines and f"### `{folder / 'b.onnx'}`" in lines
    assert "#### Folded (1)" in lines and "#### Not folded (1)" in lines
    assert result.stderr.startswith(f"bnfold: error: {folder / 'c.onnx'}: ")


def test_batch_github_one_annotation_per_file(tmp_path, fixed):
    folder = tmp_path / "models"
    folder.mkdir()
    onnx.save(builders.conv_bn_model(), folder / "a.onnx")
    (folder / "c.onnx").write_bytes(b"not a model")
    fixed(output="Y")

    result = run("optimize", folder, "-o", tmp_path / "out", "--format", "github")

    assert result.exit_code == 2
    notice, error = result.stdout.splitlines()
    assert notice.startswith(f"::notice file={folder / 'a.onnx'},title=bnfold optimize::folded 1 ")
    assert error.startswith(f"::error file={folder / 'c.onnx'},title=bnfold optimize::{folder / 'c.onnx'}: ")


# -- check -------------------------------------------------------------------------------------


@pytest.fixture
def models(tmp_path) -> dict[str, Path]:
    paths = {name: tmp_path / f"{name}.onnx" for name in ("foldable", "clean", "relu_bn", "broken")}
    onnx.save(builders.conv_bn_model(), paths["foldable"])
    onnx.save(bnfold.fold(builders.conv_bn_model()).model, paths["clean"])
    onnx.save(builders.bn_after_relu_model(), paths["relu_bn"])
    paths["broken"].write_bytes(b"not a model")
    return paths


def test_check_markdown_is_exact(models):
    result = run("check", "--format", "markdown", "-v", models["foldable"], models["clean"], models["relu_bn"],
                 models["broken"])

    assert result.exit_code == 2  # the unreadable file decides, as in every format
    broken_error = result.stderr.removeprefix("bnfold: error: ").strip()
    assert result.stdout == f"""\
## bnfold check

**1 foldable pattern in 1 of 3 files** · 1 unreadable

### Foldable

| file | node | can fold into | rule | graph |
|---|---|---|---|---|
| `{models['foldable']}` | BatchNormalization `bn` | Conv `conv` | conv-bn | main |

### Errors

| file | error |
|---|---|
| `{models['broken']}` | {formats.escape(broken_error)} |

### Left in place

| file | node | rule | reason | graph |
|---|---|---|---|---|
| `{models['relu_bn']}` | BatchNormalization `bn` | conv-bn | {RELU_REASON} | main |
"""
    assert [len(t[0]) for t in parsed_tables(result.stdout)] == [5, 2, 5]


@pytest.mark.parametrize("fmt", ["markdown", "github", "text", "json"])
def test_check_exit_codes_are_the_same_in_every_format(models, fmt):
    assert run("check", "--format", fmt, models["clean"]).exit_code == 0
    assert run("check", "--format", fmt, models["foldable"]).exit_code == 1
    assert run("check", "--format", fmt, models["clean"], models["broken"]).exit_code == 2
    assert run("check", "--format", fmt, models["relu_bn"]).exit_code == 0


def test_check_markdown_of_a_clean_tree(models):
    result = run("check", "--format", "markdown", models["clean"], models["relu_bn"])
    assert (result.exit_code, result.stdout) == (0, "## bnfold check\n\nNothing to fold in 2 files\n")


def test_check_markdown_after_fix(models, monkeypatch):
    monkeypatch.setattr("bnfold.validation.validate", lambda *a, **k: fixed_validation(output="Y"))
    result = run("check", "--fix", "--format", "markdown", models["foldable"])
    assert result.exit_code == 0, result.output
    assert result.stdout == (f"## bnfold check\n\nNothing to fold in 1 file · 1 fixed (1 folded)\n\n### Fixed\n\n"
                             "| file | node | folded into | rule | graph |\n|---|---|---|---|---|\n"
                             f"| `{models['foldable']}` | BatchNormalization `bn` | Conv `conv` | conv-bn | main |\n")


# -- hostile names -----------------------------------------------------------------------------


def hostile_model() -> onnx.ModelProto:
    """conv_bn_model with hostile node names, and hostile input and output tensor names."""
    model = builders.conv_bn_model()
    names = {"conv": "conv`|`" + HOSTILE, "bn": HOSTILE}
    for node in model.graph.node:
        node.name = names.get(node.name, node.name)
    rename_tensor(model, "X", "x|<b>in</b>")
    rename_tensor(model, "Y", "y`|<i>out</i>\\|")
    onnx.checker.check_model(model, full_check=True)
    return model


def assert_inert(markdown: str, expected_cells: dict[int, list[str]]) -> None:
    """Both parsers read the tables with the cells as expected (index of a table -> one row's
    cells), GitHub's HTML has no tag but those markdown tables, code and emphasis make."""
    tables = parsed_tables(markdown)
    for index, cells in expected_cells.items():
        assert cells in tables[index][1:], (tables[index], cells)
    for table in tables:
        assert all(len(row) == len(table[0]) for row in table), table
    html = github_html(markdown)
    tags = set(re.findall(r"</?([a-zA-Z0-9]+)", html))
    made = {"h2", "h3", "p", "strong", "em", "table", "thead", "tbody", "tr", "th", "td", "code", "ul", "li"}
    assert tags <= made, tags
    for row in github_cells(html):
        assert len(row) in {len(t[0]) for t in tables}


def test_hostile_names_stay_inside_their_cells(tmp_path, fixed):
    src = tmp_path / "m.onnx"
    onnx.save(hostile_model(), src)
    fixed(output="y`|<i>out</i>\\|", inputs={"x|<b>in</b>": [1, 4, 8, 8]})

    result = run("optimize", src, "-o", tmp_path / "o.onnx", "--format", "markdown")

    assert result.exit_code == 0, result.output
    bn, conv = printable(HOSTILE), printable("conv`|`" + HOSTILE)
    assert_inert(result.stdout, {0: [f"BatchNormalization {bn}", f"Conv {conv}", "conv-bn", "main",
                                     "288 MAC, 2.2 KiB"],
                                 1: ["y`|<i>out</i>\\|", "float32", "3.5", "1.5e-06", "9.5e-07", "2.8", "wide",
                                     "passed (fast pass)"]})
    assert "\n| forged | row |" not in result.stdout and "\x1b" not in result.stdout
    assert "Saved per inference (x\\|\\<b\\>in\\</b\\>=1x4x8x8)" in result.stdout


def test_hostile_names_in_check_and_file_names(tmp_path):
    folder = tmp_path / "a|b`c<i>"
    folder.mkdir()
    onnx.save(hostile_model(), folder / "m.onnx")

    result = run("check", "--format", "markdown", folder / "m.onnx")

    assert result.exit_code == 1
    assert_inert(result.stdout, {0: [str(folder / "m.onnx"), f"BatchNormalization {printable(HOSTILE)}",
                                     f"Conv {printable('conv`|`' + HOSTILE)}", "conv-bn", "main"]})


@pytest.mark.parametrize("name", ["", " ", "`", "``a`", "a\\|b", "a\\\\|b", "|", "<", "\n", "a  b ", "x\u202ey"])
def test_code_spans_hold_any_name(name):
    """A code span reads back as exactly the printable name, in a table cell and outside."""
    cell = formats.code(name)
    table = f"| h |\n|---|\n| {cell} |\n"
    expected = printable(name) if name else "(empty)"
    [[header, [got]]] = [t for t in parsed_tables(table)]
    assert got == expected or (name == " " and got.strip() == "")
    html = github_html(table)
    [_, [inner]] = github_cells(html)
    import html as html_module

    text = html_module.unescape(re.sub(r"</?(code|em)>", "", inner))
    assert text == expected or (name == " " and text.strip() == "")


@pytest.mark.parametrize("text", ["a|b", "a\\|b", "<script>x</script>", "**b** _i_ ~s~ $m$ [l](u) ![i](u) &amp;",
                                  "line\nbreak", "`code`"])
def test_escaped_prose_reads_back_as_itself(text):
    cell = formats.escape(text)
    html = github_html(f"| h |\n|---|\n| {cell} |\n")
    [_, [inner]] = github_cells(html)
    import html as html_module

    assert "<" not in inner
    assert html_module.unescape(inner) == printable(text)


def test_workflow_command_escapes(tmp_path, fixed):
    src = tmp_path / "a,b:c%d.onnx"
    model = builders.conv_bn_model()
    model.graph.node[1].name = "bn\r\n::error::forged%"
    onnx.save(model, src)
    fixed(output="Y")

    result = run("optimize", src, "-o", tmp_path / "o.onnx", "--format", "github")

    [line] = result.stdout.splitlines()
    assert line.startswith(f"::notice file={tmp_path}/a%2Cb%3Ac%25d.onnx,title=bnfold optimize::folded 1 "
                           "(BatchNormalization 'bn%0D%0A::error::forged%25' into Conv 'conv')")


# -- --json and --format -------------------------------------------------------------------------


def test_json_is_an_alias_of_format_json(tmp_path, models, fixed):
    src = tmp_path / "m.onnx"
    onnx.save(builders.conv_bn_model(), src)
    fixed(output="Y")
    docs = [json.loads(run("optimize", src, "-o", tmp_path / "o.onnx", *flags).stdout)
            for flags in (["--json"], ["--format", "json"], ["--json", "--format", "json"])]
    for doc in docs:
        doc.pop("seconds")
    assert docs[0] == docs[1] == docs[2]
    paths = (models["foldable"], models["clean"])
    outputs = {run("check", *flags, *paths).stdout for flags in (["--json"], ["--format", "json"])}
    assert len(outputs) == 1 and json.loads(outputs.pop())["summary"]["findings"] == 1


@pytest.mark.parametrize("command", ["optimize", "check"])
@pytest.mark.parametrize("other", ["text", "markdown", "github"])
def test_json_and_another_format_is_a_usage_error(tmp_path, models, command, other):
    result = run(command, "--json", "--format", other, models["foldable"])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == f"bnfold: error: --json and --format {other} disagree; give one of them\n"
    assert not (tmp_path / "foldable.folded.onnx").exists()


def test_format_is_listed_in_help():
    for command in ("optimize", "check"):
        text = run(command, "--help").stdout
        assert "--format [text|json|markdown|github]" in text and "--json" in text
