"""transformers' own contract for models: the installed release's `ModelTesterMixin` (its `tests/`, fetched from the
source distribution by `transformers_suite.py`) and the generation contract (`generation_tester.py`), run against
posformer through a model tester written the way Marian's is, once per position encoding.

Every test these mixins hold runs; those they skip say why in their skip message, and each reason is listed in
docs/compatibility.md ("transformers' model test suite"). Slow (about 20 s per encoding): CI runs it on the newest
release.
"""

import os
import unittest

import pytest
import torch
from generation_tester import GenerationTesterMixin
from transformers.models.auto import modeling_auto
from transformers.utils import output_capturing
from transformers_suite import import_model_tester_mixin

from posformer.configuration import PosformerConfig
from posformer.configuration.transformers_compat import CACHE_NAME
from posformer.modeling import POSITION_ENCODINGS, PosformerForConditionalGeneration, PosformerModel

pytestmark = pytest.mark.slow

# CI runs the suite on one encoding per mechanism, to stay within its time: the paper's sinusoids (added to the
# embeddings), `learned` (a bounded table), `rope` (rotary q/k), `t5` (one score bias per stack, shared by the layers),
# `shaw` (a value term, so an eager self-attention) and `transformer_xl` (a per-layer term of data-dependent size).
# The other four share a mechanism with one of these (`none`, `hadamard`: embeddings; `alibi`, `fire`: a stack's
# score bias) and run posformer's own common suite; POSFORMER_SUITE_ENCODINGS=all runs all ten here (all pass on
# transformers 5.24.0 and 5.25.0, and on 5.20.0 but for one skip, 2026-12-03).
REPRESENTATIVES = ("learned", "rope", "shaw", "sinusoidal", "t5", "transformer_xl")
RUN_ALL = os.environ.get("POSFORMER_SUITE_ENCODINGS") == "all"
SUITE_ENCODINGS = sorted(POSITION_ENCODINGS) if RUN_ALL else REPRESENTATIVES

try:
    SUITE = import_model_tester_mixin()
except Exception as error:  # reported by the test below, so that the rest of the suite still runs
    SUITE, SUITE_ERROR = None, error

# transformers' tests look models up by class name in the auto mappings (the loss in `test_training`, the
# seq2seq heads in generation): posformer is registered as AutoConfig/AutoModel* by its remote code, which these
# name tables do not see.
modeling_auto.MODEL_MAPPING_NAMES.setdefault("posformer", "PosformerModel")
modeling_auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES.setdefault("posformer", "PosformerForConditionalGeneration")


