"""The OpenAI-compatible API under /v1 (SPEC §10): models, chat completions, responses."""
