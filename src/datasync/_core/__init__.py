"""Compiled core of datasync (private): events, prefix index, commit."""
