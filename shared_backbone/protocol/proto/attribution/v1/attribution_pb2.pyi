import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AttributeRequest(_message.Message):
    __slots__ = ("images", "heatmap")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    HEATMAP_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedScalarFieldContainer[bytes]
    heatmap: bool
    def __init__(self, images: _Optional[_Iterable[bytes]] = ..., heatmap: _Optional[bool] = ...) -> None: ...

class AttributeResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ImageResult]
    def __init__(self, results: _Optional[_Iterable[_Union[ImageResult, _Mapping]]] = ...) -> None: ...

class ImageResult(_message.Message):
    __slots__ = ("index", "fake_score", "scores", "raw_scores", "thresholds", "attribution", "fake_threshold", "backbone", "missing_nodes", "heatmap_png", "p_values", "prediction_set", "alpha", "missing_reasons", "typicality", "typicality_p_values", "typicality_alpha", "out_of_scope", "decision_reason")
    class ScoresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class RawScoresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class ThresholdsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class PValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class MissingReasonsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class TypicalityEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class TypicalityPValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    INDEX_FIELD_NUMBER: _ClassVar[int]
    FAKE_SCORE_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    RAW_SCORES_FIELD_NUMBER: _ClassVar[int]
    THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    FAKE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    BACKBONE_FIELD_NUMBER: _ClassVar[int]
    MISSING_NODES_FIELD_NUMBER: _ClassVar[int]
    HEATMAP_PNG_FIELD_NUMBER: _ClassVar[int]
    P_VALUES_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_SET_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    MISSING_REASONS_FIELD_NUMBER: _ClassVar[int]
    TYPICALITY_FIELD_NUMBER: _ClassVar[int]
    TYPICALITY_P_VALUES_FIELD_NUMBER: _ClassVar[int]
    TYPICALITY_ALPHA_FIELD_NUMBER: _ClassVar[int]
    OUT_OF_SCOPE_FIELD_NUMBER: _ClassVar[int]
    DECISION_REASON_FIELD_NUMBER: _ClassVar[int]
    index: int
    fake_score: float
    scores: _containers.ScalarMap[str, float]
    raw_scores: _containers.ScalarMap[str, float]
    thresholds: _containers.ScalarMap[str, float]
    attribution: str
    fake_threshold: float
    backbone: Backbone
    missing_nodes: _containers.RepeatedScalarFieldContainer[str]
    heatmap_png: bytes
    p_values: _containers.ScalarMap[str, float]
    prediction_set: _containers.RepeatedScalarFieldContainer[str]
    alpha: float
    missing_reasons: _containers.ScalarMap[str, str]
    typicality: _containers.ScalarMap[str, float]
    typicality_p_values: _containers.ScalarMap[str, float]
    typicality_alpha: float
    out_of_scope: str
    decision_reason: str
    def __init__(self, index: _Optional[int] = ..., fake_score: _Optional[float] = ..., scores: _Optional[_Mapping[str, float]] = ..., raw_scores: _Optional[_Mapping[str, float]] = ..., thresholds: _Optional[_Mapping[str, float]] = ..., attribution: _Optional[str] = ..., fake_threshold: _Optional[float] = ..., backbone: _Optional[_Union[Backbone, _Mapping]] = ..., missing_nodes: _Optional[_Iterable[str]] = ..., heatmap_png: _Optional[bytes] = ..., p_values: _Optional[_Mapping[str, float]] = ..., prediction_set: _Optional[_Iterable[str]] = ..., alpha: _Optional[float] = ..., missing_reasons: _Optional[_Mapping[str, str]] = ..., typicality: _Optional[_Mapping[str, float]] = ..., typicality_p_values: _Optional[_Mapping[str, float]] = ..., typicality_alpha: _Optional[float] = ..., out_of_scope: _Optional[str] = ..., decision_reason: _Optional[str] = ...) -> None: ...

class Backbone(_message.Message):
    __slots__ = ("version", "digest")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    version: str
    digest: str
    def __init__(self, version: _Optional[str] = ..., digest: _Optional[str] = ...) -> None: ...

class ListSourcesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListSourcesResponse(_message.Message):
    __slots__ = ("sources", "backbone")
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    BACKBONE_FIELD_NUMBER: _ClassVar[int]
    sources: _containers.RepeatedCompositeFieldContainer[SourceInfo]
    backbone: Backbone
    def __init__(self, sources: _Optional[_Iterable[_Union[SourceInfo, _Mapping]]] = ..., backbone: _Optional[_Union[Backbone, _Mapping]] = ...) -> None: ...

class SourceInfo(_message.Message):
    __slots__ = ("node_id", "source", "status", "last_heartbeat", "registered_at", "backbone_digest", "head_digest", "status_reason")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_AT_FIELD_NUMBER: _ClassVar[int]
    BACKBONE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    HEAD_DIGEST_FIELD_NUMBER: _ClassVar[int]
    STATUS_REASON_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    source: str
    status: str
    last_heartbeat: _timestamp_pb2.Timestamp
    registered_at: _timestamp_pb2.Timestamp
    backbone_digest: str
    head_digest: str
    status_reason: str
    def __init__(self, node_id: _Optional[str] = ..., source: _Optional[str] = ..., status: _Optional[str] = ..., last_heartbeat: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., registered_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., backbone_digest: _Optional[str] = ..., head_digest: _Optional[str] = ..., status_reason: _Optional[str] = ...) -> None: ...

class Calibration(_message.Message):
    __slots__ = ("method", "a", "b", "positive_scores", "typicality_scores")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    A_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    POSITIVE_SCORES_FIELD_NUMBER: _ClassVar[int]
    TYPICALITY_SCORES_FIELD_NUMBER: _ClassVar[int]
    method: str
    a: float
    b: float
    positive_scores: _containers.RepeatedScalarFieldContainer[float]
    typicality_scores: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, method: _Optional[str] = ..., a: _Optional[float] = ..., b: _Optional[float] = ..., positive_scores: _Optional[_Iterable[float]] = ..., typicality_scores: _Optional[_Iterable[float]] = ...) -> None: ...

class ChallengeRequest(_message.Message):
    __slots__ = ("node_id",)
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    def __init__(self, node_id: _Optional[str] = ...) -> None: ...

