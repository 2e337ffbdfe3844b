"""The README's usage example runs as written, and the package installs only under `posformer.`"""

import re
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_usage_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.DOTALL)
    assert blocks, "the README has no Python example"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    assert (tmp_path / "ckpt" / "model.safetensors").exists()
    assert namespace["ids"].shape[0] == 2
    assert namespace["again"].config._attn_implementation == "sdpa"


def readme_training_commands() -> list[list[str]]:
    """The arguments of every complete `posformer-train` / `-m posformer.training` command in the README's shell
    blocks (continuation lines joined, comments dropped; commands ending in `...` are sketches and skipped, and
    `--config FILE` names the user's file)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.DOTALL):
        for command in block.replace("\\\n", " ").splitlines():
            command = command.split(" #", 1)[0].strip()
            match = re.search(r"(?:^posformer-train|-m posformer\.training)\s(.*)", command)
            if match and not command.endswith("...") and "--config" not in command:
                commands.append(shlex.split(match.group(1)))
    return commands


def test_readme_training_commands_parse():
    """Every training command the README shows is valid for the argument checks (e.g. it keeps as many
    checkpoints as it averages)."""
    from posformer.training.arguments import parse_args

    commands = readme_training_commands()
    assert any("wmt14" in command for command in commands), commands
    for command in commands:
        parse_args(command)


def test_ci_runs_the_readme_test_command_then_the_fast_suite_the_same_way():
    """`.ci/run`'s newest leg is exactly the README's test command, and its floor leg the same pytest options on the
    fast suite: the README's promise is what CI checks."""
    match = re.search(r"# the tests\n(.*)\n", (ROOT / "README.md").read_text())
    assert match, "README.md has no test command under a '# the tests' comment"
    readme_command = match.group(1).strip()
    ci_commands = [line.split("  #", 1)[0].strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert readme_command in ci_commands, f"{readme_command!r} is not a line of .ci/run"
    pytest_options = readme_command.split("python -m pytest", 1)[1]
    assert any(line.endswith(f'python -m pytest{pytest_options} -m "not slow"') for line in ci_commands), ci_commands


def test_wheel_holds_only_namespaced_packages(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = tmp_path.glob("posformer-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert top_level == {"posformer", next(n for n in top_level if n.endswith(".dist-info"))}, top_level
    for module in ("configuration/configuration_posformer.py", "modeling/modeling_posformer.py"):
        assert f"posformer/{module}" in names
    assert "posformer/modeling/position_encodings.py" in names and "posformer/training/__init__.py" in names
    assert not any("tests/" in name for name in names)
    # the metadata tells licence scanners what ships: Apache-2.0 code and the corpus under its catalogs' licences
    (metadata,) = (name for name in names if name.endswith(".dist-info/METADATA"))
    fields = zipfile.ZipFile(wheel).read(metadata).decode()
    expression = re.search(r"^License-Expression: (.*)$", fields, flags=re.MULTILINE).group(1)
    assert {"Apache-2.0", "GPL-2.0-only", "GPL-3.0-or-later", "LGPL-2.1-or-later"} <= set(expression.split(" AND "))
    licence_files = set(re.findall(r"^License-File: (.*)$", fields, flags=re.MULTILINE))
    assert licence_files == {"LICENSE", "training/corpus/en-de/README.md"}
    for path in licence_files:
        assert any(name.endswith(f".dist-info/licenses/{path}") for name in names), path
