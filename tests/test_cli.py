"""The command line as a script sees it: help, pipes, escapes, offline failure, the demo."""

import argparse
import json
import os
import subprocess
import sys

import pytest

from colhead.cli import _parser, main, printable, printable_name
from conftest import PY


def _commands(parser, prefix=()):
    """Every (command words, parser) pair, sub-commands included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name), sub
                yield from _commands(sub, (*prefix, name))


def test_every_help_line_shows_its_default_and_json_is_documented():
    missing = []
    for words, p in _commands(_parser()):
        text = " ".join(p.format_help().split())  # lines wrap anywhere
        for a in p._actions:
            if not a.option_strings or a.help == argparse.SUPPRESS:
                continue
            if a.dest == "json" and not a.help:
                missing.append((words, "--json without help"))
            quiet = a.default is None or a.default is False or a.default == argparse.SUPPRESS
            if not quiet and f"default: {a.default}" not in text:
                missing.append((words, a.option_strings[-1], a.default))
    assert not missing


def test_broken_pipe_exits_quietly(tmp_path):
    # The reader closes its end before colhead writes: the write fails with EPIPE.
    r, w = os.pipe()
    os.close(r)
    proc = subprocess.run(
        [PY, "-m", "colhead", "columns", "--json"], stdout=w, stderr=subprocess.PIPE, timeout=120
    )
    os.close(w)
    assert proc.returncode == 0, proc.stderr
    assert b"Broken pipe" not in proc.stderr and b"Traceback" not in proc.stderr


def test_broken_pipe_in_process(monkeypatch, capsys):
    class Closed:
        def write(self, s):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", Closed())
    assert main(["columns", "--json"]) == 0
    assert "error" not in capsys.readouterr().err


def test_control_characters_are_escaped():
    assert printable("a\x1b[31mred\x07\tb\n") == "a\\x1b[31mred\\x07\tb\n"
    assert printable_name("x\ty\nz\x9b") == "x\\ty\\nz\\x9b"
    assert printable("café ü") == "café ü"  # letters are not control characters


def test_offline_fails_a_timm_column_without_touching_the_network(tmp_path):
    # COLHEAD_OFFLINE alone (no HF_HUB_OFFLINE) must keep huggingface_hub off the network: any
    # socket connection or name lookup is recorded, and there must be none.
    script = f"""
import socket, json
calls = []
socket.socket.connect = lambda self, addr: calls.append(str(addr))
socket.getaddrinfo = lambda *a, **k: calls.append(str(a[:2])) or []
from colhead.cli import main
rc = main(["extract", "--column", "timm/resnet18.a1_in1k", "--data", "digits", "--split", "test",
           "--out", {str(tmp_path / "x.h5")!r}, "--no-progress"])
print(json.dumps({{"rc": rc, "calls": calls}}))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env["COLHEAD_OFFLINE"] = "1"
    proc = subprocess.run([PY, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got == {"rc": 1, "calls": []}, proc.stderr
    assert "cannot load its weights" in proc.stderr


@pytest.mark.slow
def test_demo_quick(tmp_path, monkeypatch, capsys):
    """The demo end to end: default column over elpv, every report file (minutes on 2 cores)."""
    pytest.importorskip("elpv_dataset")
    monkeypatch.chdir(tmp_path)
    args = ["demo", "--quick", "--cache-dir", str(tmp_path / "c"), "--no-progress"]
    assert main(args) == 0
    out = tmp_path / "reports" / "elpv"
    res = json.loads((out / "results.json").read_text())
    assert res["pretrained"] and res["best"]["selected_on"] == "validation"
    for r in res["rows"]:
        if r["shots"] == "all":  # every method learns something on elpv's 4 classes
            assert r["balanced_accuracy"] > 0.3, r
    for png in ("accuracy_vs_shots", "accuracy_by_method", "embedding_map", "per_class_accuracy",
                "confusion_best_head", "misclassified", "train_time"):  # fmt: skip
        assert (out / f"{png}.png").stat().st_size > 1000
    text = (out / "report.md").read_text()
    assert text.startswith("# efficientnet_lite0 (pretrained) on elpv")
    capsys.readouterr()


def test_demo_ranks_the_larger_lite_columns_only_where_installed(monkeypatch):
    from pathlib import Path

    from colhead.cli._heads import DEMO_COLUMNS, demo_columns
    from colhead.extract import _columns

    real = _columns._lite_file
    monkeypatch.setattr(_columns, "_lite_file", lambda n: real(0) if n in (0, 1) else None)
    assert demo_columns() == f"{DEMO_COLUMNS},efficientnet_lite1"
    assert DEMO_COLUMNS.split(",") == ["efficientnet_lite0", "efficientnet_lite0:stages"]
    monkeypatch.setattr(_columns, "_lite_file", lambda n: Path("/nonexistent") if n else real(0))
    assert demo_columns() == f"{DEMO_COLUMNS},efficientnet_lite1,efficientnet_lite2"
    monkeypatch.setattr(_columns, "_lite_file", lambda n: real(0) if n == 0 else None)
    assert demo_columns() == DEMO_COLUMNS
