"""posformer's training code: `posformer-train` (the loop on Accelerate), `posformer-finetune` (transformers'
`Seq2SeqTrainer`), `posformer-export`, `posformer-attention`, and their building blocks; the README's Layout section
maps the files."""
