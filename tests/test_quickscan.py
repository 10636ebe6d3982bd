"""``bnfold.quickscan``: ``bnfold check``'s quick path is exact where it answers.

The one property that matters: whenever ``quickscan.is_clean(path)`` is True, the ordinary check of
``path`` (``check.check_file`` with the quick path off) finds no fold, no refusal and no error.
It is checked on every model the suite's builders make (with their defaults, and folded), the
random models, ``models/``, onnx's light zoo, and on adversarial bytes: truncations, byte flips,
a BN only in a function or a subgraph, a BN spelled in another domain, encodings the walk does not
know. The other direction is not a property (False only means "not proven here"), but the quick
path must answer True for ordinary clean models, or it would be no quick path: tests say where.
"""

from __future__ import annotations

import importlib.machinery
import inspect
import os
import random
import subprocess
import sys
from pathlib import Path

import affine_builders
import bn_linear_builders
import builders
import layout_builders
import linear_builders
import numpy as np
import onnx
import pytest
import qdq_builders
from onnx import TensorProto, helper, numpy_helper
from random_models import random_model, save

import bnfold
from bnfold import check, quickscan, wire

REPO = Path(__file__).resolve().parent.parent
LIGHT = Path(importlib.machinery.PathFinder.find_spec("onnx").submodule_search_locations[0], "backend/test/data/light")


def full_check(path) -> check.FileCheck:
    """The ordinary check of ``path``, whatever the quick path would say."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(quickscan, "is_clean", lambda _: False)
        return check.check_file(check.FileCheck(str(path)))


def assert_exact(path) -> bool:
    """quickscan's answer for ``path``; when it is True, the ordinary check must report nothing."""
    quick = quickscan.is_clean(path)
    if quick:
        full = full_check(path)
        assert (full.findings, full.refusals, full.error) == ([], [], None), path
    return quick


def write(folder: Path, name: str, model: onnx.ModelProto | bytes) -> Path:
    path = folder / f"{name}.onnx"
    path.write_bytes(model if isinstance(model, bytes) else model.SerializeToString())
    return path


def folded(model: onnx.ModelProto) -> onnx.ModelProto:
    return bnfold.fold(model).model


# -- models --------------------------------------------------------------------------------------


def _builder_models():
    """(name, model or bytes) for every public builder of the suite that needs no argument."""
    for module in (builders, affine_builders, bn_linear_builders, linear_builders, layout_builders, qdq_builders):
        for name, fn in inspect.getmembers(module, inspect.isfunction):
            if name.startswith("_") or fn.__module__ != module.__name__:
                continue
            if any(p.default is p.empty and p.kind is not p.VAR_KEYWORD and p.kind is not p.VAR_POSITIONAL
                   for p in inspect.signature(fn).parameters.values()):
                continue
            made = fn()
            if isinstance(made, (onnx.ModelProto, bytes)):
                yield f"{module.__name__}.{name}", made


def _variants():
    """conv_bn_model's structural options: where BN parameters come from, opsets, IR versions."""
    for params in ("initializer", "constant", "identity", "graph_input"):
        for opset, ir in ((9, 4), (13, 7), (17, 8)):
            try:
                yield f"conv_bn-{params}-{opset}", builders.conv_bn_model(params=params, opset=opset, ir_version=ir)
            except (TypeError, ValueError):
                continue
    yield "conv_bn-2bn", builders.conv_bn_model(bn_count=2)
    yield "conv_bn-shared", builders.conv_bn_model(share_weight=True, conv_out_extra_consumer=True)


def test_every_builder_model_and_its_fold(tmp_path):
    proven = 0
    for name, model in [*_builder_models(), *_variants()]:
        proven += assert_exact(write(tmp_path, name, model))
        if isinstance(model, onnx.ModelProto):
            try:
                result = folded(model)
            except bnfold.BnfoldError:
                continue
            proven += assert_exact(write(tmp_path, name + ".folded", result))
    assert proven >= 10  # folded Conv, Gemm, MatMul models are clean, and the quick path says so


def test_random_models_and_their_folds(tmp_path):
    proven = 0
    for seed in range(150):
        gen = random_model(seed)
        path = save(gen, tmp_path / f"seed{seed}")  # some keep tensors in side files
        proven += assert_exact(path)
        try:
            result = folded(gen.model)
        except bnfold.BnfoldError:
            continue
        proven += assert_exact(write(tmp_path, f"seed{seed}.folded", result))
    assert proven >= 5


