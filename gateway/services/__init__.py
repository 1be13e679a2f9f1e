"""gRPC servicers: thin edges over the transport-neutral domain code of :mod:`gateway`.

Each servicer converts protobuf requests to domain values, calls one handler that knows nothing
of gRPC, converts the result back, and maps our errors to status codes through one table
(:mod:`gateway.services.errors`). Caller authentication is the server layer's job.
"""
