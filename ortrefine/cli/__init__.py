"""Thin click commands over ortrefine.export and ortrefine.runtime."""