@pytest.mark.parametrize("path", sorted((REPO / "models").glob("*.onnx")) + sorted(LIGHT.glob("*.onnx")),
                         ids=lambda p: p.name)
def test_repository_and_zoo_models(path, tmp_path):
    assert_exact(path)
    model = onnx.load(path)
    assert_exact(write(tmp_path, path.stem + ".folded", folded(model)))


def test_folded_models_are_proven_clean(tmp_path):
    path = write(tmp_path, "resnet_stack.folded", folded(onnx.load(REPO / "models" / "resnet_stack.onnx")))
    assert assert_exact(path), quickscan.unproven(path)
    assert assert_exact(write(tmp_path, "clean", clean_model()))


# -- hand-made clean and nearly clean models ----------------------------------------------------------


def _tensor(name, shape, seed=0, dtype=np.float32):
    return numpy_helper.from_array(np.random.default_rng(seed).standard_normal(shape).astype(dtype), name)


def clean_model(*, nodes=(), initializers=(), functions=(), opset=17, body=None) -> onnx.ModelProto:
    """X -> Conv (weight of 4 KiB: stays on disk when read lazily) -> Relu -> ``nodes`` -> Y, and
    an If whose branches are ``body`` (default: Relu of the outer Relu's output)."""
    def branch(tag):
        inner = body(tag) if body is not None else [helper.make_node("Relu", ["r"], [f"{tag}_out"], name=f"{tag}_relu")]
        return helper.make_graph(inner, tag, [], [helper.make_tensor_value_info(f"{tag}_out", TensorProto.FLOAT,
                                                                                  [1, 8, 8, 8])])

    last = nodes[-1].output[0] if nodes else "r"
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"], name="relu"),
         *nodes,
         helper.make_node("If", ["cond"], ["y"], name="if", then_branch=branch("then"), else_branch=branch("else")),
         helper.make_node("Add", ["y", last], ["z"], name="add")],
        "clean",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8]),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 8, 8, 8])],
        [_tensor("w", (8, 4, 3, 3)), *initializers],
    )
    opsets = [helper.make_opsetid("", opset)] + ([helper.make_opsetid("local", 1)] if functions else [])
    return helper.make_model(graph, opset_imports=opsets, functions=list(functions), ir_version=8)


def _function(nodes, name="f") -> onnx.FunctionProto:
    return helper.make_function("local", name, ["a"], ["b"], nodes, [helper.make_opsetid("", 17)])


def _call(name="f", x="r", y="fy"):
    return helper.make_node(name, [x], [y], domain="local", name=f"call_{name}")


def _bn_nodes(x, y, prefix="bn"):
    names = [f"{prefix}_{p}" for p in ("scale", "bias", "mean", "var")]
    consts = [helper.make_node("Constant", [], [n], value=numpy_helper.from_array(np.full(8, 0.5 + k, np.float32)))
              for k, n in enumerate(names)]
    return [*consts, helper.make_node("BatchNormalization", [x, *names], [y], name=prefix)]


