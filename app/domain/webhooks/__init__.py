"""Webhooks: endpoints per API key, a durable Postgres outbox of run events, signed deliveries."""
