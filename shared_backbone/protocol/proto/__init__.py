"""The network's gRPC protocol (`attribution.v1`) and its generated Python code.

    from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2 as pb
    from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2_grpc as pb_grpc
"""
