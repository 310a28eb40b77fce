"""Optional OpenTelemetry tracing: off and free by default, OTLP/HTTP when an endpoint is set.

``create_tracer(None)`` returns a tracer whose spans are one shared no-op context
manager; that path never imports ``opentelemetry``. With an endpoint, spans go
through the OpenTelemetry SDK to an OTLP/HTTP collector in batches, on a tracer
provider owned by the app (the global provider is left alone). Span attributes
are scalar identifiers and counts only; callers never put prompt or completion
text on a span.

The spans of a request: ``auth``, ``routing``, ``queue``, ``generation`` and
``audit.write`` (constants below).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Protocol

__all__ = [
    "SPAN_AUDIT_WRITE",
    "SPAN_AUTH",
    "SPAN_GENERATION",
    "SPAN_QUEUE",
    "SPAN_ROUTING",
    "NoopTracer",
    "OtelTracer",
    "Span",
    "Tracer",
    "create_tracer",
]

SPAN_AUTH = "auth"
SPAN_ROUTING = "routing"
SPAN_QUEUE = "queue"
SPAN_GENERATION = "generation"
SPAN_AUDIT_WRITE = "audit.write"

AttributeValue = str | int | float | bool


class Span(Protocol):
    def set_attribute(self, key: str, value: AttributeValue) -> None: ...

    def set_error(self, code: str) -> None:
        """Mark the span failed with an error ``code`` from the taxonomy (never a message)."""
        ...


class Tracer(Protocol):
    @property
    def enabled(self) -> bool: ...

    def span(
        self, name: str, attributes: Mapping[str, AttributeValue] | None = None
    ) -> AbstractContextManager[Span]:
        """A child of the current span (or a root) around a block; async code keeps it across awaits."""
        ...

    def shutdown(self) -> None:
        """Flush pending spans; the tracer records nothing afterwards."""
        ...


class _NoopSpan:
    def set_attribute(self, key: str, value: AttributeValue) -> None:
        return None

    def set_error(self, code: str) -> None:
        return None


class NoopTracer:
    """Tracing off: every span is the same reusable no-op context manager."""

    def __init__(self) -> None:
        self._span: AbstractContextManager[Span] = nullcontext(_NoopSpan())

    @property
    def enabled(self) -> bool:
        return False

    def span(
        self, name: str, attributes: Mapping[str, AttributeValue] | None = None
    ) -> AbstractContextManager[Span]:
        return self._span

    def shutdown(self) -> None:
        return None


class _OtelSpan:
    def __init__(self, span: Any) -> None:
        self._span = span

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        self._span.set_attribute(key, value)

    def set_error(self, code: str) -> None:
        from opentelemetry.trace import Status, StatusCode

        self._span.set_attribute("error.type", code)
        self._span.set_status(Status(StatusCode.ERROR, code))


class OtelTracer:
    """Spans through the OpenTelemetry SDK on a provider of our own, exported in batches."""

    def __init__(self, *, exporter: Any, service_name: str = "bastion", batch: bool = True) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        # the app's lifespan calls shutdown(); no atexit hook, no global provider
        self._provider = TracerProvider(
            resource=Resource.create({"service.name": service_name}), shutdown_on_exit=False
        )
        processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
        self._provider.add_span_processor(processor)
        self._tracer = self._provider.get_tracer("bastion")

    @property
    def enabled(self) -> bool:
        return True

    @contextmanager
    def _span(self, name: str, attributes: Mapping[str, AttributeValue] | None) -> Iterator[Span]:
        # record_exception stays off: an exception's message may quote request text
        with self._tracer.start_as_current_span(
            name, attributes=dict(attributes or {}), record_exception=False, set_status_on_exception=False
        ) as span:
            wrapped = _OtelSpan(span)
            try:
                yield wrapped
            except BaseException as exc:
                code = getattr(exc, "code", None)
                wrapped.set_error(code if isinstance(code, str) else type(exc).__name__)
                raise

    def span(
        self, name: str, attributes: Mapping[str, AttributeValue] | None = None
    ) -> AbstractContextManager[Span]:
        return self._span(name, attributes)

    def force_flush(self, timeout_ms: int = 5000) -> bool:
        return bool(self._provider.force_flush(timeout_ms))

    def shutdown(self) -> None:
        self._provider.shutdown()


def create_tracer(
    otlp_endpoint: str | None, *, service_name: str = "bastion", timeout_s: float = 5.0
) -> NoopTracer | OtelTracer:
    """The node's tracer: no-op without an endpoint, else OTLP/HTTP to ``otlp_endpoint``.

    ``otlp_endpoint`` is the full traces URL, e.g. ``http://collector:4318/v1/traces``.
    """
    if not otlp_endpoint:
        return NoopTracer()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OtelTracer(
        exporter=OTLPSpanExporter(endpoint=otlp_endpoint, timeout=timeout_s), service_name=service_name
    )
