"""posformer's training code (the main training job lands with its own issue)."""
