from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Source(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SOURCE_UNSPECIFIED: _ClassVar[Source]
    SOURCE_TEXT: _ClassVar[Source]
    SOURCE_TABLE: _ClassVar[Source]
    SOURCE_KB: _ClassVar[Source]
    SOURCE_INFOBOX: _ClassVar[Source]

class SearchMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEARCH_MODE_UNSPECIFIED: _ClassVar[SearchMode]
    SEARCH_MODE_DENSE: _ClassVar[SearchMode]
    SEARCH_MODE_BM25: _ClassVar[SearchMode]
    SEARCH_MODE_HYBRID: _ClassVar[SearchMode]
SOURCE_UNSPECIFIED: Source
SOURCE_TEXT: Source
SOURCE_TABLE: Source
SOURCE_KB: Source
SOURCE_INFOBOX: Source
SEARCH_MODE_UNSPECIFIED: SearchMode
SEARCH_MODE_DENSE: SearchMode
SEARCH_MODE_BM25: SearchMode
SEARCH_MODE_HYBRID: SearchMode

class RetrieveRequest(_message.Message):
    __slots__ = ("query", "instruction", "sources", "top_k", "score_threshold", "with_text", "index", "mode", "fusion", "group_by_record", "max_per_record", "history")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    SCORE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    WITH_TEXT_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    FUSION_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_RECORD_FIELD_NUMBER: _ClassVar[int]
    MAX_PER_RECORD_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    query: str
    instruction: str
    sources: _containers.RepeatedScalarFieldContainer[Source]
    top_k: int
    score_threshold: float
    with_text: bool
    index: str
    mode: SearchMode
    fusion: Fusion
    group_by_record: bool
    max_per_record: int
    history: _containers.RepeatedCompositeFieldContainer[Turn]
    def __init__(self, query: _Optional[str] = ..., instruction: _Optional[str] = ..., sources: _Optional[_Iterable[_Union[Source, str]]] = ..., top_k: _Optional[int] = ..., score_threshold: _Optional[float] = ..., with_text: _Optional[bool] = ..., index: _Optional[str] = ..., mode: _Optional[_Union[SearchMode, str]] = ..., fusion: _Optional[_Union[Fusion, _Mapping]] = ..., group_by_record: _Optional[bool] = ..., max_per_record: _Optional[int] = ..., history: _Optional[_Iterable[_Union[Turn, _Mapping]]] = ...) -> None: ...

class Turn(_message.Message):
    __slots__ = ("question", "answer")
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    question: str
    answer: str
    def __init__(self, question: _Optional[str] = ..., answer: _Optional[str] = ...) -> None: ...

class Fusion(_message.Message):
    __slots__ = ("rrf_k", "depth", "dense_weight", "bm25_weight")
    RRF_K_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    DENSE_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    BM25_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    rrf_k: float
    depth: int
    dense_weight: float
    bm25_weight: float
    def __init__(self, rrf_k: _Optional[float] = ..., depth: _Optional[int] = ..., dense_weight: _Optional[float] = ..., bm25_weight: _Optional[float] = ...) -> None: ...

class Hit(_message.Message):
    __slots__ = ("record_id", "source", "part", "score", "title", "text", "unit_id")
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    PART_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    UNIT_ID_FIELD_NUMBER: _ClassVar[int]
    record_id: str
    source: Source
    part: int
    score: float
    title: str
    text: str
    unit_id: int
    def __init__(self, record_id: _Optional[str] = ..., source: _Optional[_Union[Source, str]] = ..., part: _Optional[int] = ..., score: _Optional[float] = ..., title: _Optional[str] = ..., text: _Optional[str] = ..., unit_id: _Optional[int] = ...) -> None: ...

class RetrieveResponse(_message.Message):
    __slots__ = ("hits", "sources", "sources_resolved", "instruction", "index", "generation", "model", "server_seconds", "mode", "sources_confidence", "resolved_query", "preferred_sources", "preferred_bonus")
    HITS_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    SOURCES_RESOLVED_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SERVER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    SOURCES_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_QUERY_FIELD_NUMBER: _ClassVar[int]
    PREFERRED_SOURCES_FIELD_NUMBER: _ClassVar[int]
    PREFERRED_BONUS_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[Hit]
    sources: _containers.RepeatedScalarFieldContainer[Source]
    sources_resolved: bool
    instruction: str
    index: str
    generation: int
    model: str
    server_seconds: float
    mode: SearchMode
    sources_confidence: float
    resolved_query: str
    preferred_sources: _containers.RepeatedScalarFieldContainer[Source]
    preferred_bonus: float
    def __init__(self, hits: _Optional[_Iterable[_Union[Hit, _Mapping]]] = ..., sources: _Optional[_Iterable[_Union[Source, str]]] = ..., sources_resolved: _Optional[bool] = ..., instruction: _Optional[str] = ..., index: _Optional[str] = ..., generation: _Optional[int] = ..., model: _Optional[str] = ..., server_seconds: _Optional[float] = ..., mode: _Optional[_Union[SearchMode, str]] = ..., sources_confidence: _Optional[float] = ..., resolved_query: _Optional[str] = ..., preferred_sources: _Optional[_Iterable[_Union[Source, str]]] = ..., preferred_bonus: _Optional[float] = ...) -> None: ...

class RetrieveBatchRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[RetrieveRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[RetrieveRequest, _Mapping]]] = ...) -> None: ...

