"""A checkpoint posformer saves is a complete Hub model repository: it loads, generates and translates through
`trust_remote_code=True` in a Python that cannot import posformer, and gives the same numbers as posformer."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM, PreTrainedTokenizerBase, modeling_utils
from transformers.dynamic_module_utils import get_relative_imports

from conftest import tiny_config
from posformer.configuration import PosformerConfig
from posformer.modeling import (
    PosformerForConditionalGeneration,
    PosformerModel,
    PosformerPreTrainedModel,
    TranslationPipeline,
    remote_code,
)
from posformer.modeling.remote_code import remote_code_file_names
from posformer.training.data import train_bpe_tokenizer

REPO_ID = "org/name"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
CODE_FILES = {
    "transformers_compat.py",
    "configuration_posformer.py",
    "modeling_posformer.py",
    "input_checks.py",
    "position_encodings.py",
    "pipeline_posformer.py",
}
SENTENCES = [
    "the cat sat on the mat",
    "a dog runs in the park",
    "we read a book at home",
    "the sun is warm today",
    "she writes a long letter",
    "they play music at night",
    "the house has a red door",
    "he drinks tea with milk",
    "birds sing in the morning",
    "the train leaves at noon",
    "my friend lives by the sea",
    "the old man walks slowly",
]
SOURCES = ["the cat reads a book", "a dog sings at night", "the sun"]
GENERATION = {"num_beams": 2, "max_new_tokens": 6}

# Runs in a fresh Python where `import posformer` fails; argv: the folder with inputs.pt, writes outputs.pt there.
LOADER = """
import sys
sys.modules["posformer"] = None  # posformer is not installed here
try:
    import posformer
except ImportError:
    pass
else:
    raise SystemExit("posformer is importable in the loading process")

import torch
from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer, pipeline

