"""The generation contract of transformers' `GenerationTesterMixin` (its `tests/generation/test_utils.py`, which
transformers' source distributions do not carry), written for encoder-decoder models against the same model
tester as `ModelTesterMixin`: `self.model_tester.prepare_config_and_inputs_for_common()` and
`self.all_generative_model_classes`.

Each test checks `generate` against an oracle: the shapes of its dict outputs against the model's sizes; cached
against uncached, static cache and the compiled step against no cache, assisted and prompt-lookup decoding against
greedy, continuing from a returned cache against one longer call, `inputs_embeds` against `input_ids`, a packed batch
under a custom 4D mask against the unpacked one. Sampling and dropout are seeded; models are in eval mode.
"""

import copy

import torch
from transformers import CompileConfig
from transformers.cache_utils import EncoderDecoderCache, StaticCache
from transformers.generation.utils import (
    GenerateBeamEncoderDecoderOutput,
    GenerateEncoderDecoderOutput,
)

from posformer.configuration.transformers_compat import CACHE_NAME

MAX_NEW_TOKENS = 5


class GenerationTesterMixin:
    model_tester = None
    all_model_classes: tuple = ()
    max_new_tokens = MAX_NEW_TOKENS

    # -------------------------------------------------------------------------------------------- helpers

    def prepare_generation(self, model_class, attn_implementation: str = "sdpa", **config_overrides):
        """A model of `model_class` in eval mode, its encoder inputs, and generation arguments that produce exactly
        `max_new_tokens` tokens (no eos, no minimum: the lengths are known)."""
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        for name, value in config_overrides.items():
            setattr(config, name, value)
        config._attn_implementation = attn_implementation
        model = model_class(config).eval()
        encoder_inputs = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
        arguments = {
            "max_new_tokens": self.max_new_tokens,
            "min_new_tokens": self.max_new_tokens,
            "eos_token_id": None,
            "pad_token_id": config.pad_token_id,
        }
        return model, encoder_inputs, arguments

    def generate(self, model, inputs: dict, arguments: dict, **generation) -> torch.Tensor | object:
        torch.manual_seed(0)
        return model.generate(**inputs, **arguments, **generation)

    def greedy(self, model, inputs: dict, arguments: dict, **generation):
        """Greedy decoding's output with its scores (`sequences`, `scores`)."""
        scored = {"do_sample": False, "num_beams": 1, "return_dict_in_generate": True, "output_scores": True}
        return self.generate(model, inputs, arguments, **scored, **generation)

    def assert_same_decoding(self, output, expected) -> None:
        """The same tokens and the same scores at every step: tokens alone can agree while the scores show a lost or
        shifted history (a small random model tends to repeat one token)."""
        torch.testing.assert_close(output.sequences, expected.sequences, rtol=0, atol=0)
        torch.testing.assert_close(torch.stack(output.scores), torch.stack(expected.scores), rtol=1e-4, atol=1e-4)

    def check_dict_outputs(self, model, output, inputs: dict, num_sequences: int, use_cache: bool) -> None:
        """Scores, logits, attentions and hidden states: one entry per generated token, each of the model's sizes."""
        config = model.config
        batch, source_length = inputs["input_ids"].shape
        rows = batch * num_sequences
        new_tokens = output.sequences.shape[1] - 1  # after the decoder start token
        self.assertEqual(new_tokens, self.max_new_tokens)
        self.assertEqual(len(output.scores), new_tokens)
        self.assertEqual(len(output.logits), new_tokens)
        for scores in (*output.scores, *output.logits):
            self.assertEqual(tuple(scores.shape), (rows, config.target_vocab_size()))
        heads, layers = config.encoder_attention_heads, config.encoder_layers
        self.assertEqual(len(output.encoder_attentions), layers)
        for attention in output.encoder_attentions:
            self.assertEqual(tuple(attention.shape), (batch, heads, source_length, source_length))
        self.assertEqual(len(output.encoder_hidden_states), layers + 1)
        self.assertEqual(len(output.decoder_attentions), new_tokens)
        self.assertEqual(len(output.cross_attentions), new_tokens)
        self.assertEqual(len(output.decoder_hidden_states), new_tokens)
        for step in range(new_tokens):
            queries = 1 if use_cache else step + 1
            keys = step + 1
            for self_attention, cross_attention in zip(
                output.decoder_attentions[step], output.cross_attentions[step], strict=True
            ):
                shape = (rows, config.decoder_attention_heads, queries)
                self.assertEqual(tuple(self_attention.shape), (*shape, keys))
                self.assertEqual(tuple(cross_attention.shape), (*shape, source_length))
            self.assertEqual(len(output.decoder_hidden_states[step]), config.decoder_layers + 1)
            for hidden in output.decoder_hidden_states[step]:
                self.assertEqual(tuple(hidden.shape), (rows, queries, config.d_model))
        cache = getattr(output, CACHE_NAME)
        if use_cache:
            self.check_cache_format(model, cache, rows, source_length, new_tokens)
        else:
            self.assertIsNone(cache)

    def check_cache_format(self, model, cache, rows: int, source_length: int, new_tokens: int) -> None:
        """An `EncoderDecoderCache` of `(rows, heads, length, head_dim)` keys and values per layer: the target's
        tokens but the last in self-attention, the source in cross-attention."""
        config = model.config
        self.assertIsInstance(cache, EncoderDecoderCache)
        head_dim = config.head_dim or config.d_model // config.decoder_attention_heads
        for part, length in ((cache.self_attention_cache, new_tokens), (cache.cross_attention_cache, source_length)):
            self.assertEqual(len(part.layers), config.decoder_layers)
            for layer in part.layers:
                for tensor in (layer.keys, layer.values):
                    self.assertEqual(tuple(tensor.shape), (rows, config.decoder_attention_heads, length, head_dim))

    def dict_generation(self, use_cache: bool) -> dict:
        return {
            "return_dict_in_generate": True,
            "output_scores": True,
            "output_logits": True,
            "output_attentions": True,
            "output_hidden_states": True,
            "use_cache": use_cache,
        }

    # ----------------------------------------------------------------------------------- decoding methods

    def test_inherits_generation_mixin(self):
        for model_class in self.all_generative_model_classes:
            self.assertTrue(model_class.can_generate())

    def test_greedy_generate(self):
        for model_class in self.all_generative_model_classes:
            model, inputs, arguments = self.prepare_generation(model_class)
            sequences = self.generate(model, inputs, arguments, do_sample=False, num_beams=1)
            self.assertEqual(sequences.shape, (inputs["input_ids"].shape[0], self.max_new_tokens + 1))

    def test_greedy_generate_dict_outputs(self):
        for use_cache in (False, True):
            for model_class in self.all_generative_model_classes:
                model, inputs, arguments = self.prepare_generation(model_class, "eager")
                output = self.generate(model, inputs, arguments, do_sample=False, **self.dict_generation(use_cache))
                self.assertIsInstance(output, GenerateEncoderDecoderOutput)
                self.check_dict_outputs(model, output, inputs, 1, use_cache)

    def test_greedy_generate_cached_equals_uncached(self):
        for model_class in self.all_generative_model_classes:
            model, inputs, arguments = self.prepare_generation(model_class, init_std=0.2)
            uncached = self.greedy(model, inputs, arguments, use_cache=False)
            self.assert_same_decoding(self.greedy(model, inputs, arguments, use_cache=True), uncached)

    def test_sample_generate(self):
        for model_class in self.all_generative_model_classes:
            model, inputs, arguments = self.prepare_generation(model_class)
            sampling = {"do_sample": True, "top_k": 0, "num_return_sequences": 2}
            first = self.generate(model, inputs, arguments, **sampling)
            self.assertEqual(first.shape, (2 * inputs["input_ids"].shape[0], self.max_new_tokens + 1))
            torch.testing.assert_close(self.generate(model, inputs, arguments, **sampling), first)  # seeded

    def test_sample_generate_dict_output(self):
        for model_class in self.all_generative_model_classes:
            model, inputs, arguments = self.prepare_generation(model_class, "eager")
            output = self.generate(
                model, inputs, arguments, do_sample=True, num_return_sequences=2, **self.dict_generation(True)
            )
            self.assertIsInstance(output, GenerateEncoderDecoderOutput)
            self.check_dict_outputs(model, output, inputs, 2, use_cache=True)

    def test_beam_search_generate(self):
        for model_class in self.all_generative_model_classes:
            model, inputs, arguments = self.prepare_generation(model_class)
            beams = {"num_beams": 3, "num_return_sequences": 2, "do_sample": False}
            sequences = self.generate(model, inputs, arguments, **beams)
            self.assertEqual(sequences.shape, (2 * inputs["input_ids"].shape[0], self.max_new_tokens + 1))

    def test_beam_search_generate_dict_output(self):
        """Beam search's sequences, scores and beam indices; the best beam's score is its summed token
        log-probabilities (length penalty 0), recomputed here from a forward over the sequence."""
        for use_cache in (False, True):
            for model_class in self.all_generative_model_classes:
                model, inputs, arguments = self.prepare_generation(model_class, "eager")
                output = self.generate(
                    model, inputs, arguments, num_beams=3, length_penalty=0.0, **self.dict_generation(use_cache)
                )
                self.assertIsInstance(output, GenerateBeamEncoderDecoderOutput)
                batch = inputs["input_ids"].shape[0]
                self.assertEqual(tuple(output.sequences_scores.shape), (batch,))
                self.assertEqual(tuple(output.beam_indices.shape), (batch, self.max_new_tokens))
                self.assertEqual(len(output.scores), self.max_new_tokens)
                for scores in output.scores:
                    self.assertEqual(tuple(scores.shape), (batch * 3, model.config.target_vocab_size()))
                with torch.no_grad():
                    logits = model(**inputs, decoder_input_ids=output.sequences[:, :-1]).logits
                chosen = logits.log_softmax(-1).gather(-1, output.sequences[:, 1:, None]).sum((1, 2))
                torch.testing.assert_close(output.sequences_scores, chosen, rtol=1e-4, atol=1e-4)

    def test_beam_sample_generate(self):
        for model_class in self.all_generative_model_classes:
            model, inputs, arguments = self.prepare_generation(model_class)
            beams = {"num_beams": 3, "do_sample": True, "num_return_sequences": 2}
            first = self.generate(model, inputs, arguments, **beams)
            self.assertEqual(first.shape, (2 * inputs["input_ids"].shape[0], self.max_new_tokens + 1))
            torch.testing.assert_close(self.generate(model, inputs, arguments, **beams), first)

    def test_beam_sample_generate_dict_output(self):
        for model_class in self.all_generative_model_classes:
            model, inputs, arguments = self.prepare_generation(model_class, "eager")
            output = self.generate(model, inputs, arguments, num_beams=3, do_sample=True, **self.dict_generation(True))
            self.assertIsInstance(output, GenerateBeamEncoderDecoderOutput)
            self.assertEqual(len(output.scores), self.max_new_tokens)

    def test_generate_without_input_ids(self):
        """No source at all: transformers encodes a single `bos` token, as for any encoder-decoder model."""
        for model_class in self.all_generative_model_classes:
            model, _, arguments = self.prepare_generation(model_class)
            sequences = self.generate(model, {}, arguments, do_sample=False)
            self.assertEqual(sequences.shape, (1, self.max_new_tokens + 1))

    def test_assisted_decoding_matches_greedy_search(self):
        """The model as its own assistant (speculative decoding) and prompt-lookup decoding both produce greedy's
        tokens: their candidates are verified by the model itself."""
        for model_class in self.all_generative_model_classes:
            model, inputs, arguments = self.prepare_generation(model_class, init_std=0.2)
            inputs = {name: value[:1] for name, value in inputs.items()}  # assisted decoding takes one sequence
            greedy = self.generate(model, inputs, arguments, do_sample=False)
            assisted = self.generate(model, inputs, arguments, do_sample=False, assistant_model=copy.deepcopy(model))
            torch.testing.assert_close(assisted, greedy, rtol=0, atol=0)
            lookup = self.generate(model, inputs, arguments, do_sample=False, prompt_lookup_num_tokens=2)
            torch.testing.assert_close(lookup, greedy, rtol=0, atol=0)

    # ----------------------------------------------------------------------------------- caches and inputs

    def test_past_key_values_format(self):
        for model_class in self.all_generative_model_classes:
            model, inputs, arguments = self.prepare_generation(model_class)
            output = self.generate(model, inputs, arguments, return_dict_in_generate=True, use_cache=True)
            batch, source_length = inputs["input_ids"].shape
            self.check_cache_format(model, getattr(output, CACHE_NAME), batch, source_length, self.max_new_tokens)

    def test_generate_continue_from_past_key_values(self):
        """Generating 2 tokens, then continuing from the returned cache, gives the tokens and scores of one longer
        call (the scores too: a continuation that lost its history can still pick the same tokens)."""
        for model_class in self.all_generative_model_classes:
            model, inputs, arguments = self.prepare_generation(model_class, init_std=0.2)
            scored = {"do_sample": False, "return_dict_in_generate": True, "output_scores": True}
            whole = self.generate(model, inputs, arguments, **scored)
            first = self.generate(model, inputs, {**arguments, "max_new_tokens": 2, "min_new_tokens": 2}, **scored)
            rest = self.max_new_tokens - 2
            continued = self.generate(
                model,
                # the target so far with its mask, from which generate sees which tokens the cache holds
                {
                    **inputs,
                    "decoder_input_ids": first.sequences,
                    "decoder_attention_mask": torch.ones_like(first.sequences),
                },
                {**arguments, "max_new_tokens": rest, "min_new_tokens": rest},
                **scored,
                **{CACHE_NAME: getattr(first, CACHE_NAME)},
            )
            torch.testing.assert_close(continued.sequences, whole.sequences, rtol=0, atol=0)
            torch.testing.assert_close(torch.stack(continued.scores), torch.stack(whole.scores[2:]))

    def test_generate_from_inputs_embeds(self):
        """The source as embeddings (the table's rows, which the encoder scales as it scales looked-up ids) gives
        the tokens of the source as ids."""
        for model_class in self.all_generative_model_classes:
            model, inputs, arguments = self.prepare_generation(model_class, init_std=0.2)
            from_ids = self.generate(model, inputs, arguments, do_sample=False)
            embeds = model.get_input_embeddings()(inputs["input_ids"])
            from_embeds = self.generate(
                model, {"inputs_embeds": embeds, "attention_mask": inputs["attention_mask"]}, arguments, do_sample=False
            )
            torch.testing.assert_close(from_embeds, from_ids, rtol=0, atol=0)

    def test_generate_with_static_cache(self):
        """A static cache (`cache_implementation="static"`) decodes as without a cache, and is what generate used."""
        for model_class in self.all_generative_model_classes:
            model, inputs, arguments = self.prepare_generation(model_class, init_std=0.2)
            uncached = self.greedy(model, inputs, arguments, use_cache=False)
            static = self.greedy(model, inputs, arguments, cache_implementation="static")
            self.assertIsInstance(getattr(static, CACHE_NAME).self_attention_cache, StaticCache)
            self.assert_same_decoding(static, uncached)

    def test_generate_compile_model_forward_fullgraph(self):
        """`_can_compile_fullgraph`: with a static cache, generate compiles the decoding step as one graph
        (`fullgraph=True`: any graph break fails) and decodes as the eager model does. The `eager` dynamo backend
        traces exactly as inductor would without compiling kernels (minutes on CPU). Checked against decoding without a
        cache."""
        for model_class in self.all_generative_model_classes:
            self.assertTrue(model_class._can_compile_fullgraph)
            model, inputs, arguments = self.prepare_generation(model_class, init_std=0.2)
            uncached = self.greedy(model, inputs, arguments, use_cache=False)
            torch._dynamo.reset()
            compile_config = CompileConfig(fullgraph=True, backend="eager", dynamic=False)
            compile_config._compile_all_devices = True  # generate compiles on accelerators only, unless told
            model.generation_config.compile_config = compile_config
            compiled_before = model.__dict__.get("_compiled_call")
            compiled = self.greedy(model, inputs, arguments, cache_implementation="static")
            self.assertIsNot(model.__dict__.get("_compiled_call"), compiled_before)  # generate did compile
            self.assert_same_decoding(compiled, uncached)

    def test_generate_methods_with_logits_to_keep(self):
        """generate projects only the last position onto the vocabulary (`logits_to_keep=1`): same tokens."""
        for model_class in self.all_generative_model_classes:
            model, inputs, arguments = self.prepare_generation(model_class, init_std=0.2)
            self.assertTrue(model._supports_logits_to_keep())
            kept = self.generate(model, inputs, arguments, do_sample=False, num_beams=2)
            every = self.generate(model, inputs, arguments, do_sample=False, num_beams=2, logits_to_keep=0)
            torch.testing.assert_close(kept, every, rtol=0, atol=0)

    def test_custom_4d_attention_mask(self):
        """Three targets that share a 3-token prefix, packed into one row of 6 under a 4D mask (each last token sees
        the prefix and itself) with its positions (3, 3, 3 for the three last tokens), give each target's last-token
        logits."""
        for model_class in self.all_generative_model_classes:
            model, inputs, _ = self.prepare_generation(model_class, init_std=0.2)
            source = {name: value[:1] for name, value in inputs.items()}
            targets = torch.tensor([[3, 10, 11, 12], [3, 10, 11, 13], [3, 10, 11, 14]])
            packed = torch.tensor([[3, 10, 11, 12, 13, 14]])
            sees = torch.tril(torch.ones(6, 6, dtype=torch.bool))
            sees[4, 3] = sees[5, 3] = sees[5, 4] = False
            mask = torch.zeros(1, 1, 6, 6).masked_fill(~sees, torch.finfo(torch.float32).min)
            with torch.no_grad():
                unpacked = model(**{n: v.expand(3, -1) for n, v in source.items()}, decoder_input_ids=targets).logits
                together = model(
                    **source,
                    decoder_input_ids=packed,
                    decoder_attention_mask=mask,
                    decoder_position_ids=torch.tensor([[0, 1, 2, 3, 3, 3]]),
                ).logits
            torch.testing.assert_close(together[0, 3:], unpacked[:, -1], rtol=1e-4, atol=1e-4)
