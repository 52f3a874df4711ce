"""pxos-hvd's gRPC control API, package ``pxos.v1`` (pxos.proto).

``server.GrpcServer`` serves it for the daemon; ``servicer`` maps each RPC to the
Hypervisor; ``status`` holds the one table from PXOS statuses to gRPC codes; ``client``
is what pxosctl speaks. ``pxos_pb2*.py`` are generated: ``python -m hypervisor.rpc.regen``.
"""
