"""`posformer-train`'s command line: presets, config-field overrides, --config files, --help."""

import shutil
import subprocess

import pytest
from datasets import Dataset

from posformer.configuration import PosformerConfig
from posformer.training.arguments import MODEL_SIZES, build_config, parse_args

IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)


def test_preset_then_overrides_then_tokenizer_ids():
    model_args, data_args, train_args = parse_args(["--model_size", "base", "--d_model", "384", "--dropout", "0.2"])
    config = build_config(model_args, vocab_size=777, special_ids=IDS)
    assert isinstance(config, PosformerConfig)
    assert config.d_model == 384 and config.dropout == 0.2 and config.vocab_size == 777
    assert config.encoder_layers == MODEL_SIZES["base"]["encoder_layers"] == 6
    assert not hasattr(config, "label_smoothing") and data_args.source_lang == "en" and train_args.max_tokens == 4096


def test_the_architecture_options_are_arguments_of_posformer_train():
    """Pre-norm vs post-norm, RMSNorm vs LayerNorm and the other options of converted models train from scratch too."""
    argv = ["--normalize_before", "--norm_type", "rms_norm", "--layer_norm_eps", "1e-6", "--gated_feed_forward",
            "--projection_bias", "false", "--head_dim", "16", "--layernorm_embedding", "true"]  # fmt: skip
    config = build_config(parse_args(argv)[0], vocab_size=777, special_ids=IDS)
    assert (config.normalize_before, config.norm_type, config.layer_norm_eps) == (True, "rms_norm", 1e-6)
    assert config.gated_feed_forward and not config.projection_bias and config.head_dim == 16
    assert config.layernorm_embedding
    with pytest.raises(ValueError, match="Unknown norm_type='batch_norm'. Choose one of: layer_norm, rms_norm"):
        build_config(parse_args(["--norm_type", "batch_norm"])[0], vocab_size=777, special_ids=IDS)


def test_every_user_facing_config_field_is_an_argument():
    model_args, _, _ = parse_args([])
    for name in PosformerConfig.__annotations__:
        if name not in {"vocab_size", "pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id",
                        "use_cache", "is_encoder_decoder", "is_decoder"}:  # fmt: skip
            assert hasattr(model_args, name), name


def test_config_file_is_read_and_the_command_line_wins(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("position_encoding: t5\nmax_steps: 77\nd_model: 96\n")
    model_args, _, train_args = parse_args(["--config", str(path), "--max_steps", "5"])
    assert model_args.position_encoding == "t5" and model_args.d_model == 96 and train_args.max_steps == 5
    (tmp_path / "run.json").write_text('{"seed": 3}')
    assert parse_args(["--config", str(tmp_path / "run.json")])[2].seed == 3


def test_resume_without_a_value_means_latest():
    assert parse_args(["--resume_from_checkpoint"])[2].resume_from_checkpoint == "latest"
    assert parse_args(["--resume_from_checkpoint", "--seed", "1"])[2].resume_from_checkpoint == "latest"
    assert parse_args(["--resume_from_checkpoint", "runs/x/checkpoints/checkpoint-4"])[2].resume_from_checkpoint == (
        "runs/x/checkpoints/checkpoint-4"
    )


def test_unknown_model_size_is_a_clear_error():
    with pytest.raises(ValueError, match="Unknown --model_size 'huge'. Choose one of: tiny, small, base, big"):
        parse_args(["--model_size", "huge"])


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--eval_steps", "0"], r"--eval_steps must be at least 1, got 0"),
        (["--max_steps", "-5"], r"--max_steps must be at least 1, got -5"),
        (["--gradient_accumulation_steps", "0"], r"--gradient_accumulation_steps must be at least 1"),
        (["--warmup_steps", "-1"], r"--warmup_steps must be at least 0"),
        (["--max_grad_norm", "nan"], r"--max_grad_norm must be at least 0, got nan"),
        (["--learning_rate", "0"], r"--learning_rate must be a positive number, got 0.0"),
        (["--learning_rate", "inf"], r"--learning_rate must be a positive number, got inf"),
        (["--adam_epsilon=-1e-9"], r"--adam_epsilon must be a positive number"),
        (["--adam_beta2", "1.0"], r"--adam_beta2 must be in \[0, 1\), got 1.0"),
        (["--label_smoothing", "-0.1"], r"--label_smoothing must be in \[0, 1\), got -0.1"),
        (["--preprocessing_num_workers", "0"], r"--preprocessing_num_workers must be at least 1, got 0"),
        (["--max_target_length", "1"], r"--max_target_length must be at least 2"),
        (["--tokenizer_vocab_size", "3"], r"--tokenizer_vocab_size must be at least 5"),
        (
            ["--average_last_checkpoints", "5", "--save_total_limit", "3"],
            r"--average_last_checkpoints 5 needs that many checkpoints, but --save_total_limit 3 keeps fewer",
        ),
    ],
)
def test_out_of_range_arguments_are_clear_errors(arguments, message):
    with pytest.raises(ValueError, match=message):
        parse_args(arguments)


def test_preprocessing_workers_prepare_the_same_data(tmp_path):
    """`--preprocessing_num_workers 2` (datasets' num_proc) tokenizes and filters exactly as one process does."""
    from posformer.training.data import filter_by_length, tokenize_pairs, train_bpe_tokenizer

    pairs = Dataset.from_list([{"source": f"open file {i} " * (i % 7), "target": f"Datei {i}"} for i in range(64)])
    tokenizer = train_bpe_tokenizer(list(pairs["source"]) + list(pairs["target"]), vocab_size=60)
    one, two = (filter_by_length(tokenize_pairs(pairs, tokenizer, "train", n), 12, 12, "train", n) for n in (None, 2))
    assert 0 < len(one) < len(pairs)
    assert one.to_list() == two.to_list()


def test_console_script_help_explains_the_arguments():
    executable = shutil.which("posformer-train")
    assert executable is not None, "the posformer-train console script is not installed"
    help_text = subprocess.run([executable, "--help"], capture_output=True, text=True, check=True).stdout
    for argument in ("--dataset_name", "--source_lang", "--max_tokens", "--position_encoding", "--model_size",
                     "--resume_from_checkpoint", "--config", "--d_model", "--label_smoothing"):  # fmt: skip
        assert argument in help_text, argument
