"""Write mypy-readable type stubs for TensorRT and cuda-python into a directory.

TensorRT cannot be installed on CI, so ``gdino_ros/backends/tensorrt.py`` is type-checked instead of run.
That needs stubs that mypy can actually read:

* ``tensorrt-stubs`` (installed with ``--no-deps``) are generated from the bindings and have defects that
  stop mypy: a parameter named ``in``, a required parameter after defaults, ``...`` used as a type, an
  undefined ``capsule`` type, a module-level ``bool`` that shadows the builtin in every annotation, and an
  import of the absent ``tensorrt_libs``. :func:`repair_tensorrt_stubs` fixes a copy; the installed files
  stay untouched.
* ``cuda-python``'s ``cuda.bindings.runtime`` is a compiled module without stubs. Its docstrings carry
  each function's Python signature and return tuple, so :func:`write_cudart_stub` builds a stub from
  them: misspelt functions, wrong argument counts or keywords and wrong unpacking of the returned
  ``(error, value...)`` tuples then fail the check.

Usage: ``python tools/type_stubs.py OUTDIR``, then run mypy with ``MYPYPATH=OUTDIR``.
"""
from __future__ import annotations

import argparse
import ast
import importlib.metadata
import re
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

TENSORRT_STUB_PACKAGES = ("tensorrt", "tensorrt_bindings")

# A C parameter type in a cuda-python docstring signature ("size_t count") -> Python type.
_C_INT_TYPES = {"int", "unsigned int", "size_t", "unsigned long long", "long long", "unsigned long", "long"}
_RETURN_TYPE_NAMES = {"int": "int", "unsigned int": "int", "unsigned long long": "int", "size_t": "int",
                      "float": "float", "bytes": "bytes", "Any": "Any"}


def installed_tensorrt_stubs() -> Path:
    """Return the site-packages directory that holds the installed ``tensorrt-stubs`` files."""
    try:
        dist = importlib.metadata.distribution("tensorrt-stubs")
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit("tensorrt-stubs is not installed: pip install --no-deps tensorrt-stubs") from None
    root = Path(str(dist.locate_file("")))
    if not (root / "tensorrt_bindings" / "tensorrt.pyi").is_file():
        raise SystemExit(f"tensorrt-stubs is installed but {root}/tensorrt_bindings/tensorrt.pyi is missing")
    return root


def _repair_tensorrt_text(text: str, module_defines_bool: bool) -> str:
    """Fix the syntax and name defects of one generated TensorRT stub file."""
    # `in` is a keyword; the bindings accept the argument positionally, so the name is free.
    text = re.sub(r"\bin: ", "in_: ", text)
    # `...` used as a type (for types the generator could not name).
    text = re.sub(r"(:|->) \.\.\.(?=[,)]|:\n)", r"\1 typing.Any", text)
    # A required parameter after parameters with defaults: give the later ones a `...` default.
    text = re.sub(r"^(\s*def \w+\(.*\)) ->", _default_after_default, text, flags=re.M)
    # `capsule` is a pybind11 type name that the generator never defines.
    text = re.sub(r"\bcapsule\b", "typing.Any", text)
    if module_defines_bool:
        # The module exports `bool = DataType.BOOL`, which shadows the builtin in every annotation.
        text = re.sub(r"^(\s*def .*)$", lambda m: re.sub(r"\bbool\b", "builtins.bool", m.group(1)),
                      text, flags=re.M)
        text = re.sub(r"^(\s+\w+: )bool$", r"\1builtins.bool", text, flags=re.M)
        text = text.replace("import typing\n", "import builtins\nimport typing\n", 1)
    if "typing.Any" in text and "\nimport typing\n" not in text:
        text = text.replace("from __future__ import annotations\n",
                            "from __future__ import annotations\nimport typing\n", 1)
    # `tensorrt_libs` only ships with the real wheel (it holds the shared libraries).
    text = re.sub(r"^import tensorrt_libs as tensorrt_libs\n", "", text, flags=re.M)
    text = text.replace("'tensorrt_libs', ", "")
    return text


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
    parts, depth, current = [], 0, []
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


def repair_tensorrt_stubs(dest: Path) -> None:
    """Copy the installed TensorRT stubs into ``dest`` and repair them there."""
    source = installed_tensorrt_stubs()
    for package in TENSORRT_STUB_PACKAGES:
        target = dest / package
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source / package, target, ignore=shutil.ignore_patterns("__pycache__"))
        for stub in target.rglob("*.pyi"):
            text = stub.read_text()
            defines_bool = re.search(r"^bool: ", text, flags=re.M) is not None
            repaired = _repair_tensorrt_text(text, defines_bool)
            # Semantic slips inside the stubs (e.g. `__hash__ = None` on Dims) are the stubs' own problem;
            # errors in the code under test are still reported.
            stub.write_text("# mypy: ignore-errors\n" + repaired)
            ast.parse(repaired, filename=str(stub))  # a repair that leaves a syntax error fails here


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


def _class_stub(name: str, cls: type) -> str:
    members: dict[str, Any] | None = getattr(cls, "__members__", None)
    if members is not None:
        lines = [f"class {name}:", "    name: str", "    value: int"]
        lines += [f"    {member}: ClassVar[{name}]" for member in members if member.isidentifier()]
        lines += ["    def __int__(self) -> int: ..."]
        return "\n".join(lines)
    lines = [f"class {name}:", "    def __init__(self, *args: Any, **kwargs: Any) -> None: ...",
             "    def __getattr__(self, name: str) -> Any: ..."]
    if hasattr(cls, "__int__"):
        lines.append("    def __int__(self) -> int: ...")
    return "\n".join(lines)


def write_cudart_stub(dest: Path) -> None:
    """Write ``cuda/bindings/runtime.pyi`` built from the installed cuda-python's docstrings."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        raise SystemExit("cuda-python is not installed: pip install cuda-python") from None
    body = ["from typing import Any, ClassVar, Optional", ""]
    for name in sorted(dir(runtime)):
        obj = getattr(runtime, name)
        if name.startswith("_") or name in ("Any", "ClassVar", "Optional"):
            continue
        if isinstance(obj, type):
            body.append(_class_stub(name, obj))
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


def write_stubs(dest: Path) -> Path:
    """Write all stubs into ``dest`` (created if needed) and return it, ready for ``MYPYPATH``."""
    dest.mkdir(parents=True, exist_ok=True)
    repair_tensorrt_stubs(dest)
    write_cudart_stub(dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path, help="directory to write the stubs into (use as MYPYPATH)")
    args = parser.parse_args(argv)
    print(write_stubs(args.outdir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
