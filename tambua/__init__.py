"""The service layer: the only package that imports grpc.

Generated protobuf stubs live in ``tambua/v1`` (made by ``make setup`` from ``proto/``,
never edited, not committed).
"""
