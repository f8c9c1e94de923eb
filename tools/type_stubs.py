"""Write mypy-readable type stubs for the TensorRT or cuda-python module that this Python imports.

TensorRT cannot run on CI (no GPU, no native libraries), so ``gdino_ros/backends/tensorrt.py`` and
``gdino_ros/tools/build_engine.py`` are type-checked instead, against stubs made from the real binding
modules of each supported version (``tools/binding-wheels.txt``; run this script in the environment of
``test/trt_bindings.subprocess_env(label)``, where those modules import):

* ``tensorrt``: pybind11-stubgen describes the real ``tensorrt_bindings`` module.
  :func:`_repair_tensorrt_text` then fixes, mechanically, what stops mypy from reading the result:

  - a parameter named ``in`` (a keyword; pybind11 takes it positionally, so it is renamed ``in_``);
  - C++ type names that the bindings' docstrings leave in signatures (stubgen prints them as they are):
    ``nvonnxparser::IParserError``, ``nvinfer1::v_1_0::IGpuAllocator`` become the Python class of that
    name, or of that name without its ``I`` (``nvinfer1::IBuilder`` is ``Builder``), else ``typing.Any``;
    enum reprs used as defaults (``<DataType.FLOAT: 0>``) become ``...``;
  - a required parameter after parameters with defaults (a pybind11 overload that Python syntax forbids);
    the later ones get a ``...`` default;
  - the module-level ``bool`` (``DataType.BOOL``), which shadows the builtin in every annotation of the
    same file; annotations say ``builtins.bool`` instead;
  - ``capsule`` (10.3) or ``typing_extensions.CapsuleType`` (10.16, 11.x) for a C ``void*`` becomes
    ``typing.Any``: pybind11 converts a capsule, None or any bound object
    (``init_libnvinfer_plugins(logger, ...)`` passes a ``Logger``);
  - a class whose docstring says it "exposes a buffer interface using Python's buffer protocol"
    (``IHostMemory``) gets ``__buffer__``, which stubgen cannot see, so ``memoryview(host_memory)``
    type-checks as it runs.

  The files start with ``# mypy: ignore-errors``: semantic slips inside the stubs (e.g. an overload that
  differs only in a keyword) are stubgen's problem, while every error in the checked code is reported.
  ``tensorrt/__init__.pyi`` re-exports ``tensorrt_bindings`` as the ``tensorrt-cuXX`` meta-package does.
* ``cuda``: ``cuda.bindings.runtime`` is a compiled Cython module. pybind11-stubgen cannot describe it (it
  ends in a RecursionError on cuda-python 13.4.4, and Cython functions carry no typed signature object),
  but every function's docstring begins with its Python signature and lists the returned tuple, so
  :func:`write_cudart_stub` builds the stub from those: misspelt functions, wrong argument counts or
  keywords and wrong unpacking of the returned ``(error, value...)`` tuples then fail the check.

Usage: ``python tools/type_stubs.py {tensorrt,cuda} OUTDIR``, then run mypy with ``MYPYPATH=OUTDIR``.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import re
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

# A C parameter type in a cuda-python docstring signature ("size_t count") -> Python type.
_C_INT_TYPES = {"int", "unsigned int", "size_t", "unsigned long long", "long long", "unsigned long", "long"}
_RETURN_TYPE_NAMES = {"int": "int", "unsigned int": "int", "unsigned long long": "int", "size_t": "int",
                      "float": "float", "bytes": "bytes", "Any": "Any"}


def _repair_tensorrt_text(text: str, classes: set[str], module_defines_bool: bool) -> str:
    """Fix the syntax and name defects of one generated TensorRT stub file (see the module docstring)."""
    text = re.sub(r"\bin: ", "in_: ", text)
    text = re.sub(r"\b(?:nvinfer1|nvonnxparser)::(?:v_\d+_\d+::)?(\w+)",
                  lambda m: _python_class(m[1], classes), text)
    text = re.sub(r"\bdetail::accessor<[^>]*>", "typing.Any", text)
    text = re.sub(r"= <\w+\.\w+: -?\d+>", "= ...", text)
    text = re.sub(r"^(\s*def \w+\(.*\)) ->", _default_after_default, text, flags=re.M)
    text = re.sub(r"\b(typing_extensions\.CapsuleType|capsule)\b", "typing.Any", text)
    text = re.sub(r'^(class \w+.*:\n    """(?:(?!""").)*?buffer protocol(?:(?!""").)*?"""\n)',
                  r"\1    def __buffer__(self, flags: int, /) -> memoryview: ...\n", text, flags=re.M | re.S)
    if module_defines_bool:
        text = re.sub(r"^(\s*def .*)$", lambda m: re.sub(r"\bbool\b", "builtins.bool", m.group(1)),
                      text, flags=re.M)
        text = re.sub(r"^(\s+\w+: )bool$", r"\1builtins.bool", text, flags=re.M)
        text = text.replace("import typing\n", "import builtins\nimport typing\n", 1)
    if "typing.Any" in text and "\nimport typing\n" not in text:
        text = text.replace("from __future__ import annotations\n",
                            "from __future__ import annotations\nimport typing\n", 1)
    return text


def _python_class(cpp_name: str, classes: set[str]) -> str:
    """Name the bound class for a C++ class name: the same name, or without the interface ``I``."""
    for name in (cpp_name, cpp_name[1:] if cpp_name.startswith("I") else ""):
        if name in classes:
            return name
    return "typing.Any"


def _default_after_default(match: re.Match[str]) -> str:
    head = match.group(1)
    name, _, params = head.partition("(")
    parts = _split_params(params[: params.rindex(")")])
    seen_default = False
    fixed = []
    for part in parts:
        if "=" in part:
            seen_default = True
        elif seen_default and part.strip() not in ("*", "/") and not part.strip().startswith("*"):
            part = f"{part} = ..."
        fixed.append(part)
    return f"{name}({', '.join(fixed)}) ->"


def _split_params(params: str) -> list[str]:
    """Split a parameter list on top-level commas (not those inside brackets)."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in params:
        if char in "[(":
            depth += 1
        elif char in "])":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    if "".join(current).strip():
        parts.append("".join(current).strip())
    return parts


