"""The per-call flow: the model-call handler, generation (cache, quota, upstream), replies."""
