"""Every setting read in `app/config/settings.py` is documented in `.env.example` with its real default.

The names and defaults come from the source itself (every `_env*("NAME", default)` call, plus any direct
`os.environ.get` / `os.getenv`), so adding a setting without documenting it fails here."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SETTINGS_PY = ROOT / "app" / "config" / "settings.py"
ENV_EXAMPLE = ROOT / ".env.example"
TRUTHY = {"1", "true", "yes", "on"}
FALSY = {"0", "false", "no", "off"}
# Read by the server launcher (`agent-api run`), not by settings.py.
EXTRA_DOCUMENTED = {"LITESTAR_HOST": "127.0.0.1", "LITESTAR_PORT": "8000"}


@dataclass(frozen=True)
class EnvSetting:
    name: str
    kind: str  # "str" | "int" | "float" | "bool"
    default: object  # a literal, or None when computed at runtime (e.g. INSTANCE_ID's host+pid)
    computed: bool
    line: int


def _is_env_reader(call: ast.Call) -> str | None:
    """The kind of value an `_env*` / `os.environ.get` / `os.getenv` call reads, or None."""
    func = call.func
    if isinstance(func, ast.Name) and func.id.startswith("_env"):
        return {"_env": "str", "_env_int": "int", "_env_float": "float", "_env_bool": "bool"}.get(func.id, "str")
    if isinstance(func, ast.Attribute):
        dotted = ast.unparse(func)
        if dotted in {"os.environ.get", "os.getenv"}:
            return "str"
    return None


def settings_from_source() -> dict[str, EnvSetting]:
    tree = ast.parse(SETTINGS_PY.read_text(), filename=str(SETTINGS_PY))
    found: dict[str, EnvSetting] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        kind = _is_env_reader(node)
        if kind is None or not node.args:
            continue
        first = node.args[0]
        if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
            continue  # e.g. `_env(name, ...)` inside the helpers themselves
        default: object = None
        computed = False
        if len(node.args) > 1:
            try:
                default = ast.literal_eval(node.args[1])
            except ValueError:
                computed = True
        found[first.value] = EnvSetting(first.value, kind, default, computed, node.lineno)
    return found


def env_example_entries() -> dict[str, str]:
    entries: dict[str, str] = {}
    for raw in ENV_EXAMPLE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep, f".env.example: not NAME=value: {raw!r}"
        name = name.strip().removeprefix("export ").strip()
        assert name not in entries, f".env.example lists {name} twice"
        entries[name] = value.strip().strip("'\"")
    return entries


def _comment_above(name: str) -> bool:
    lines = ENV_EXAMPLE.read_text().splitlines()
    for index, line in enumerate(lines):
        if line.startswith(f"{name}="):
            # The comment may cover a small group of related lines (e.g. host and port).
            for previous in reversed(lines[max(0, index - 3) : index]):
                if previous.startswith("#"):
                    return True
                if not previous.strip():
                    return False
    return False


SETTINGS = settings_from_source()


def test_settings_source_is_parsed() -> None:
    # Guards the parser itself: these names are fixed by the spec.
    for name in ("DATABASE_URL", "VALKEY_URL", "API_KEY", "AGENT_BACKEND", "ANTHROPIC_API_KEY", "INSTANCE_ID"):
        assert name in SETTINGS
    assert "RATE_LIMIT_PER_MINUTE" in SETTINGS
    assert len(SETTINGS) >= 10


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_setting_documented_with_its_default(name: str) -> None:
    setting = SETTINGS[name]
    entries = env_example_entries()
    assert name in entries, f"{name} (app/config/settings.py:{setting.line}) is missing from .env.example"
    assert _comment_above(name), f"{name} in .env.example needs a comment line describing it"
    value = entries[name]
    says = f"{name}: .env.example says {value!r}, default is {setting.default!r}"
    if setting.computed:
        # A default computed at runtime is documented as empty (= unset) with the rule in the comment.
        assert value == "", f"{name}: its default is computed; leave the value empty in .env.example"
        return
    if setting.kind == "bool":
        assert value.lower() in TRUTHY | FALSY, f"{name}: {value!r} is not a boolean"
        assert (value.lower() in TRUTHY) == bool(setting.default), says
    elif setting.kind in {"int", "float"}:
        assert isinstance(setting.default, int | float), says
        assert float(value) == float(setting.default), says
    else:
        assert value == str(setting.default or ""), says


@pytest.mark.parametrize(("name", "default"), sorted(EXTRA_DOCUMENTED.items()))
def test_server_address_documented(name: str, default: str) -> None:
    assert env_example_entries().get(name) == default


def test_env_example_has_no_unknown_settings() -> None:
    unknown = set(env_example_entries()) - set(SETTINGS) - set(EXTRA_DOCUMENTED)
    assert not unknown, f".env.example lists settings nothing reads: {sorted(unknown)}"