def write_tensorrt_stubs(dest: Path) -> None:
    """Describe the importable ``tensorrt_bindings`` with pybind11-stubgen; write the repaired stubs."""
    try:
        module = importlib.import_module("tensorrt_bindings.tensorrt")
    except ImportError as error:
        raise SystemExit(f"cannot describe TensorRT here ({error}); see test/trt_bindings.py") from None
    import pybind11_stubgen

    classes = {name for name in dir(module) if isinstance(getattr(module, name), type)}
    with tempfile.TemporaryDirectory() as raw:
        pybind11_stubgen.main(["--output-dir", raw, "--print-invalid-expressions-as-is", "tensorrt_bindings"])
        for stub in sorted(Path(raw).rglob("*.pyi")):
            text = stub.read_text()
            defines_bool = re.search(r"^bool: ", text, flags=re.M) is not None
            repaired = _repair_tensorrt_text(text, classes, defines_bool)
            ast.parse(repaired, filename=str(stub))  # a repair that leaves a syntax error fails here
            target = dest / stub.relative_to(raw)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("# mypy: ignore-errors\n" + repaired)
    package = dest / "tensorrt"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.pyi").write_text(
        "from tensorrt_bindings import *\nfrom tensorrt_bindings import __version__ as __version__\n")


def _annotation(text: str, module: ModuleType) -> str:
    """Keep a docstring annotation only if every name in it resolves; otherwise ``Any``."""
    names = set(re.findall(r"[A-Za-z_]\w*", text))
    known = {"Optional", "Any", "tuple", "list", "int", "float", "bytes", "str", "bool", "None"}
    return text if all(n in known or isinstance(getattr(module, n, None), type) for n in names) else "Any"


def _return_type(entry: str, module: ModuleType) -> str:
    kind = entry.split(" : ", 1)[1] if " : " in entry else entry
    if kind.startswith("cudaError_t"):
        return "cudaError_t"
    kind = kind.replace(":py:obj:`~.", "").replace("`", "")
    for c_name, py_name in _RETURN_TYPE_NAMES.items():
        kind = re.sub(rf"\b{c_name}\b", py_name, kind)
    return _annotation(kind, module)


