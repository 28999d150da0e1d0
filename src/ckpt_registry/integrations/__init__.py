"""Integrations with training frameworks.

``ckpt_registry.integrations.hf_trainer`` reads what a Hugging Face Trainer writes and needs
nothing extra; ``ckpt_registry.integrations.transformers`` holds the Trainer callback and needs
the ``[transformers]`` extra. Importing ``ckpt_registry`` imports neither framework.
"""
