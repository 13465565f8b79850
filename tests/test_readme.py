"""The README tells the truth: its walkthrough runs as written (on small generated data), its
command line matches the parser, the files it points to exist, and it stays short."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bandstore.cli.main import build_parser
from bandstore.traces.formats import write_csv
from bandstore.traces.synth import synth

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    """The text of the README section whose heading starts with ``title``."""
    m = re.search(rf"^## {re.escape(title)}.*?$(.*?)(?=^## |\Z)", README, re.M | re.S)
    assert m, f"README has no section {title!r}"
    return m.group(1)


def blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, re.M | re.S)


def test_readme_is_short_and_links_what_exists():
    assert len(README.splitlines()) <= 220  # the issue: about 200 lines, at most ~220
    for target in ("benchmarks/README.md", "docs/ARCHITECTURE.md", "tools/rebuild.py"):
        assert target in README and (ROOT / target).exists(), target
    assert (ROOT / "docs" / "decisions").is_dir()
    # Every results file and script the benchmark index names exists.
    index = (ROOT / "benchmarks" / "README.md").read_text()
    for name in set(re.findall(r"`((?:experiments/)?\w+\.(?:md|png|py))`", index)):
        found = [p for p in (ROOT / "benchmarks").rglob(Path(name).name)]
        assert found, f"benchmarks/README.md names {name}, which does not exist"
    scripts = {p.name for p in (ROOT / "benchmarks").rglob("*.py")} - {"paths.py", "_bench.py"}
    assert {s for s in scripts if s not in index} == set()  # every benchmark is indexed


def test_the_two_commands_are_the_install_commands():
    two = section("Two commands")
    assert "pip install . && bandstore demo" in two
    assert 'pip install ".[test]" && python -m pytest -q' in two
    pyproject = (ROOT / "pyproject.toml").read_text()
    for extra in ("test", "torch", "plot"):
        assert re.search(rf"^{extra} = \[", pyproject, re.M), extra
    assert 'bandstore = "bandstore.cli:main"' in pyproject


def test_the_command_line_section_matches_the_parser(capsys):
    (cli,) = blocks(section("Command line"), "")
    parser = build_parser()
    for line in cli.splitlines():
        words = line.split("#")[0].split()
        if words[:1] == ["python"]:
            assert words[1] == "tools/rebuild.py"
            continue
        assert words[0] == "bandstore", line
        sub = [w for w in words[1:3] if re.fullmatch(r"[a-z-]+", w)]
        with pytest.raises(SystemExit) as exc:
            parser.parse_args([*(sub[:2] if sub[0] == "trace" else sub[:1]), "--help"])
        assert exc.value.code == 0
        help_text = capsys.readouterr().out
        for flag in re.findall(r"--[a-z-]+", line):
            assert flag in help_text, f"{line}: {flag} is not an option"


def _run_shell(block: str, cwd: Path, env: dict) -> None:
    """Run each command of a README ``sh`` block as the user would (``bandstore`` is the
    installed command: here the module; ``python`` this interpreter, in the checkout)."""
    for line in block.replace("\\\n", " ").splitlines():
        if not line.strip():
            continue
        words = shlex.split(line)
        out = None
        if ">" in words:
            k = words.index(">")
            words, out = words[:k], cwd / words[k + 1]
        if words[0] == "bandstore":
            cmd = [sys.executable, "-m", "bandstore.cli", *words[1:]]
        elif words[:2] == ["python", "tools/rebuild.py"]:
            cmd = [sys.executable, str(ROOT / "tools" / "rebuild.py"), *words[2:]]
        else:
            raise AssertionError(f"the walkthrough runs only bandstore and tools: {line}")
        done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{line}\n{done.stderr}"
        if out is not None:
            out.write_text(done.stdout)


@pytest.mark.slow
def test_the_walkthrough_runs(tmp_path, monkeypatch, capsys):
    # Small generated stand-ins for the user's files: two tables and a CSV log.
    trace = synth({"item": 3000, "user": 800}, 2500, pooling=6, zipf=0.9, community_size=16,
                  co_access=0.9, seed=3)  # fmt: skip
    rng = np.random.default_rng(0)
    for name, rows in (("item", 3000), ("user", 800)):
        np.save(tmp_path / f"{name}.npy", rng.standard_normal((rows, 16)).astype(np.float32))
    write_csv(trace, tmp_path / "log.csv")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    text = section("Walkthrough")
    shell, python = blocks(text, "sh"), blocks(text, "python")
    assert len(shell) == 2 and len(python) == 1
    for block in shell:
        _run_shell(block, tmp_path, env)
    monkeypatch.chdir(tmp_path)
    exec(compile(python[0], "README walkthrough", "exec"), {})
    printed = capsys.readouterr().out.split()
    before, after = float(printed[-3]), float(printed[-1])
    assert after <= before  # the tuned store reads no more blocks on the held-out queries
    assert (tmp_path / "logs").is_dir()  # the served traffic was recorded
