"""The gRPC entry point: translate requests to commands and outcomes to responses. No rules."""
