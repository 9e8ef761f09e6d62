"""Helpers the tests share: hold points, ..."""