class ChallengeResponse(_message.Message):
    __slots__ = ("challenge", "expires_in_seconds")
    CHALLENGE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    challenge: str
    expires_in_seconds: float
    def __init__(self, challenge: _Optional[str] = ..., expires_in_seconds: _Optional[float] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("node_id", "source", "endpoint", "backbone_digest", "backbone_version", "head_digest", "calibration", "threshold", "metrics")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    BACKBONE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    BACKBONE_VERSION_FIELD_NUMBER: _ClassVar[int]
    HEAD_DIGEST_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    source: str
    endpoint: str
    backbone_digest: str
    backbone_version: str
    head_digest: str
    calibration: Calibration
    threshold: float
    metrics: _struct_pb2.Struct
    def __init__(self, node_id: _Optional[str] = ..., source: _Optional[str] = ..., endpoint: _Optional[str] = ..., backbone_digest: _Optional[str] = ..., backbone_version: _Optional[str] = ..., head_digest: _Optional[str] = ..., calibration: _Optional[_Union[Calibration, _Mapping]] = ..., threshold: _Optional[float] = ..., metrics: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("status", "backbone", "heartbeat_interval_seconds", "stale_after_seconds", "gateway_credential", "generation")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    BACKBONE_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    STALE_AFTER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    status: str
    backbone: Backbone
    heartbeat_interval_seconds: float
    stale_after_seconds: float
    gateway_credential: str
    generation: int
    def __init__(self, status: _Optional[str] = ..., backbone: _Optional[_Union[Backbone, _Mapping]] = ..., heartbeat_interval_seconds: _Optional[float] = ..., stale_after_seconds: _Optional[float] = ..., gateway_credential: _Optional[str] = ..., generation: _Optional[int] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("node_id",)
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    def __init__(self, node_id: _Optional[str] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: str
    def __init__(self, status: _Optional[str] = ...) -> None: ...

class DeregisterRequest(_message.Message):
    __slots__ = ("node_id", "generation")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    generation: int
    def __init__(self, node_id: _Optional[str] = ..., generation: _Optional[int] = ...) -> None: ...

class DeregisterResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: str
    def __init__(self, status: _Optional[str] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("features", "shape", "dtype", "backbone_digest")
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    BACKBONE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    features: bytes
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: str
    backbone_digest: str
    def __init__(self, features: _Optional[bytes] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[str] = ..., backbone_digest: _Optional[str] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("raw_scores", "source", "head_digest", "typicality")
    RAW_SCORES_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    HEAD_DIGEST_FIELD_NUMBER: _ClassVar[int]
    TYPICALITY_FIELD_NUMBER: _ClassVar[int]
    raw_scores: _containers.RepeatedScalarFieldContainer[float]
    source: str
    head_digest: str
    typicality: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, raw_scores: _Optional[_Iterable[float]] = ..., source: _Optional[str] = ..., head_digest: _Optional[str] = ..., typicality: _Optional[_Iterable[float]] = ...) -> None: ...

class DescribeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DescribeResponse(_message.Message):
    __slots__ = ("node_id", "source", "backbone", "head_digest", "feature_shape", "calibration", "threshold")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    BACKBONE_FIELD_NUMBER: _ClassVar[int]
    HEAD_DIGEST_FIELD_NUMBER: _ClassVar[int]
    FEATURE_SHAPE_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    source: str
    backbone: Backbone
    head_digest: str
    feature_shape: _containers.RepeatedScalarFieldContainer[int]
    calibration: Calibration
    threshold: float
    def __init__(self, node_id: _Optional[str] = ..., source: _Optional[str] = ..., backbone: _Optional[_Union[Backbone, _Mapping]] = ..., head_digest: _Optional[str] = ..., feature_shape: _Optional[_Iterable[int]] = ..., calibration: _Optional[_Union[Calibration, _Mapping]] = ..., threshold: _Optional[float] = ...) -> None: ...

class OpenRequest(_message.Message):
    __slots__ = ("node_id", "source")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    source: str
    def __init__(self, node_id: _Optional[str] = ..., source: _Optional[str] = ...) -> None: ...

class DistributedFile(_message.Message):
    __slots__ = ("set", "path", "size", "sha256")
    SET_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    set: str
    path: str
    size: int
    sha256: str
    def __init__(self, set: _Optional[str] = ..., path: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class OpenResponse(_message.Message):
    __slots__ = ("public_key_pem", "backbone", "reference_digest", "files", "ticket", "ticket_expires_in_seconds", "chunk_bytes")
    PUBLIC_KEY_PEM_FIELD_NUMBER: _ClassVar[int]
    BACKBONE_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    TICKET_FIELD_NUMBER: _ClassVar[int]
    TICKET_EXPIRES_IN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    public_key_pem: bytes
    backbone: Backbone
    reference_digest: str
    files: _containers.RepeatedCompositeFieldContainer[DistributedFile]
    ticket: str
    ticket_expires_in_seconds: float
    chunk_bytes: int
    def __init__(self, public_key_pem: _Optional[bytes] = ..., backbone: _Optional[_Union[Backbone, _Mapping]] = ..., reference_digest: _Optional[str] = ..., files: _Optional[_Iterable[_Union[DistributedFile, _Mapping]]] = ..., ticket: _Optional[str] = ..., ticket_expires_in_seconds: _Optional[float] = ..., chunk_bytes: _Optional[int] = ...) -> None: ...

class FetchRequest(_message.Message):
    __slots__ = ("set", "path")
    SET_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    set: str
    path: str
    def __init__(self, set: _Optional[str] = ..., path: _Optional[str] = ...) -> None: ...

class FileChunk(_message.Message):
    __slots__ = ("data", "offset")
    DATA_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    offset: int
    def __init__(self, data: _Optional[bytes] = ..., offset: _Optional[int] = ...) -> None: ...
