"""What differs between the transformers releases posformer supports, in one place.

posformer runs on every transformers release from `MINIMUM_TRANSFORMERS` to the newest 5.x, both as the installed
package and as the flat copy of this code that travels with every checkpoint (Hub users run that copy under whatever
transformers they have). This file sits at the root of that code's imports, so it is read before anything that an
older release could not build:

- `require_supported_transformers()` fails at once, with the `pip install -U` that fixes it, under a release older
  than the floor. (5.0 cannot define the config class; 5.2 added `capture_outputs`, 5.15 the `allow_is_causal_skip`
  of `create_causal_mask`, 5.20 the `Pipeline._prepare_generate_kwargs` that the translation pipeline uses.)
- `CACHE_NAME` is what the installed release calls the key/value cache. transformers 5.24 renamed the forward
  argument and the output field `past_key_values` to `cache` (with deprecation shims until 5.40): `generate` passes
  `cache=` and reads `outputs["cache"]`, `GradientCheckpointingLayer` clears `kwargs["cache"]`, and the Trainer skips
  `cache` in predictions. Earlier releases do all of that under `past_key_values`. posformer's forwards accept both
  names (`resolve_cache`) and hand the cache on, and return it, under the installed one.
"""

import dataclasses
import sys
import warnings

from transformers.cache_utils import Cache
from transformers.modeling_outputs import Seq2SeqLMOutput
from transformers.utils.output_capturing import OutputRecorder
from transformers.utils.versions import require_version

MINIMUM_TRANSFORMERS = "5.20.0"
"""The oldest transformers release the whole test suite passes on (`.ci/run` tests it and the newest)."""


def require_supported_transformers() -> None:
    """Raise `ImportError` naming the needed release and the command that installs it, under an older transformers."""
    require_version(
        f"transformers>={MINIMUM_TRANSFORMERS}",
        f"posformer (and the code that travels with its checkpoints) needs transformers>={MINIMUM_TRANSFORMERS}: "
        f"pip install -U 'transformers>={MINIMUM_TRANSFORMERS}'",
    )


require_supported_transformers()

CACHE_NAME: str = (
    "cache" if "cache" in {field.name for field in dataclasses.fields(Seq2SeqLMOutput)} else "past_key_values"
)
"""The installed transformers' name for the cache: `"cache"` from 5.24 on, `"past_key_values"` before."""


def resolve_cache(cache: Cache | None, past_key_values: Cache | None) -> Cache | None:
    """The cache a forward was given under either name (`cache`, or `past_key_values` as releases before 5.24 and
    older user code call it); `ValueError` when both are given.

    Under a release that calls it `cache`, `past_key_values` also warns as transformers' own models do (a
    `FutureWarning` saying "`past_key_values` is deprecated", from their `deprecate_kwarg`)."""
    if cache is not None and past_key_values is not None:
        raise ValueError("Pass the key/value cache once, as `cache` or as `past_key_values`, not both.")
    if past_key_values is not None and CACHE_NAME == "cache":
        warn_at_caller(
            "`past_key_values` is deprecated for `forward` since transformers 5.24 renamed it. Use `cache` instead.",
            FutureWarning,
        )
    return cache if cache is not None else past_key_values


def hidden_states_recorder(layer_class: type, num_layers_key: str) -> OutputRecorder | type:
    """A stack's `_can_record_outputs["hidden_states"]`: its layer class, and from transformers 5.24 on (where
    `output_hidden_states` may pick states by index, negative ones counted from `config.<num_hidden_layers_key>`,
    `num_hidden_layers` by default) the config field holding that stack's own depth, so that -1 is the decoder's last
    state when the stacks differ in depth."""
    if "num_hidden_layers_key" in {field.name for field in dataclasses.fields(OutputRecorder)}:
        return OutputRecorder(layer_class, num_hidden_layers_key=num_layers_key)
    return layer_class


LIBRARY_MODULES = ("posformer.", "transformers_modules.", "torch.", "transformers.")
"""Where the frames between a user's call and posformer's code come from (its copy as remote code included)."""


def warn_at_caller(message: str, category: type[Warning]) -> None:
    """`warnings.warn` attributed to the first frame outside posformer, torch and transformers: the user's line that
    called the model, however many decorators and module calls lie between (what `stacklevel` cannot know)."""
    frame = sys._getframe(1)
    while frame.f_back is not None and frame.f_globals.get("__name__", "").startswith(LIBRARY_MODULES):
        frame = frame.f_back
    module = frame.f_globals.get("__name__", "<unknown>")
    registry = frame.f_globals.setdefault("__warningregistry__", {})
    warnings.warn_explicit(message, category, frame.f_code.co_filename, frame.f_lineno, module, registry)


__all__ = [
    "CACHE_NAME",
    "MINIMUM_TRANSFORMERS",
    "hidden_states_recorder",
    "require_supported_transformers",
    "resolve_cache",
]
