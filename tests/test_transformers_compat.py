"""The supported transformers range: the installed release's cache name is the one posformer follows, releases
older than the floor are refused with the command that fixes it, and deprecations about posformer's code fail
the suite. (`.ci/run` runs the whole suite on the newest releases and the fast suite on the floor versions.)"""

import inspect
import warnings
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from transformers import GenerationMixin
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask
from transformers.utils import versions

from posformer.configuration import transformers_compat
from posformer.configuration.transformers_compat import CACHE_NAME, MINIMUM_TRANSFORMERS

ROOT = Path(__file__).resolve().parents[1]


def test_the_cache_name_is_the_one_the_installed_transformers_generates_with():
    """`generate` hands the cache to the model under `prepare_inputs_for_generation`'s name for it, and the mask
    builders take it under the same name (passed positionally by posformer, so either name works)."""
    generation_names = set(inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters)
    assert CACHE_NAME in generation_names
    assert ({"cache", "past_key_values"} - {CACHE_NAME}).isdisjoint(generation_names)
    assert list(inspect.signature(create_causal_mask).parameters)[3] == CACHE_NAME
    assert CACHE_NAME in inspect.signature(create_bidirectional_mask).parameters


def test_the_declared_floor_is_the_one_the_code_checks():
    """pyproject.toml, the floor CI installs and the check the code makes name one release."""
    installed = metadata.requires("posformer")  # the installed package's declared dependencies
    transformers = next(Requirement(spec) for spec in installed if Requirement(spec).name == "transformers")
    assert f">={MINIMUM_TRANSFORMERS}" in str(transformers.specifier)
    floor_pins = (ROOT / ".ci" / "floor-constraints.txt").read_text()
    assert f"transformers=={MINIMUM_TRANSFORMERS}" in floor_pins.splitlines()


def test_an_older_transformers_is_refused_with_the_command_that_fixes_it(monkeypatch):
    monkeypatch.setattr(versions.importlib.metadata, "version", lambda package: "5.2.0")
    with pytest.raises(ImportError, match=rf"needs transformers>={MINIMUM_TRANSFORMERS}: pip install -U"):
        transformers_compat.require_supported_transformers()


@pytest.mark.parametrize("category", [DeprecationWarning, FutureWarning])
@pytest.mark.parametrize("module", ["posformer.modeling.modeling_posformer", "transformers_modules.ckpt.abc.x"])
def test_a_deprecation_about_posformer_code_fails_the_suite(module, category):
    """pyproject's `filterwarnings` turns a deprecation attributed to posformer (or to the copy of its code that a
    checkpoint carries) into an error; one attributed to another library stays a warning."""
    with pytest.raises(category):
        warnings.warn_explicit("renamed", category, "file.py", 1, module=module)
    with pytest.warns(category):
        warnings.warn_explicit("renamed", category, "file.py", 1, module="somebody.else")
