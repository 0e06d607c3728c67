"""A small mutation-testing driver: break one module one way at a time, see if its tests notice.

mutmut 3 copies the code under ``mutants/`` and expects a ``src``-style layout; colhead's
repository root *is* the package, so this driver does the classic job directly instead. For one
module it parses the source with ``ast``, lists every site of these classic mutations:

* comparison flips (``==``/``!=``, ``<``/``>=``, ``<=``/``>``, ``in``/``not in``, ``is``/``is not``)
* arithmetic swaps (``+``/``-``, ``*``/``/``, ``//``/``/``, ``%``/``*``, ``**``/``*``),
  also in ``+=``
* ``and``/``or`` swaps, ``not x`` -> ``x``
* constant changes (int ``n`` -> ``n + 1``, float ``x`` -> ``x * 2`` or 1.0 for 0.0,
  ``True``/``False`` swap; strings are left alone: they are almost all messages)
* return-value replacement (``return x`` -> ``return None``)
* removed raises (``raise X`` -> ``pass``)
* removed calls (a bare call statement ``f(...)`` -> ``pass``)

then, one mutant at a time, writes the mutated module over the file (``ast.unparse``, so the
original is also checked through ``ast.unparse`` first), runs the module's fast tests with a
timeout, and restores the file. A test failure or a timeout kills the mutant; a green run means
it survived. To save the ~8 s of importing torch/scikit-learn/h5py per mutant on a busy machine,
the driver imports those once and forks a child per mutant, which imports colhead afresh from
the mutated file and runs ``pytest.main`` (no ``.pyc`` is written or read for the module).

Run it on a clone, never in a working tree others edit (it rewrites the module in place, and
restores it even on Ctrl-C)::

    git clone -q . /tmp/mut && mkdir -p /tmp/mut_pp && ln -s /tmp/mut /tmp/mut_pp/colhead
    cd /tmp/mut && PYTHONPATH=/tmp/mut_pp PYTHONDONTWRITEBYTECODE=1 OMP_NUM_THREADS=1 \\
        python bench/mutants.py heads/_stats.py --tests "tests/test_report.py -k 'intervals \\
        or natural'" --sample 20 --seed 0 --budget 300 --out /tmp/mut.jsonl

(the symlink makes ``import colhead`` load the clone: PYTHONPATH wins over an editable install).

Issue 16's run (20 sites drawn per module with seed 0, 300 s per module; the "after" run re-ran
the survivors with ``or mutants`` added to ``-k`` and tests/test_mutants_{heads,cache}.py added):

    heads/_stats.py       tests/test_report.py -k 'intervals or natural'
    heads/_knn.py         tests/test_heads.py -k knn
    heads/_ncm.py         tests/test_heads.py -k ncm
    heads/_logreg.py      tests/test_heads.py -k logreg
    heads/_validation.py  tests/test_heads.py -k 'logreg or mlp'
    heads/_registry.py    tests/test_heads.py -k 'registry or make_head or protocol or clone'
    cache/_format.py      tests/test_reader_speed_paths.py tests/test_manage.py
                          -k 'not readers_see and not many_writers'
    cache/_files.py       tests/test_manage.py tests/test_cache_hardening.py
                          -k 'gc or ls or fsync or merge'
    cache/_lock.py        tests/test_manage.py -k 'lock or writer or ls or gc'
    cache/_structure.py   tests/test_cache_hardening.py
    cache/_export.py      tests/test_export.py

``--sample N`` draws N sites at random (``--seed``, default 0) when there are more; ``--only``
re-runs chosen mutant ids (to show a new test kills them); ``--list`` prints the sites.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import random
import shlex
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_CMP_SWAP = {
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Lt: ast.GtE,
    ast.GtE: ast.Lt,
    ast.LtE: ast.Gt,
    ast.Gt: ast.LtE,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}
_BIN_SWAP = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
    ast.FloorDiv: ast.Div,
    ast.Mod: ast.Mult,
    ast.Pow: ast.Mult,
}


def _docstring_nodes(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def _in_fstring(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            out.update(id(n) for n in ast.walk(node))
    return out


def sites(tree: ast.AST) -> list[tuple[ast.AST, str, int]]:
    """Every (node, kind, line) this driver can mutate, in a stable walk order."""
    skip = _docstring_nodes(tree) | _in_fstring(tree)
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Compare):
            ops = enumerate(node.ops)
            out += [(node, f"cmp{i}", line) for i, op in ops if type(op) in _CMP_SWAP]
        elif isinstance(node, (ast.BinOp, ast.AugAssign)) and type(node.op) in _BIN_SWAP:
            out.append((node, "binop", line))
        elif isinstance(node, ast.BoolOp):
            out.append((node, "boolop", line))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            out.append((node, "not", line))
        elif isinstance(node, ast.Constant) and isinstance(node.value, (bool, int, float)):
            out.append((node, "const", line))
        elif isinstance(node, ast.Return) and node.value is not None:
            if not (isinstance(node.value, ast.Constant) and node.value.value is None):
                out.append((node, "return", line))
        elif isinstance(node, ast.Raise):
            out.append((node, "raise", line))
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            out.append((node, "call", line))
    return out


def _mutate(node: ast.AST, kind: str) -> tuple[ast.AST, str]:
    """The replacement node and a short description."""
    if kind.startswith("cmp"):
        i = int(kind[3:])
        new = copy.copy(node)
        new.ops = list(node.ops)
        old = new.ops[i]
        new.ops[i] = _CMP_SWAP[type(old)]()
        return new, f"{type(old).__name__} -> {type(new.ops[i]).__name__}"
    if kind == "binop":
        new = copy.copy(node)
        new.op = _BIN_SWAP[type(node.op)]()
        return new, f"{type(node.op).__name__} -> {type(new.op).__name__}"
    if kind == "boolop":
        new = copy.copy(node)
        new.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        return new, f"{type(node.op).__name__} -> {type(new.op).__name__}"
    if kind == "not":
        return node.operand, "not x -> x"
    if kind == "const":
        v = node.value
        if isinstance(v, bool):
            nv = not v
        elif isinstance(v, int):
            nv = v + 1
        else:
            nv = v * 2 if v else 1.0
        return ast.Constant(nv), f"{v!r} -> {nv!r}"
    if kind == "return":
        return ast.Return(ast.Constant(None)), "return x -> return None"
    if kind in ("raise", "call"):
        return ast.Pass(), f"{kind} removed"
    raise AssertionError(kind)


class _Replace(ast.NodeTransformer):
    def __init__(self, target: ast.AST, new: ast.AST):
        self.target, self.new = target, new

    def visit(self, node):
        if node is self.target:
            return self.new
        return self.generic_visit(node)


def mutant_source(source: str, index: int) -> tuple[str, str, int]:
    """Source of mutant ``index`` of ``source``, its description and line."""
    tree = ast.parse(source)
    node, kind, line = sites(tree)[index]
    new, desc = _mutate(node, kind)
    tree = _Replace(node, ast.copy_location(new, node)).visit(tree)
    return ast.unparse(ast.fix_missing_locations(tree)), desc, line


def _preimport() -> None:
    """Import the heavy third-party modules once, before forking (never colhead itself)."""
    for name in (
        "numpy", "scipy.stats", "torch", "h5py", "PIL.Image", "pytest", "sklearn.base",
        "sklearn.linear_model", "sklearn.model_selection", "sklearn.neighbors",
        "sklearn.utils.estimator_checks", "pyarrow", "pyarrow.parquet", "hypothesis",
    ):  # fmt: skip
        try:
            __import__(name)
        except ImportError:
            pass


def run_tests(test_args: list[str], timeout: float) -> tuple[str, float]:
    """Fork, run pytest on the file as it is now, return ("killed"|"survived"|"timeout", s)."""
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # child: fresh colhead import from disk, quiet pytest, exit with its code
        try:
            os.setpgid(0, 0)
            fd = os.open(os.devnull, os.O_WRONLY)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            import pytest

            rc = pytest.main(["-x", "-q", "-p", "no:cacheprovider", *test_args])
        except BaseException:
            rc = 99
        os._exit(int(rc))
    deadline = t0 + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            rc = os.waitstatus_to_exitcode(status)
            return ("survived" if rc == 0 else "killed"), time.perf_counter() - t0
        if time.perf_counter() > deadline:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
            return "timeout", time.perf_counter() - t0
        time.sleep(0.05)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("module", help="module path relative to the repository root")
    ap.add_argument("--tests", required=True, help="pytest arguments (space separated)")
    ap.add_argument("--sample", type=int, default=0, help="draw this many sites (0: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default="", help="comma-separated mutant ids to run")
    ap.add_argument("--budget", type=float, default=600, help="seconds for this module")
    ap.add_argument("--timeout", type=float, default=0, help="per mutant (0: 3x baseline+10)")
    ap.add_argument("--out", default="", help="append one JSON line per mutant here")
    ap.add_argument("--list", action="store_true", help="print the sites and exit")
    args = ap.parse_args(argv)

    path = ROOT / args.module
    original = path.read_text()
    n = len(sites(ast.parse(original)))
    if args.list:
        for i in range(n):
            src, desc, line = mutant_source(original, i)
            print(f"{i:4d}  line {line:4d}  {desc}")
        return 0
    ids = list(range(n))
    if args.only:
        ids = [int(x) for x in args.only.split(",")]
    elif args.sample and args.sample < n:
        ids = sorted(random.Random(args.seed).sample(ids, args.sample))
    sys.dont_write_bytecode = True
    for pyc in path.parent.glob(f"__pycache__/{path.stem}.*.pyc"):
        pyc.unlink()
    _preimport()
    test_args = shlex.split(args.tests)

    restore = lambda *_: (path.write_text(original), sys.exit(130))  # noqa: E731
    signal.signal(signal.SIGINT, restore)
    signal.signal(signal.SIGTERM, restore)
    counts = {"killed": 0, "survived": 0, "timeout": 0}
    t_start = time.perf_counter()
    out = open(args.out, "a") if args.out else None
    try:
        # the unmutated module through ast.unparse must pass, or every "kill" means nothing
        path.write_text(ast.unparse(ast.parse(original)))
        verdict, base = run_tests(test_args, timeout=max(args.budget, 300))
        if verdict != "survived":
            print(f"{args.module}: the tests fail without any mutation ({verdict}); stopping.")
            return 2
        timeout = args.timeout or 3 * base + 10
        print(f"{args.module}: {n} sites, running {len(ids)}; baseline {base:.1f} s", flush=True)
        ran = 0
        for i in ids:
            if time.perf_counter() - t_start > args.budget:
                break
            src, desc, line = mutant_source(original, i)
            path.write_text(src)
            verdict, secs = run_tests(test_args, timeout)
            ran += 1
            counts[verdict] += 1
            rec = {"module": args.module, "id": i, "line": line, "mutation": desc,
                   "verdict": verdict, "seconds": round(secs, 1)}  # fmt: skip
            if out:
                out.write(json.dumps(rec) + "\n")
                out.flush()
            if verdict == "survived":
                print(f"  SURVIVED #{i} line {line}: {desc}", flush=True)
    finally:
        path.write_text(original)
        if out:
            out.close()
    killed = counts["killed"] + counts["timeout"]
    rate = 100 * killed / ran if ran else 0.0
    print(
        f"{args.module}: ran {ran}/{len(ids)} (of {n} sites), killed {killed} "
        f"({counts['timeout']} by timeout), survived {counts['survived']}, kill rate {rate:.0f}%"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
