"""The code a posformer checkpoint carries, so that a folder `save_pretrained` wrote is a complete Hub model repository.

Someone with only transformers installed loads it with `trust_remote_code=True`:

    AutoConfig / AutoTokenizer / AutoModelForSeq2SeqLM.from_pretrained("org/name", trust_remote_code=True)
    pipeline("translation", model="org/name", trust_remote_code=True)

For that, `config.json` names the classes (`auto_map`) and the translation pipeline (`custom_pipelines`), and the
files defining them sit beside the weights. Those files are posformer's own source (one source of truth), copied
flat and with their package-relative imports rewritten, because transformers' dynamic-module loader only follows
`from .name import ...` between files of one folder (`transformers.dynamic_module_utils.get_relative_imports`).
The rewrite is strict: a relative import it does not know raises, so a later edit cannot ship broken code.

`PosformerPreTrainedModel.save_pretrained` calls `save_remote_code` on every save.
"""

import ast
import os
import re
from pathlib import Path
from types import ModuleType

from transformers import PreTrainedConfig

from ..configuration import configuration_posformer, transformers_compat
from . import input_checks, modeling_posformer, pipeline_posformer, position_encodings
from .atomic_io import atomic_write_text

SOURCE_MODULES: tuple[ModuleType, ...] = (
    transformers_compat,
    configuration_posformer,
    modeling_posformer,
    input_checks,
    position_encodings,
    pipeline_posformer,
)
"""The modules that travel with a checkpoint, each saved as `<its file name>` in the checkpoint folder."""

RELATIVE_IMPORTS: dict[str, str] = {
    "..configuration.configuration_posformer": ".configuration_posformer",
    "..configuration.transformers_compat": ".transformers_compat",
    ".transformers_compat": ".transformers_compat",
    "..modeling.position_encodings": ".position_encodings",
    ".position_encodings": ".position_encodings",
    ".input_checks": ".input_checks",
}
"""Every package-relative import the travelling files may contain -> its flat spelling."""

AUTO_CLASSES: dict[str, type] = {
    "AutoConfig": configuration_posformer.PosformerConfig,
    "AutoModel": modeling_posformer.PosformerModel,
    "AutoModelForSeq2SeqLM": modeling_posformer.PosformerForConditionalGeneration,
}
PIPELINE_TASK = "translation"


def class_reference(cls: type) -> str:
    """`"<flat module>.<Class>"`, how `auto_map` and `custom_pipelines` name a class of the checkpoint's code."""
    return f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}"


def auto_map() -> dict[str, str]:
    """`config.auto_map`: Auto class -> `"<module>.<Class>"` in the checkpoint's code."""
    return {auto_class: class_reference(cls) for auto_class, cls in AUTO_CLASSES.items()}


def custom_pipelines() -> dict[str, dict]:
    """`config.custom_pipelines`, shaped as what `Pipeline.save_pretrained` writes for a registered pipeline."""
    return {
        PIPELINE_TASK: {
            "impl": class_reference(pipeline_posformer.TranslationPipeline),
            "pt": ["AutoModelForSeq2SeqLM"],
            "type": "text",
        }
    }


def add_remote_code_entries(config: PreTrainedConfig) -> None:
    """Point `config.auto_map` and `config.custom_pipelines` at the checkpoint's code (other entries are kept)."""
    config.auto_map = {**(getattr(config, "auto_map", None) or {}), **auto_map()}
    config.custom_pipelines = {**(getattr(config, "custom_pipelines", None) or {}), **custom_pipelines()}


def flat_source(path: Path, flat_names: set[str]) -> str:
    """The text of `path` with its package-relative imports rewritten to `from .name import ...`.

    Raises `ValueError` naming the file and line for a relative import not in `RELATIVE_IMPORTS`, one that
    would name a file not in `flat_names` (module names, no `.py`), or an absolute `posformer` import.
    """
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    for node in ast.walk(ast.parse(text, filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                check_not_posformer(alias.name, path, node.lineno)
        if not isinstance(node, ast.ImportFrom):
            continue
        spelled = "." * node.level + (node.module or "")
        if node.level == 0:
            check_not_posformer(spelled, path, node.lineno)
            continue
        flat = RELATIVE_IMPORTS.get(spelled)
        if flat is None or flat[1:] not in flat_names:
            raise ValueError(
                f"{path}:{node.lineno}: relative import `from {spelled} import ...` cannot travel with a checkpoint. "
                f"The files copied into it are {sorted(flat_names)}, and the known imports are "
                f"{sorted(RELATIVE_IMPORTS)}: import one of those (as `from .name import ...`), or add the file to "
                "`SOURCE_MODULES` and its import to `RELATIVE_IMPORTS` in posformer/modeling/remote_code.py."
            )
        pattern = re.compile(rf"\bfrom\s+{re.escape(spelled)}\s+import\b")
        line = lines[node.lineno - 1]
        if not pattern.search(line):
            raise ValueError(f"{path}:{node.lineno}: write `from {spelled} import` on one line so it can be rewritten.")
        lines[node.lineno - 1] = pattern.sub(f"from {flat} import", line, count=1)
    return "".join(lines)


def check_not_posformer(module: str, path: Path, lineno: int) -> None:
    """Raise `ValueError` for an absolute `posformer` import: where the checkpoint is loaded posformer may be absent."""
    if module == "posformer" or module.startswith("posformer."):
        raise ValueError(
            f"{path}:{lineno}: `{module}` is imported absolutely; a checkpoint's code must import its sibling files "
            "relatively (`from .name import ...`), since posformer may not be installed where it is loaded."
        )


def remote_code_file_names() -> list[str]:
    """Names of the code files `save_remote_code` writes."""
    return [Path(module.__file__).name for module in SOURCE_MODULES]


def remote_code_files() -> dict[str, str]:
    """File name -> text of the flat code a checkpoint carries (every rewrite checked before anything is written)."""
    paths = [Path(module.__file__) for module in SOURCE_MODULES]
    flat_names = {path.stem for path in paths}
    return {path.name: flat_source(path, flat_names) for path in paths}


def save_remote_code(config: PreTrainedConfig, save_directory: str | os.PathLike) -> None:
    """Write the checkpoint's code into `save_directory` and point `config` at it (`config.json` is the caller's)."""
    files = remote_code_files()
    directory = Path(save_directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        atomic_write_text(directory / name, text)
    add_remote_code_entries(config)


__all__ = [
    "add_remote_code_entries",
    "auto_map",
    "custom_pipelines",
    "remote_code_file_names",
    "remote_code_files",
    "save_remote_code",
]
