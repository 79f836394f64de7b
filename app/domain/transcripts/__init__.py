"""Agent transcripts in Postgres: the Claude SDK `SessionStore` the backends mirror into."""
