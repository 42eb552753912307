"""Generated protobuf/gRPC stubs for ``retriever.v1`` (do not edit; run ``python protos/generate.py``)."""