def _function_stub(name: str, doc: str, module: ModuleType) -> str:
    # 12.6.2.post1 indents the numpydoc sections by four spaces, 13.x does not.
    indent = re.search(r"^([ \t]*)Returns\n", doc, re.M)
    if indent is not None and indent[1]:
        doc = re.sub(rf"^{indent[1]}", "", doc, flags=re.M)
    signature = doc.splitlines()[0]
    params = []
    for param in _split_params(signature[len(name) + 1: signature.rindex(")")]):
        param, eq, _ = param.partition("=")
        param, default = param.strip(), " = ..." if eq else ""
        if ":" in param:
            declared, ptype = (s.strip() for s in param.split(":", 1))
            params.append(f"{declared.split()[-1]}: {_annotation(ptype, module)}{default}")
        elif " " in param:
            ctype, pname = param.replace("*", "").rsplit(" ", 1)
            params.append(f"{pname}: {'int' if ctype in _C_INT_TYPES else 'Any'}{default}")
        else:
            params.append(f"{param}: Any{default}")
    returns = re.search(r"\nReturns\n-------\n(.*?)(?=\n\S[^\n]*\n-{3,}\n|\Z)", doc, re.S)
    if returns is None:
        result = "Any"
    else:
        entries = [line for line in returns.group(1).splitlines() if line and not line[0].isspace()]
        result = f"tuple[{', '.join(_return_type(e, module) for e in entries)}]"
    return f"def {name}({', '.join(params)}) -> {result}: ..."


def _class_stub(name: str, cls: type, module: ModuleType) -> str:
    """Describe an enum by its members, a struct by its real fields and methods (no catch-all)."""
    members: dict[str, Any] | None = getattr(cls, "__members__", None)
    if members is not None:
        lines = [f"class {name}:", "    name: str", "    value: int"]
        lines += [f"    {member}: ClassVar[{name}]" for member in members if member.isidentifier()]
        lines += ["    def __int__(self) -> int: ..."]
        return "\n".join(lines)
    lines = [f"class {name}:", "    def __init__(self, *args: Any, **kwargs: Any) -> None: ..."]
    if hasattr(cls, "__int__"):
        lines.append("    def __int__(self) -> int: ...")
    try:
        default = cls()
    except Exception:  # a struct that needs arguments: its fields stay Any
        default = None
    for attr in dir(cls):
        if attr.startswith("_"):
            continue
        if inspect.isdatadescriptor(inspect.getattr_static(cls, attr)):
            lines.append(f"    {attr}: {_field_type(default, attr, module)}")
        else:
            lines.append(f"    def {attr}(self, *args: Any, **kwargs: Any) -> Any: ...")
    return "\n".join(lines)


def _field_type(default: object, attr: str, module: ModuleType) -> str:
    """Name a struct field's type, read from a default-constructed struct (``Any`` when unknown)."""
    try:
        value = getattr(default, attr)
    except Exception:  # a field that cannot be read without data behind it
        return "Any"
    kind = type(value)
    if kind in (int, float, bytes, str, bool):
        return kind.__name__
    return kind.__name__ if getattr(module, kind.__name__, None) is kind else "Any"


def write_cudart_stub(dest: Path) -> None:
    """Write ``cuda/bindings/runtime.pyi`` built from the importable cuda-python's docstrings."""
    try:
        runtime = importlib.import_module("cuda.bindings.runtime")
    except ImportError:
        raise SystemExit("cuda.bindings does not import here; see test/trt_bindings.py") from None
    body = ["from typing import Any, ClassVar, Optional", ""]
    for name in sorted(dir(runtime)):
        obj = getattr(runtime, name)
        if name.startswith("_") or name in ("Any", "ClassVar", "Optional"):
            continue
        if isinstance(obj, type):
            body.append(_class_stub(name, obj, runtime))
        elif callable(obj) and (obj.__doc__ or "").startswith(f"{name}("):
            body.append(_function_stub(name, obj.__doc__, runtime))
        elif isinstance(obj, int):
            body.append(f"{name}: int")
    package = dest / "cuda" / "bindings"
    package.mkdir(parents=True, exist_ok=True)
    for init in (dest / "cuda" / "__init__.pyi", package / "__init__.pyi"):
        init.write_text("")
    text = "\n".join(body) + "\n"
    ast.parse(text)
    (package / "runtime.pyi").write_text(text)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("module", choices=("tensorrt", "cuda"), help="which importable module to describe")
    parser.add_argument("outdir", type=Path, help="directory to write the stubs into (use as MYPYPATH)")
    args = parser.parse_args(argv)
    args.outdir.mkdir(parents=True, exist_ok=True)
    (write_tensorrt_stubs if args.module == "tensorrt" else write_cudart_stub)(args.outdir)
    print(args.outdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