CASES = {
    # clean: the quick path proves them
    "plain": dict(expect=True),
    "mul by a Constant after MaxPool": dict(expect=True, nodes=[
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[1, 1]),
        helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.float32(2.0))),
        helper.make_node("Mul", ["p", "k"], ["m"])]),
    "product of two activations": dict(expect=True, nodes=[helper.make_node("Mul", ["c", "r"], ["m"])]),
    "add of an initializer through Identity to a pooled activation": dict(expect=True, nodes=[
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[1, 1]),
        helper.make_node("Identity", ["b"], ["b2"]), helper.make_node("Add", ["b2", "p"], ["m"])],
        initializers=[_tensor("b", (8, 1, 1))]),
    "sigmoid of a graph input times a constant": dict(expect=True, nodes=[
        helper.make_node("Sigmoid", ["x"], ["sx"]), helper.make_node("Mul", ["sx", "b"], ["sb"]),
        helper.make_node("Add", ["r", "sb"], ["m"])], initializers=[_tensor("b", (1, 4, 1, 1))]),
    "a function without BN": dict(expect=True, nodes=[_call()],
                                  functions=[_function([helper.make_node("Relu", ["a"], ["b"])])]),
    # not proven: a BN or an affine fold somewhere, or a constant the ordinary path would compute
    "BN in the main graph": dict(expect=False, nodes=_bn_nodes("c", "bn_out")),
    "BN only in an If body": dict(expect=False, body=lambda tag: [
        *_bn_nodes("r", f"{tag}_out", prefix=f"{tag}_bn")]),
    "BN only in a function": dict(expect=False, nodes=[_call()], functions=[_function(_bn_nodes("a", "b"))]),
    "BN of another domain": dict(expect=False, nodes=[
        *_bn_nodes("c", "bn_out")[:-1],
        helper.make_node("BatchNormalization", ["c", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["bn_out"],
                         domain="local")], functions=[_function([helper.make_node("Relu", ["a"], ["b"])])]),
    "mul of the Conv output by an initializer": dict(expect=False, nodes=[helper.make_node("Mul", ["c", "s"], ["m"])],
                                                     initializers=[_tensor("s", (8, 1, 1))]),
    "add of a Constant to the Conv output": dict(expect=False, nodes=[
        helper.make_node("Constant", [], ["k"], value=_tensor("kv", (8, 1, 1))),
        helper.make_node("Add", ["k", "c"], ["m"])]),
    "an operand through Reshape": dict(expect=False, nodes=[
        helper.make_node("Reshape", ["s", "shape"], ["s2"]), helper.make_node("Mul", ["r", "s2"], ["m"])],
        initializers=[_tensor("s", (8,)), numpy_helper.from_array(np.array([8, 1, 1], np.int64), "shape")]),
    "a scale through Relu": dict(expect=False, nodes=[helper.make_node("Mul", ["r", "s"], ["m"])],
                                 initializers=[_tensor("s", (8, 1, 1))]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hand_made_models(case, tmp_path):
    spec = dict(CASES[case])
    expect = spec.pop("expect")
    path = write(tmp_path, "model", clean_model(**spec))
    assert assert_exact(path) is expect, quickscan.unproven(path)


@pytest.mark.parametrize("case", ["mul of the Conv output by an initializer", "a scale through Relu",
                                  "add of a Constant to the Conv output"])
def test_what_the_quick_path_declines_the_ordinary_path_reports(case, tmp_path):
    """A fold, or with ``-v`` a refusal (the Conv output also feeds the Relu)."""
    full = full_check(write(tmp_path, "model", clean_model(**{k: v for k, v in CASES[case].items() if k != "expect"})))
    assert {r.rule for r in (*full.findings, *full.refusals)} & {"affine-linear", "activation-scale"}


# -- adversarial bytes ----------------------------------------------------------------------------------


def _mutants(data: bytes, seed: int, count: int):
    rng = random.Random(seed)
    for k in range(count):
        at = rng.randrange(len(data))
        kind = k % 4
        if kind == 0:
            yield data[:at]  # truncated
        elif kind == 1:
            yield data[:at] + bytes([rng.randrange(256)]) + data[at + 1:]  # one byte changed
        elif kind == 2:
            yield data[:at] + bytes([rng.randrange(256)]) + data[at:]  # one byte inserted
        else:
            yield data[:at] + data[at + 1:]  # one byte deleted


@pytest.mark.parametrize("base", ["big weight", "small weights"])
def test_damaged_bytes(base, tmp_path):
    model = clean_model()
    if base == "small weights":  # no initializer stays on disk: the checker runs on the file itself
        model.graph.initializer[0].CopyFrom(_tensor("w", (8, 4, 1, 1)))
        model.graph.node[0].attribute[0].ints[:] = [0, 0, 0, 0]
    data = model.SerializeToString()
    assert assert_exact(write(tmp_path, "base", data))
    proven = sum(assert_exact(write(tmp_path, f"m{k}", mutant)) for k, mutant in enumerate(_mutants(data, 0, 160)))
    assert proven < 160


def _with(model: onnx.ModelProto, edit) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    edit(copy)
    return copy


def _bad_utf8(model: onnx.ModelProto) -> bytes:
    data = model.SerializeToString()
    return data.replace(b"relu", b"rel\xff", 1)


ODD = {
    "an unknown field": lambda m: m.SerializeToString() + wire.field(99, b"x"),
    "a node name that is not UTF-8": _bad_utf8,
    "ir_version 0": lambda m: _with(m, lambda c: setattr(c, "ir_version", 0)),
    "no opset for the default domain": lambda m: _with(m, lambda c: c.opset_import[0].__setattr__("domain", "other")),
    "a tensor with external data": lambda m: _with(m, lambda c: (
        c.graph.initializer[0].external_data.add(key="location", value="w.bin"),
        setattr(c.graph.initializer[0], "data_location", TensorProto.EXTERNAL))),
    "a big weight short of bytes": lambda m: _with(m, lambda c: setattr(
        c.graph.initializer[0], "raw_data", c.graph.initializer[0].raw_data[:-4])),
    "a sparse initializer": lambda m: _with(m, lambda c: c.graph.sparse_initializer.add().CopyFrom(
        helper.make_sparse_tensor(_tensor("sv", (1,)), numpy_helper.from_array(np.array([0], np.int64), "si"), [8]))),
    "a graphs attribute": lambda m: _with(m, lambda c: c.graph.node[1].attribute.append(
        helper.make_attribute("bodies", [c.graph.node[2].attribute[0].g]))),
    "an op misspelled": lambda m: _with(m, lambda c: setattr(c.graph.node[1], "op_type", "batchnormalization")),
    "a node the checker refuses": lambda m: _with(m, lambda c: c.graph.node[1].input.append("nowhere")),
    "two attributes of one name": lambda m: _with(m, lambda c: c.graph.node[0].attribute.append(
        helper.make_attribute("pads", [0, 0, 0, 0]))),
}


@pytest.mark.parametrize("case", list(ODD))
def test_odd_encodings_go_to_the_ordinary_path(case, tmp_path):
    made = ODD[case](clean_model())
    path = write(tmp_path, "odd", made)
    assert assert_exact(path) is False, case


def test_unreadable_files(tmp_path):
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    text = tmp_path / "text.onnx"
    text.write_bytes(b"not a model at all")
    for path in (empty, text, tmp_path / "missing.onnx", tmp_path):
        assert quickscan.is_clean(path) is False


# -- what the quick path knows about the rest of bnfold -----------------------------------------------------


def test_anchors_are_those_of_the_rules():
    from bnfold.rules import DEFAULT_RULES

    assert {op for rule in DEFAULT_RULES for op in rule.anchors} == quickscan.ANCHORS
    # an unmatched anchor other than a BN is never reported: no refusal where no rule matches
    assert all(not rule.report_unmatched for rule in DEFAULT_RULES if set(rule.anchors) - {quickscan.BATCHNORM})


def test_constants_are_those_of_the_engine():
    from bnfold import constants, graph, io

    assert quickscan.FOLDABLE_CONSTANT_OPS == constants.FOLDABLE_CONSTANT_OPS
    assert quickscan.LAZY_BYTES == io.LAZY_BYTES
    assert quickscan.MAX_CONSTANT_DEPTH == graph.MAX_CONSTANT_DEPTH
    for data_type, size in quickscan.ITEMSIZE.items():
        assert helper.tensor_dtype_to_np_dtype(data_type).itemsize == size
    assert quickscan.ELEM_TYPES == set(range(TensorProto.FLOAT, TensorProto.BFLOAT16 + 1))


def test_linear_ops_and_activations_are_those_of_the_rules():
    from bnfold.rules import _linear, activation_scale

    assert quickscan.LINEAR_OPS == set(_linear.KINDS)
    assert quickscan.ACTIVATIONS == {*activation_scale.HOMOGENEOUS, *activation_scale.NOT_HOMOGENEOUS}


def test_field_numbers_are_onnx_proto():
    assert wire.GRAPH_FIELD == onnx.ModelProto.DESCRIPTOR.fields_by_name["graph"].number
    assert wire.INITIALIZER_FIELD == onnx.GraphProto.DESCRIPTOR.fields_by_name["initializer"].number
    assert wire.RAW_DATA_FIELD == onnx.TensorProto.DESCRIPTOR.fields_by_name["raw_data"].number
    assert wire._EXTERNAL_DATA == onnx.TensorProto.DESCRIPTOR.fields_by_name["external_data"].number
    assert wire._DATA_LOCATION == onnx.TensorProto.DESCRIPTOR.fields_by_name["data_location"].number
    assert wire._KEY == onnx.StringStringEntryProto.DESCRIPTOR.fields_by_name["key"].number
    assert wire._VALUE == onnx.StringStringEntryProto.DESCRIPTOR.fields_by_name["value"].number
    assert wire._EXTERNAL == onnx.TensorProto.EXTERNAL


def test_the_walk_knows_fields_by_their_onnx_numbers():
    """Each message the walk reads allows only fields onnx.proto defines, with their wire types."""
    wire_types = {9: {2}, 12: {2}, 11: {2}, 3: {0, 2}, 5: {0, 2}, 14: {0, 2}, 13: {0, 2}, 4: {0, 2}, 2: {5, 2}, 1: {1, 2}}
    messages = [
        (quickscan._MODEL, onnx.ModelProto), (quickscan._GRAPH, onnx.GraphProto), (quickscan._NODE, onnx.NodeProto),
        (quickscan._ATTRIBUTE, onnx.AttributeProto), (quickscan._FUNCTION, onnx.FunctionProto),
        (quickscan._TENSOR, onnx.TensorProto), (quickscan._VALUE_INFO, onnx.ValueInfoProto),
        (quickscan._TYPE, onnx.TypeProto), (quickscan._TENSOR_TYPE, onnx.TypeProto.Tensor),
        (quickscan._SHAPE, onnx.TensorShapeProto), (quickscan._DIMENSION, onnx.TensorShapeProto.Dimension),
        (quickscan._OPSET, onnx.OperatorSetIdProto), (quickscan._STRING_ENTRY, onnx.StringStringEntryProto),
        (quickscan._ANNOTATION, onnx.TensorAnnotation),
    ]
    for (spec, singular), message in messages:
        fields = {f.number: f for f in message.DESCRIPTOR.fields}
        for number, allowed in spec.items():
            f = fields[number]
            assert set(allowed) <= wire_types[f.type], (message.__name__, f.name)
            merged = message is onnx.ModelProto and f.name == "graph"  # bnfold's writer streams the graph
            assert (number in singular) == (not _repeated(f) and not merged), (message.__name__, f.name)


def _repeated(f) -> bool:
    return f.is_repeated if hasattr(f, "is_repeated") else f.label == f.LABEL_REPEATED


# -- the command ---------------------------------------------------------------------------------------------


def _imported(args, cwd) -> set[str]:
    """Top-level packages ``bnfold ARGS`` imports (``python -X importtime``)."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "bnfold", *args], cwd=cwd,
                          capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    names = {line.split("|")[-1].strip().split(".")[0] for line in done.stderr.splitlines()
             if line.startswith("import time:") and "|" in line}
    return names, done


def test_a_clean_check_imports_neither_onnx_nor_numpy(tmp_path):
    path = write(tmp_path, "resnet_stack.folded", folded(onnx.load(REPO / "models" / "resnet_stack.onnx")))
    names, done = _imported(["check", str(path)], tmp_path)
    assert (done.returncode, done.stdout) == (0, "")
    assert not names & {"numpy", "onnx", "onnx_graphsurgeon", "ml_dtypes", "onnxruntime", "rich"}, names
    names, done = _imported(["check", str(REPO / "models" / "resnet_stack.onnx")], tmp_path)
    assert done.returncode == 1 and {"onnx", "onnx_graphsurgeon"} <= names  # a finding: the ordinary path


def test_settings_and_disabled_rules_do_not_bring_the_rules_in(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.bnfold]\ndisable = ["bn-linear"]\natol = 1e-4\n')
    path = write(tmp_path, "clean", clean_model())
    names, done = _imported(["check", "--disable", "conv-bn", str(path)], tmp_path)
    assert (done.returncode, done.stdout, done.stderr.count("bnfold:")) == (0, "", 0)
    assert not names & {"numpy", "onnx", "onnx_graphsurgeon"}, names
    names, done = _imported(["check", "--disable", "no-such-rule", str(path)], tmp_path)
    assert done.returncode == 2 and "--disable: unknown rule 'no-such-rule'" in done.stderr


def test_onnx_imported_after_the_quick_path_uses_its_checker_module(tmp_path):
    """The quick path loads onnx's C++ extension alone; a later ``import onnx`` (the ordinary path,
    for the next file) must work and see that very module."""
    clean = write(tmp_path, "clean", clean_model())
    script = f"""
import sys
from bnfold import check, quickscan
assert quickscan.is_clean({str(clean)!r}) and "onnx" not in sys.modules
found = check.check_file(check.FileCheck({str(REPO / "models" / "resnet_stack.onnx")!r}))
import onnx, onnx.checker
assert found.findings and found.error is None, found
assert onnx.onnx_cpp2py_export is sys.modules["onnx.onnx_cpp2py_export"]
onnx.checker.check_model(onnx.load({str(clean)!r}))
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert (done.returncode, done.stdout.strip()) == (0, "ok"), done.stderr
