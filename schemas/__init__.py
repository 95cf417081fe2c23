"""Canonical and vendor shapes: marshmallow schemas, pure (no I/O), importing nothing of ours."""
