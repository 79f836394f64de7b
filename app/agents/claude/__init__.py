"""The Claude backend (`AGENT_BACKEND=claude`, needs the `claude` extra). `config` imports without the SDK;
the rest needs it."""