class RetrieveBatchResponse(_message.Message):
    __slots__ = ("responses", "server_seconds")
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    SERVER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[RetrieveResponse]
    server_seconds: float
    def __init__(self, responses: _Optional[_Iterable[_Union[RetrieveResponse, _Mapping]]] = ..., server_seconds: _Optional[float] = ...) -> None: ...

class RetrieveStreamRequest(_message.Message):
    __slots__ = ("requests", "window")
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[RetrieveRequest]
    window: int
    def __init__(self, requests: _Optional[_Iterable[_Union[RetrieveRequest, _Mapping]]] = ..., window: _Optional[int] = ...) -> None: ...

class RetrieveStreamResponse(_message.Message):
    __slots__ = ("position", "response")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    position: int
    response: RetrieveResponse
    def __init__(self, position: _Optional[int] = ..., response: _Optional[_Union[RetrieveResponse, _Mapping]] = ...) -> None: ...

class GetIndexInfoRequest(_message.Message):
    __slots__ = ("index",)
    INDEX_FIELD_NUMBER: _ClassVar[int]
    index: str
    def __init__(self, index: _Optional[str] = ...) -> None: ...

class SourceCount(_message.Message):
    __slots__ = ("source", "units", "records")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    UNITS_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    source: Source
    units: int
    records: int
    def __init__(self, source: _Optional[_Union[Source, str]] = ..., units: _Optional[int] = ..., records: _Optional[int] = ...) -> None: ...

class ShardInfo(_message.Message):
    __slots__ = ("source", "factory", "units")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    FACTORY_FIELD_NUMBER: _ClassVar[int]
    UNITS_FIELD_NUMBER: _ClassVar[int]
    source: Source
    factory: str
    units: int
    def __init__(self, source: _Optional[_Union[Source, str]] = ..., factory: _Optional[str] = ..., units: _Optional[int] = ...) -> None: ...

class IndexInfo(_message.Message):
    __slots__ = ("name", "generation", "is_default", "total_units", "counts", "model_name", "model_checksum", "prompts", "factory", "metric", "dimension", "shards", "linearizer_version", "max_tokens", "corpus_fingerprint", "created", "loaded", "modes")
    class PromptsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_UNITS_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    FACTORY_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    LINEARIZER_VERSION_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CORPUS_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    LOADED_FIELD_NUMBER: _ClassVar[int]
    MODES_FIELD_NUMBER: _ClassVar[int]
    name: str
    generation: int
    is_default: bool
    total_units: int
    counts: _containers.RepeatedCompositeFieldContainer[SourceCount]
    model_name: str
    model_checksum: str
    prompts: _containers.ScalarMap[str, str]
    factory: str
    metric: str
    dimension: int
    shards: _containers.RepeatedCompositeFieldContainer[ShardInfo]
    linearizer_version: str
    max_tokens: int
    corpus_fingerprint: str
    created: str
    loaded: str
    modes: _containers.RepeatedScalarFieldContainer[SearchMode]
    def __init__(self, name: _Optional[str] = ..., generation: _Optional[int] = ..., is_default: _Optional[bool] = ..., total_units: _Optional[int] = ..., counts: _Optional[_Iterable[_Union[SourceCount, _Mapping]]] = ..., model_name: _Optional[str] = ..., model_checksum: _Optional[str] = ..., prompts: _Optional[_Mapping[str, str]] = ..., factory: _Optional[str] = ..., metric: _Optional[str] = ..., dimension: _Optional[int] = ..., shards: _Optional[_Iterable[_Union[ShardInfo, _Mapping]]] = ..., linearizer_version: _Optional[str] = ..., max_tokens: _Optional[int] = ..., corpus_fingerprint: _Optional[str] = ..., created: _Optional[str] = ..., loaded: _Optional[str] = ..., modes: _Optional[_Iterable[_Union[SearchMode, str]]] = ...) -> None: ...

class GetIndexInfoResponse(_message.Message):
    __slots__ = ("indexes", "default_index", "model")
    INDEXES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_INDEX_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    indexes: _containers.RepeatedCompositeFieldContainer[IndexInfo]
    default_index: str
    model: str
    def __init__(self, indexes: _Optional[_Iterable[_Union[IndexInfo, _Mapping]]] = ..., default_index: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...

class PublishIndexRequest(_message.Message):
    __slots__ = ("index", "path")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    index: str
    path: str
    def __init__(self, index: _Optional[str] = ..., path: _Optional[str] = ...) -> None: ...

class PublishIndexResponse(_message.Message):
    __slots__ = ("info", "previous_generation", "load_seconds")
    INFO_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_GENERATION_FIELD_NUMBER: _ClassVar[int]
    LOAD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    info: IndexInfo
    previous_generation: int
    load_seconds: float
    def __init__(self, info: _Optional[_Union[IndexInfo, _Mapping]] = ..., previous_generation: _Optional[int] = ..., load_seconds: _Optional[float] = ...) -> None: ...
