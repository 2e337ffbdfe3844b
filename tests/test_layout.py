"""The layout the README's Layout section promises: imports flow one way in training/ (commands -> loop ->
building blocks -> modeling/), the model never imports training, and the README's table lists every encoding."""

import ast
import re
from pathlib import Path

from posformer.modeling import POSITION_ENCODINGS

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = {
    "train",
    "export_cli",
    "translate_cli",
    "convert_cli",
    "finetune",
    "attention_maps",
    "build_corpus",
    "__main__",
}
LOOP = {"loop"}


def imported_siblings(source: str) -> set[str]:
    """The `posformer.training` modules that a module of training/ imports (relatively or absolutely)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 1:
                found |= {module.split(".")[0]} if module else {alias.name for alias in node.names}
            elif module.startswith("posformer.training."):
                found.add(module.split(".")[2])
    return found


def training_modules() -> dict[str, set[str]]:
    return {path.stem: imported_siblings(path.read_text()) for path in (ROOT / "training").glob("*.py")}


def test_imports_flow_from_commands_to_the_loop_to_the_building_blocks():
    modules = training_modules()
    assert COMMANDS | LOOP <= modules.keys()
    for name, imports in modules.items():
        if name == "__main__":
            assert imports == {"train"}
        elif name in COMMANDS:
            assert not imports & COMMANDS, f"command {name} imports the commands {imports & COMMANDS}"
        elif name in LOOP:
            assert not imports & COMMANDS, f"the loop imports the commands {imports & COMMANDS}"
        else:
            assert not imports & (COMMANDS | LOOP), f"building block {name} imports {imports & (COMMANDS | LOOP)}"


def test_the_import_check_sees_both_spellings_of_an_import():
    """Control: the parser finds relative and absolute imports of a command or the loop."""
    assert imported_siblings("from .train import main\nfrom . import loop") == {"train", "loop"}
    assert imported_siblings("from posformer.training.export_cli import cli") == {"export_cli"}


def test_the_model_never_imports_training():
    for path in [*(ROOT / "modeling").glob("*.py"), *(ROOT / "configuration").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert "training" not in (node.module or "") and "training" not in [a.name for a in node.names], path


def test_the_readme_table_has_one_row_per_registered_encoding():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Position encodings") :].split("\n\n")[1]
    rows = re.findall(r"^\| `(\w+)` \|", table, flags=re.MULTILINE)
    assert rows == list(POSITION_ENCODINGS)


def test_the_readme_layout_names_every_module():
    """Every module of modeling/ and training/ has its line in the README's Layout section."""
    layout = (ROOT / "README.md").read_text().split("## Layout", 1)[1]
    modules = [path for folder in ("modeling", "training") for path in (ROOT / folder).glob("*.py")]
    unnamed = [path.name for path in modules if path.stem not in ("__init__", "__main__") and
               f"`{path.name}`" not in layout]  # fmt: skip
    assert not unnamed, f"README's Layout section does not name {unnamed}"
