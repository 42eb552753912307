"""The gRPC retrieval service: servicer, dynamic batching, index registry, conversions and server."""
