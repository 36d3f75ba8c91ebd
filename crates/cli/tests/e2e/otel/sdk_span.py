"""Sends one span with the OpenTelemetry Python SDK and its OTLP/HTTP (protobuf) exporter,
as a child of the given W3C traceparent, the way an instrumented service would.

Usage: sdk_span.py ENDPOINT TRACEPARENT SPAN_NAME
"""
import sys

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

endpoint, traceparent, name = sys.argv[1:4]
provider = TracerProvider(resource=Resource.create({"service.name": "checkout", "yun.app": "otlp"}))
provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
tracer = provider.get_tracer("yun-test")
parent = TraceContextTextMapPropagator().extract({"traceparent": traceparent})
with tracer.start_as_current_span(name, context=parent, kind=trace.SpanKind.INTERNAL) as span:
    span.set_attribute("order.items", 3)
    span.set_attribute("order.express", True)
provider.force_flush()
provider.shutdown()
