"""The render node: a gRPC server that mattes streams of frames with per-stream state."""
