"""Example schemas used by the demo and the tests.

``netagent_pb2`` is generated from ``netagent.proto``; see README.md in
this directory for the command that regenerates it.
"""
