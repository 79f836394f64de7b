"""structlog through Litestar's `StructlogPlugin`: the processors and the one handler every line goes through.

The processors are module level: litestar-granian pickles the formatter for Granian's own logs."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
import structlog
from litestar.logging.config import LoggingConfig, StructLoggingConfig
from litestar.plugins.structlog import StructlogConfig, StructlogPlugin
from structlog.typing import EventDict, Processor, WrappedLogger

from app.lib.logging.output import StdoutHandler
from app.lib.logging.redaction import redact_secrets


class DefaultInstanceId:
    """Adds the process's instance id to lines logged outside any request or run context."""

    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id

    def __call__(self, _logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
        event_dict.setdefault("instance_id", self.instance_id)
        return event_dict


def drop_color_message(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    event_dict.pop("color_message", None)
    return event_dict


def _json_serializer(value: Any, **_kwargs: Any) -> str:
    return msgspec.json.encode(value, enc_hook=str).decode()


def _shared_processors(instance_id: str) -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        DefaultInstanceId(instance_id),
    ]


def build_structlog_plugin(*, level: str, fmt: str, instance_id: str) -> StructlogPlugin:
    """The app's logging: `fmt` is `json` or `console`; `level` a standard level name."""
    level_name = level.upper() if level.upper() in logging.getLevelNamesMapping() else "INFO"
    renderer: Processor = (
        structlog.dev.ConsoleRenderer(colors=False)
        if fmt.lower() == "console"
        else structlog.processors.JSONRenderer(serializer=_json_serializer)
    )
    shared = _shared_processors(instance_id)
    formatter: dict[str, Any] = {
        "()": structlog.stdlib.ProcessorFormatter,
        "foreign_pre_chain": [*shared, structlog.stdlib.ExtraAdder()],
        "processors": [
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            drop_color_message,
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
    }
    handler = {"()": StdoutHandler, "formatter": "standard"}
    stdlib = LoggingConfig(
        formatters={"standard": formatter},
        # Litestar adds `console` and `queue_listener` handlers unless they exist: one writer, no queue thread.
        handlers={"console": handler, "queue_listener": {"class": "logging.NullHandler"}},
        loggers={
            "litestar": {"level": level_name, "handlers": [], "propagate": True},
            "app": {"level": level_name, "handlers": [], "propagate": True},
        },
        root={"handlers": ["console"], "level": level_name},
        log_exceptions="never",  # app.lib.problems logs unexpected errors itself
    )
    config = StructLoggingConfig(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        standard_lib_logging_config=stdlib,
        log_exceptions="never",
        cache_logger_on_first_use=True,
        pretty_print_tty=False,
    )
    return StructlogPlugin(StructlogConfig(structlog_logging_config=config, enable_middleware_logging=False))
