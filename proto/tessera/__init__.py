"""Generated gRPC code (see tessera/proto/generate.py)."""