class PosformerModelTester:
    """Marian's tester's sizes and special ids (batch 13, length 7, vocabulary 99, width 16, 2+2 layers of 4 heads,
    feed-forward 4, dropout 0.1; bos 0, pad 1, eos 2, decoder start 3), for one position encoding."""

    def __init__(self, parent: unittest.TestCase, position_encoding: str, batch_size: int = 13, seq_length: int = 7):
        self.parent = parent
        self.position_encoding = position_encoding
        self.batch_size, self.seq_length = batch_size, seq_length
        self.encoder_seq_length = self.decoder_seq_length = seq_length
        self.is_training = True
        self.vocab_size = 99
        self.hidden_size = 16
        self.num_hidden_layers = 2
        self.num_attention_heads = 4
        self.bos_token_id, self.pad_token_id, self.eos_token_id, self.decoder_start_token_id = 0, 1, 2, 3

    def get_config(self) -> PosformerConfig:
        return PosformerConfig(
            position_encoding=self.position_encoding,
            vocab_size=self.vocab_size,
            d_model=self.hidden_size,
            encoder_layers=self.num_hidden_layers,
            decoder_layers=self.num_hidden_layers,
            encoder_attention_heads=self.num_attention_heads,
            decoder_attention_heads=self.num_attention_heads,
            encoder_ffn_dim=4,
            decoder_ffn_dim=4,
            dropout=0.1,
            attention_dropout=0.1,
            max_position_embeddings=100,
            shaw_max_distance=4,
            t5_num_buckets=8,
            t5_max_distance=20,
            bos_token_id=self.bos_token_id,
            pad_token_id=self.pad_token_id,
            eos_token_id=self.eos_token_id,
            decoder_start_token_id=self.decoder_start_token_id,
        )

    def prepare_config_and_inputs(self) -> tuple[PosformerConfig, dict]:
        ids_tensor = SUITE.ids_tensor
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size).clamp(min=3)
        input_ids[:, -1] = self.eos_token_id
        decoder_input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size).clamp(min=3)
        config = self.get_config()
        inputs = {
            "input_ids": input_ids,
            "attention_mask": input_ids.ne(config.pad_token_id),
            "decoder_input_ids": decoder_input_ids,
            "decoder_attention_mask": decoder_input_ids.ne(config.pad_token_id),
        }
        return config, inputs

    def prepare_config_and_inputs_for_common(self) -> tuple[PosformerConfig, dict]:
        return self.prepare_config_and_inputs()

    def check_decoder_model_past_large_inputs(self, config: PosformerConfig, inputs: dict) -> None:
        """The decoder alone (no encoder states, as a language model): three new tokens on a cache of the first
        seven give the hidden states of all ten at once."""
        decoder = PosformerModel(config).get_decoder().eval()
        input_ids, attention_mask = inputs["input_ids"], inputs["attention_mask"].long()
        cache = getattr(decoder(input_ids, attention_mask=attention_mask, use_cache=True), CACHE_NAME)
        new_tokens = SUITE.ids_tensor((self.batch_size, 3), config.vocab_size)
        new_mask = SUITE.ids_tensor((self.batch_size, 3), 2)
        all_ids, all_mask = torch.cat([input_ids, new_tokens], -1), torch.cat([attention_mask, new_mask], -1)
        uncached = decoder(all_ids, attention_mask=all_mask).last_hidden_state[:, -3:]
        cached = decoder(new_tokens, attention_mask=all_mask, **{CACHE_NAME: cache}).last_hidden_state
        torch.testing.assert_close(cached, uncached, atol=1e-3, rtol=1e-3)

    def check_encoder_decoder_model_standalone(self, config: PosformerConfig, inputs: dict) -> None:
        """The encoder and the decoder called on their own give the full model's hidden states."""
        model = PosformerModel(config).eval()
        outputs = model(**inputs)
        encoder = model.get_encoder()
        encoded = encoder(inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
        torch.testing.assert_close(encoded, outputs.encoder_last_hidden_state, atol=1e-3, rtol=1e-3)
        decoded = model.get_decoder()(
            input_ids=inputs["decoder_input_ids"],
            attention_mask=inputs["decoder_attention_mask"],
            encoder_hidden_states=encoded,
            encoder_attention_mask=inputs["attention_mask"],
        ).last_hidden_state
        torch.testing.assert_close(decoded, outputs.last_hidden_state, atol=1e-3, rtol=1e-3)


def test_the_installed_transformers_suite_is_available():
    if SUITE is None:
        raise SUITE_ERROR


if SUITE is not None:

    class PosformerSuite(SUITE.ModelTesterMixin, GenerationTesterMixin):
        """Both mixins for one position encoding (`position_encoding`, set by the subclasses below)."""

        position_encoding: str
        all_model_classes = (PosformerModel, PosformerForConditionalGeneration)
        is_encoder_decoder = True
        test_missing_keys = True
        test_can_init_all_missing_weights_before_2023 = True  # posformer's `_init_weights` initialises every weight

        def setUp(self) -> None:
            self.model_tester = PosformerModelTester(self, self.position_encoding)

        def test_decoder_model_past_with_large_inputs(self) -> None:
            self.model_tester.check_decoder_model_past_large_inputs(*self.model_tester.prepare_config_and_inputs())

        def test_encoder_decoder_model_standalone(self) -> None:
            self.model_tester.check_encoder_decoder_model_standalone(*self.model_tester.prepare_config_and_inputs())

        def test_can_capture_specific_layers_hidden_states_of_both_stacks(self) -> None:
            """transformers' `test_can_capture_specific_layers_hidden_states` for seq2seq outputs, which it skips (it
            looks for `hidden_states`): `output_hidden_states=[0, 2, -1]` keeps those states of each stack, the
            others None, -1 counted from each stack's own end (3 decoder layers, 2 encoder layers)."""
            if not hasattr(output_capturing, "selected_hidden_states"):
                self.skipTest("this transformers release selects no hidden states by index (5.24 does)")
            config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
            config.decoder_layers = 3
            model = PosformerForConditionalGeneration(config).eval()
            full = model(**inputs, output_hidden_states=True)
            some = model(**inputs, output_hidden_states=[0, 2, -1])
            for stack in ("encoder_hidden_states", "decoder_hidden_states"):
                every, kept = getattr(full, stack), getattr(some, stack)
                self.assertEqual(len(kept), len(every))
                for index, state in enumerate(kept):
                    if index in (0, 2, len(every) - 1):
                        torch.testing.assert_close(state, every[index])
                    else:
                        self.assertIsNone(state)

    for _name in SUITE_ENCODINGS:
        _test_class = type(f"TestPosformer_{_name}", (PosformerSuite, unittest.TestCase), {"position_encoding": _name})
        globals()[_test_class.__name__] = _test_class
    del _name, _test_class