folder = sys.argv[1]
data = torch.load(f"{folder}/inputs.pt")
repo, generation = data["repo"], data["generation"]
config = AutoConfig.from_pretrained(repo, trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained(repo, trust_remote_code=True)
model = AutoModelForSeq2SeqLM.from_pretrained(repo, trust_remote_code=True)
# saved again before any pipeline is loaded, so the pipeline code is not yet beside the model's code
model.save_pretrained(f"{folder}/resaved")
tokenizer.save_pretrained(f"{folder}/resaved")
by_task = pipeline("translation", model=repo, trust_remote_code=True, num_beams=generation["num_beams"])
inferred = pipeline(model=repo, trust_remote_code=True)
with torch.no_grad():
    logits = model(**data["inputs"], decoder_input_ids=data["decoder_input_ids"]).logits
scored = {"output_scores": True, "return_dict_in_generate": True}
outputs = {
    "config_class": f"{type(config).__module__}.{type(config).__name__}",
    "model_class": f"{type(model).__module__}.{type(model).__name__}",
    "pipeline_class": f"{type(by_task).__module__}.{type(by_task).__name__}",
    "position_encoding": model.config.position_encoding,
    "token_ids": tokenizer(data["sources"])["input_ids"],
    "logits": logits,
    "generated": model.generate(**data["inputs"], **generation),
    "cached": model.generate(**data["inputs"], **generation, **scored),
    "uncached": model.generate(**data["inputs"], **generation, **scored, use_cache=False),
    "by_task": by_task(data["sources"], batch_size=2, max_new_tokens=generation["max_new_tokens"]),
    "inferred": inferred(data["sources"], batch_size=2, **generation),
    "single": inferred(data["sources"][0], **generation),
}
resaved = pipeline(model=f"{folder}/resaved", trust_remote_code=True)
outputs["resaved"] = resaved(data["sources"], batch_size=2, **generation)
torch.save(outputs, f"{folder}/outputs.pt")
"""


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerBase:
    return train_bpe_tokenizer(SENTENCES * 3, vocab_size=80)


def tiny_model(position_encoding: str, tokenizer: PreTrainedTokenizerBase) -> PosformerForConditionalGeneration:
    """A random tiny model whose translations are not empty: wide initial weights, so that outputs depend on the
    input, and no special tokens but `</s>` generated (they decode to nothing)."""
    torch.manual_seed(0)
    config = tiny_config(position_encoding, vocab_size=len(tokenizer), init_std=0.3)
    model = PosformerForConditionalGeneration(config).eval()
    model.generation_config.suppress_tokens = [tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.unk_token_id]
    return model


def save_to_hub_cache(hf_home: Path, model: PosformerPreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> Path:
    """Save model and tokenizer as the snapshot `COMMIT` of `REPO_ID` in a Hub cache under `hf_home`."""
    repository = hf_home / "hub" / f"models--{REPO_ID.replace('/', '--')}"
    snapshot = repository / "snapshots" / COMMIT
    model.save_pretrained(snapshot)
    tokenizer.save_pretrained(snapshot)
    (repository / "refs").mkdir(parents=True)
    (repository / "refs" / "main").write_text(COMMIT)
    return snapshot


def run_without_posformer(tmp_path: Path, hf_home: Path) -> dict:
    """Run `LOADER` offline on the Hub cache in `hf_home`, posformer not importable; return its outputs."""
    script = tmp_path / "load_without_posformer.py"
    script.write_text(LOADER)
    environment = {
        **os.environ,
        "HF_HOME": str(hf_home),
        "HF_HUB_OFFLINE": "1",
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
        "PYTHONPATH": "",
    }
    completed = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], cwd=tmp_path, env=environment, capture_output=True, text=True
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return torch.load(tmp_path / "outputs.pt", weights_only=False)


@pytest.mark.parametrize("position_encoding", ["sinusoidal", "t5"])  # adds to the embeddings / biases the scores
def test_checkpoint_loads_generates_and_translates_without_posformer(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase, position_encoding: str
) -> None:
    model = tiny_model(position_encoding, tokenizer)
    snapshot = save_to_hub_cache(tmp_path / "hf_home", model, tokenizer)
    inputs = dict(tokenizer(SOURCES, return_tensors="pt", padding=True))
    with torch.no_grad():
        expected_logits = model(**inputs, decoder_input_ids=inputs["input_ids"][:, :4]).logits
    expected_generated = model.generate(**inputs, **GENERATION)
    local = TranslationPipeline(model=model, tokenizer=tokenizer, device="cpu")
    expected_texts = [record["translation_text"] for record in local(SOURCES, batch_size=2, **GENERATION)]
    assert all(expected_texts), expected_texts
    torch.save(
        {
            "inputs": inputs,
            "decoder_input_ids": inputs["input_ids"][:, :4],
            "sources": SOURCES,
            "repo": REPO_ID,
            "generation": GENERATION,
        },
        tmp_path / "inputs.pt",
    )

    outputs = run_without_posformer(tmp_path, tmp_path / "hf_home")

    for key in ("config_class", "model_class", "pipeline_class"):  # the checkpoint's own copy of the code
        assert outputs[key].startswith("transformers_modules."), outputs[key]
    assert outputs["model_class"].endswith("modeling_posformer.PosformerForConditionalGeneration")
    assert outputs["pipeline_class"].endswith("pipeline_posformer.TranslationPipeline")
    assert outputs["position_encoding"] == position_encoding
    assert outputs["token_ids"] == tokenizer(SOURCES)["input_ids"]
    torch.testing.assert_close(outputs["logits"], expected_logits, rtol=0, atol=0)
    assert torch.equal(outputs["generated"], expected_generated)
    # the cache works under the installed transformers: cached beam search is uncached beam search, score for score
    cached, uncached = outputs["cached"], outputs["uncached"]
    assert torch.equal(cached.sequences, expected_generated) and torch.equal(uncached.sequences, expected_generated)
    torch.testing.assert_close(torch.stack(cached.scores), torch.stack(uncached.scores), atol=1e-4, rtol=1e-4)
    for form in ("by_task", "inferred", "resaved"):  # resaved: the remote-code model saved again, pipeline too
        assert outputs[form] == [{"translation_text": text} for text in expected_texts], form
    assert outputs["single"] == [{"translation_text": expected_texts[0]}]

    config = json.loads((snapshot / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_posformer.PosformerConfig",
        "AutoModel": "modeling_posformer.PosformerModel",
        "AutoModelForSeq2SeqLM": "modeling_posformer.PosformerForConditionalGeneration",
    }
    assert config["custom_pipelines"] == {
        "translation": {
            "impl": "pipeline_posformer.TranslationPipeline",
            "pt": ["AutoModelForSeq2SeqLM"],
            "type": "text",
        }
    }


@pytest.mark.parametrize("model_class", [PosformerModel, PosformerForConditionalGeneration])
def test_saved_code_imports_only_its_own_files(tmp_path: Path, model_class: type[PosformerPreTrainedModel]) -> None:
    model_class(tiny_config("alibi")).save_pretrained(tmp_path)
    saved = {path.name for path in tmp_path.glob("*.py")}
    assert saved == CODE_FILES
    modules = {Path(name).stem for name in saved}
    for name in saved:
        path = tmp_path / name
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.level == 1 and node.module in modules, f"{name}:{node.lineno}"
            imported = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and not node.level:
                imported = [node.module]
            assert not [module for module in imported if module.split(".")[0] == "posformer"], f"{name}:{node.lineno}"
        assert set(get_relative_imports(str(path))) <= modules  # what transformers' loader will look for
    # the code is posformer's source, with only the import lines changed
    package = Path(remote_code.__file__).parent
    original = (package / "modeling_posformer.py").read_text().splitlines()
    copied = (tmp_path / "modeling_posformer.py").read_text().splitlines()
    changed = [(before, after) for before, after in zip(original, copied, strict=True) if before != after]
    assert changed == [
        (
            "from ..configuration.configuration_posformer import PosformerConfig",
            "from .configuration_posformer import PosformerConfig",
        ),
        (
            "from ..configuration.transformers_compat import CACHE_NAME, hidden_states_recorder, resolve_cache",
            "from .transformers_compat import CACHE_NAME, hidden_states_recorder, resolve_cache",
        ),
    ]
    assert json.loads((tmp_path / "config.json").read_text())["auto_map"] == remote_code.auto_map()


@pytest.mark.parametrize(
    "line",
    [
        "from ..training.data import train_bpe_tokenizer",
        "from .remote_code import save_remote_code",
        "from . import position_encodings",
        "from .sub.module import name",
        "import posformer.modeling",
        "from posformer.modeling import PosformerModel",
    ],
)
def test_rewrite_refuses_imports_that_cannot_travel(tmp_path: Path, line: str) -> None:
    source = tmp_path / "modeling_posformer.py"
    source.write_text(f"import torch\n\n\ndef helper():\n    {line}\n")
    with pytest.raises(ValueError, match=r"modeling_posformer\.py:5"):
        remote_code.flat_source(source, {"configuration_posformer", "modeling_posformer", "position_encodings"})


def test_rewrite_refuses_a_known_import_of_a_file_not_copied(tmp_path: Path) -> None:
    source = tmp_path / "modeling_posformer.py"
    source.write_text("from .position_encodings import POSITION_ENCODINGS\n")
    with pytest.raises(ValueError, match="position_encodings"):
        remote_code.flat_source(source, {"modeling_posformer"})


def test_in_process_load_returns_posformer_classes(tmp_path: Path) -> None:
    model = PosformerForConditionalGeneration(tiny_config("rope"))
    model.save_pretrained(tmp_path)
    assert type(AutoConfig.from_pretrained(tmp_path)) is PosformerConfig
    assert type(AutoModelForSeq2SeqLM.from_pretrained(tmp_path)) is PosformerForConditionalGeneration
    assert type(PosformerForConditionalGeneration.from_pretrained(tmp_path)) is PosformerForConditionalGeneration
    PosformerModel(tiny_config("rope")).save_pretrained(tmp_path / "base")
    assert type(AutoModel.from_pretrained(tmp_path / "base")) is PosformerModel


def test_translation_pipeline_decodes_what_generate_returns(tokenizer: PreTrainedTokenizerBase) -> None:
    model = tiny_model("rope", tokenizer)
    translator = TranslationPipeline(model=model, tokenizer=tokenizer, device="cpu", num_beams=2)
    records = translator(SOURCES, batch_size=3, max_new_tokens=5)
    for source, record in zip(SOURCES, records, strict=True):
        generated = model.generate(**tokenizer(source, return_tensors="pt"), num_beams=2, max_new_tokens=5)
        assert record == {"translation_text": tokenizer.decode(generated[0], skip_special_tokens=True)}
    several = translator(SOURCES[:2], num_return_sequences=2, max_new_tokens=5)
    assert [len(records) for records in several] == [2, 2]


def test_save_pretrained_with_push_to_hub_uploads_the_code_files(tmp_path: Path, monkeypatch) -> None:
    """transformers uploads only files changed after its snapshot; the code is written before it and must go too."""
    committed: dict[str, list[str]] = {}

    def create_repo(self, repo_id, **kwargs):
        return SimpleNamespace(repo_id=repo_id)

    def create_commit(self, repo_id, operations, **kwargs):
        committed[repo_id] = sorted(operation.path_in_repo for operation in operations)

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    # transformers would first look for an existing card on the (unreachable) Hub
    monkeypatch.setattr(modeling_utils, "create_and_tag_model_card", lambda *args, **kwargs: ModelCard("card"))
    model = PosformerForConditionalGeneration(tiny_config("rope"))
    model.save_pretrained(tmp_path / "tiny", push_to_hub=True, repo_id="posformer/tiny")
    assert set(committed["posformer/tiny"]) >= {"config.json", "model.safetensors", *remote_code_file_names()}
