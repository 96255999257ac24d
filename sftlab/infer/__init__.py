"""One inference layer: `generate(conversations, params) -> replies`, with hf / vllm / openai backends.

Everything in sftlab that produces text (the demo, `sftlab generate`, evaluation, MoDS, the server) goes through
`load_generator(...).generate(...)`, so sampling, stopping and token counting mean the same thing everywhere.
"""

from sftlab.infer.api import GenerationParams, Generator, Reply
from sftlab.infer.load import load_generator

__all__ = ["GenerationParams", "Generator", "Reply", "load_generator"]
