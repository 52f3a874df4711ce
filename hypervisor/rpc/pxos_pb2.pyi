from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Empty(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class VMRef(_message.Message):
    __slots__ = ("vm_id",)
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    vm_id: int
    def __init__(self, vm_id: _Optional[int] = ...) -> None: ...

class Diagnostic(_message.Message):
    __slots__ = ("code", "line", "column", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    LINE_FIELD_NUMBER: _ClassVar[int]
    COLUMN_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    line: int
    column: int
    message: str
    def __init__(self, code: _Optional[str] = ..., line: _Optional[int] = ..., column: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class ErrorDetail(_message.Message):
    __slots__ = ("status", "message", "diagnostics", "error_type")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DIAGNOSTICS_FIELD_NUMBER: _ClassVar[int]
    ERROR_TYPE_FIELD_NUMBER: _ClassVar[int]
    status: str
    message: str
    diagnostics: _containers.RepeatedCompositeFieldContainer[Diagnostic]
    error_type: str
    def __init__(self, status: _Optional[str] = ..., message: _Optional[str] = ..., diagnostics: _Optional[_Iterable[_Union[Diagnostic, _Mapping]]] = ..., error_type: _Optional[str] = ...) -> None: ...

class RegisterVMRequest(_message.Message):
    __slots__ = ("vm_id", "name", "memory_bytes", "share", "cap", "default_class", "socket", "device", "domain")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    CAP_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_CLASS_FIELD_NUMBER: _ClassVar[int]
    SOCKET_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    vm_id: int
    name: str
    memory_bytes: int
    share: float
    cap: float
    default_class: str
    socket: str
    device: int
    domain: str
    def __init__(self, vm_id: _Optional[int] = ..., name: _Optional[str] = ..., memory_bytes: _Optional[int] = ..., share: _Optional[float] = ..., cap: _Optional[float] = ..., default_class: _Optional[str] = ..., socket: _Optional[str] = ..., device: _Optional[int] = ..., domain: _Optional[str] = ...) -> None: ...

class VMInfo(_message.Message):
    __slots__ = ("vm_id", "name", "memory_quota", "memory_used", "share", "cap", "default_class", "socket", "domain", "device")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MEMORY_QUOTA_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    CAP_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_CLASS_FIELD_NUMBER: _ClassVar[int]
    SOCKET_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    vm_id: int
    name: str
    memory_quota: int
    memory_used: int
    share: float
    cap: float
    default_class: str
    socket: str
    domain: str
    device: int
    def __init__(self, vm_id: _Optional[int] = ..., name: _Optional[str] = ..., memory_quota: _Optional[int] = ..., memory_used: _Optional[int] = ..., share: _Optional[float] = ..., cap: _Optional[float] = ..., default_class: _Optional[str] = ..., socket: _Optional[str] = ..., domain: _Optional[str] = ..., device: _Optional[int] = ...) -> None: ...

class ListVMsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListVMsResponse(_message.Message):
    __slots__ = ("vms",)
    VMS_FIELD_NUMBER: _ClassVar[int]
    vms: _containers.RepeatedCompositeFieldContainer[VMInfo]
    def __init__(self, vms: _Optional[_Iterable[_Union[VMInfo, _Mapping]]] = ...) -> None: ...

class TransportStatus(_message.Message):
    __slots__ = ("present", "connected", "features", "requests", "errors")
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    present: bool
    connected: bool
    features: int
    requests: int
    errors: int
    def __init__(self, present: _Optional[bool] = ..., connected: _Optional[bool] = ..., features: _Optional[int] = ..., requests: _Optional[int] = ..., errors: _Optional[int] = ...) -> None: ...

class VMStats(_message.Message):
    __slots__ = ("vm_id", "name", "memory_quota", "memory_used", "memory_device_bytes", "memory_host_bytes", "share", "cap", "achieved_share", "device_seconds_total", "launches_total", "launches_failed", "launches_by_class", "queue_depth", "inflight", "buffers", "kernels", "latency_p50_ms", "latency_p99_ms", "vm_switches_in", "idle", "extra", "transport", "device")
    class LaunchesByClassEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class ExtraEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MEMORY_QUOTA_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_FIELD_NUMBER: _ClassVar[int]
    MEMORY_DEVICE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_HOST_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    CAP_FIELD_NUMBER: _ClassVar[int]
    ACHIEVED_SHARE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_SECONDS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    LAUNCHES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    LAUNCHES_FAILED_FIELD_NUMBER: _ClassVar[int]
    LAUNCHES_BY_CLASS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    INFLIGHT_FIELD_NUMBER: _ClassVar[int]
    BUFFERS_FIELD_NUMBER: _ClassVar[int]
    KERNELS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P99_MS_FIELD_NUMBER: _ClassVar[int]
    VM_SWITCHES_IN_FIELD_NUMBER: _ClassVar[int]
    IDLE_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    vm_id: int
    name: str
    memory_quota: int
    memory_used: int
    memory_device_bytes: int
    memory_host_bytes: int
    share: float
    cap: float
    achieved_share: float
    device_seconds_total: float
    launches_total: int
    launches_failed: int
    launches_by_class: _containers.ScalarMap[str, int]
    queue_depth: int
    inflight: int
    buffers: int
    kernels: int
    latency_p50_ms: float
    latency_p99_ms: float
    vm_switches_in: int
    idle: bool
    extra: _containers.ScalarMap[str, float]
    transport: TransportStatus
    device: int
    def __init__(self, vm_id: _Optional[int] = ..., name: _Optional[str] = ..., memory_quota: _Optional[int] = ..., memory_used: _Optional[int] = ..., memory_device_bytes: _Optional[int] = ..., memory_host_bytes: _Optional[int] = ..., share: _Optional[float] = ..., cap: _Optional[float] = ..., achieved_share: _Optional[float] = ..., device_seconds_total: _Optional[float] = ..., launches_total: _Optional[int] = ..., launches_failed: _Optional[int] = ..., launches_by_class: _Optional[_Mapping[str, int]] = ..., queue_depth: _Optional[int] = ..., inflight: _Optional[int] = ..., buffers: _Optional[int] = ..., kernels: _Optional[int] = ..., latency_p50_ms: _Optional[float] = ..., latency_p99_ms: _Optional[float] = ..., vm_switches_in: _Optional[int] = ..., idle: _Optional[bool] = ..., extra: _Optional[_Mapping[str, float]] = ..., transport: _Optional[_Union[TransportStatus, _Mapping]] = ..., device: _Optional[int] = ...) -> None: ...

class GetVMResponse(_message.Message):
    __slots__ = ("info", "stats")
    INFO_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    info: VMInfo
    stats: VMStats
    def __init__(self, info: _Optional[_Union[VMInfo, _Mapping]] = ..., stats: _Optional[_Union[VMStats, _Mapping]] = ...) -> None: ...

class SetQuotaRequest(_message.Message):
    __slots__ = ("vm_id", "memory_bytes", "share", "cap", "remove_cap", "evict")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    CAP_FIELD_NUMBER: _ClassVar[int]
    REMOVE_CAP_FIELD_NUMBER: _ClassVar[int]
    EVICT_FIELD_NUMBER: _ClassVar[int]
    vm_id: int
    memory_bytes: int
    share: float
    cap: float
    remove_cap: bool
    evict: bool
    def __init__(self, vm_id: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., share: _Optional[float] = ..., cap: _Optional[float] = ..., remove_cap: _Optional[bool] = ..., evict: _Optional[bool] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeviceStats(_message.Message):
    __slots__ = ("backend", "device_name", "pool_bytes", "pool_used", "host_budget", "host_used", "vendor", "api", "time_source", "id", "vms", "share_used", "utilisation", "busy_seconds", "launches", "queue_depth")
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    DEVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    POOL_BYTES_FIELD_NUMBER: _ClassVar[int]
    POOL_USED_FIELD_NUMBER: _ClassVar[int]
    HOST_BUDGET_FIELD_NUMBER: _ClassVar[int]
    HOST_USED_FIELD_NUMBER: _ClassVar[int]
    VENDOR_FIELD_NUMBER: _ClassVar[int]
    API_FIELD_NUMBER: _ClassVar[int]
    TIME_SOURCE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    VMS_FIELD_NUMBER: _ClassVar[int]
    SHARE_USED_FIELD_NUMBER: _ClassVar[int]
    UTILISATION_FIELD_NUMBER: _ClassVar[int]
    BUSY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LAUNCHES_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    backend: str
    device_name: str
    pool_bytes: int
    pool_used: int
    host_budget: int
    host_used: int
    vendor: str
    api: str
    time_source: str
    id: int
    vms: int
    share_used: float
    utilisation: float
    busy_seconds: float
    launches: int
    queue_depth: int
    def __init__(self, backend: _Optional[str] = ..., device_name: _Optional[str] = ..., pool_bytes: _Optional[int] = ..., pool_used: _Optional[int] = ..., host_budget: _Optional[int] = ..., host_used: _Optional[int] = ..., vendor: _Optional[str] = ..., api: _Optional[str] = ..., time_source: _Optional[str] = ..., id: _Optional[int] = ..., vms: _Optional[int] = ..., share_used: _Optional[float] = ..., utilisation: _Optional[float] = ..., busy_seconds: _Optional[float] = ..., launches: _Optional[int] = ..., queue_depth: _Optional[int] = ...) -> None: ...

class PlannedLaunch(_message.Message):
    __slots__ = ("vm_id", "launch_id", "wclass")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    LAUNCH_ID_FIELD_NUMBER: _ClassVar[int]
    WCLASS_FIELD_NUMBER: _ClassVar[int]
    vm_id: int
    launch_id: int
    wclass: str
    def __init__(self, vm_id: _Optional[int] = ..., launch_id: _Optional[int] = ..., wclass: _Optional[str] = ...) -> None: ...

class SchedulerStats(_message.Message):
    __slots__ = ("busy_seconds", "launches", "vm_switches", "switch_p50_seconds", "switch_p99_seconds", "lookahead_depth", "lookahead")
    BUSY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LAUNCHES_FIELD_NUMBER: _ClassVar[int]
    VM_SWITCHES_FIELD_NUMBER: _ClassVar[int]
    SWITCH_P50_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SWITCH_P99_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LOOKAHEAD_DEPTH_FIELD_NUMBER: _ClassVar[int]
    LOOKAHEAD_FIELD_NUMBER: _ClassVar[int]
    busy_seconds: float
    launches: int
    vm_switches: int
    switch_p50_seconds: float
    switch_p99_seconds: float
    lookahead_depth: int
    lookahead: _containers.RepeatedCompositeFieldContainer[PlannedLaunch]
    def __init__(self, busy_seconds: _Optional[float] = ..., launches: _Optional[int] = ..., vm_switches: _Optional[int] = ..., switch_p50_seconds: _Optional[float] = ..., switch_p99_seconds: _Optional[float] = ..., lookahead_depth: _Optional[int] = ..., lookahead: _Optional[_Iterable[_Union[PlannedLaunch, _Mapping]]] = ...) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("vms", "device", "scheduler", "time", "devices")
    VMS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    SCHEDULER_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    vms: _containers.RepeatedCompositeFieldContainer[VMStats]
    device: DeviceStats
    scheduler: SchedulerStats
    time: float
    devices: _containers.RepeatedCompositeFieldContainer[DeviceStats]
    def __init__(self, vms: _Optional[_Iterable[_Union[VMStats, _Mapping]]] = ..., device: _Optional[_Union[DeviceStats, _Mapping]] = ..., scheduler: _Optional[_Union[SchedulerStats, _Mapping]] = ..., time: _Optional[float] = ..., devices: _Optional[_Iterable[_Union[DeviceStats, _Mapping]]] = ...) -> None: ...

class MoveVMRequest(_message.Message):
    __slots__ = ("vm_id", "device")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    vm_id: int
    device: int
    def __init__(self, vm_id: _Optional[int] = ..., device: _Optional[int] = ...) -> None: ...

class MoveVMResponse(_message.Message):
    __slots__ = ("info", "from_device", "pause_seconds", "bytes", "buffers", "launches_waited", "mb_per_s", "peer_bytes")
    INFO_FIELD_NUMBER: _ClassVar[int]
    FROM_DEVICE_FIELD_NUMBER: _ClassVar[int]
    PAUSE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    BUFFERS_FIELD_NUMBER: _ClassVar[int]
    LAUNCHES_WAITED_FIELD_NUMBER: _ClassVar[int]
    MB_PER_S_FIELD_NUMBER: _ClassVar[int]
    PEER_BYTES_FIELD_NUMBER: _ClassVar[int]
    info: VMInfo
    from_device: int
    pause_seconds: float
    bytes: int
    buffers: int
    launches_waited: int
    mb_per_s: float
    peer_bytes: int
    def __init__(self, info: _Optional[_Union[VMInfo, _Mapping]] = ..., from_device: _Optional[int] = ..., pause_seconds: _Optional[float] = ..., bytes: _Optional[int] = ..., buffers: _Optional[int] = ..., launches_waited: _Optional[int] = ..., mb_per_s: _Optional[float] = ..., peer_bytes: _Optional[int] = ...) -> None: ...

class CompileRequest(_message.Message):
    __slots__ = ("vm_id", "source")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    vm_id: int
    source: str
    def __init__(self, vm_id: _Optional[int] = ..., source: _Optional[str] = ...) -> None: ...

class ParamInfo(_message.Message):
    __slots__ = ("name", "dtype", "scalar", "any_shape", "dims", "direction")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SCALAR_FIELD_NUMBER: _ClassVar[int]
    ANY_SHAPE_FIELD_NUMBER: _ClassVar[int]
    DIMS_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    scalar: bool
    any_shape: bool
    dims: _containers.RepeatedScalarFieldContainer[str]
    direction: str
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., scalar: _Optional[bool] = ..., any_shape: _Optional[bool] = ..., dims: _Optional[_Iterable[str]] = ..., direction: _Optional[str] = ...) -> None: ...

class KernelInfo(_message.Message):
    __slots__ = ("kernel_id", "name", "params", "class_hint", "priority")
    KERNEL_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    CLASS_HINT_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    kernel_id: int
    name: str
    params: _containers.RepeatedCompositeFieldContainer[ParamInfo]
    class_hint: str
    priority: int
    def __init__(self, kernel_id: _Optional[int] = ..., name: _Optional[str] = ..., params: _Optional[_Iterable[_Union[ParamInfo, _Mapping]]] = ..., class_hint: _Optional[str] = ..., priority: _Optional[int] = ...) -> None: ...

class CompileResponse(_message.Message):
    __slots__ = ("kernels",)
    KERNELS_FIELD_NUMBER: _ClassVar[int]
    kernels: _containers.RepeatedCompositeFieldContainer[KernelInfo]
    def __init__(self, kernels: _Optional[_Iterable[_Union[KernelInfo, _Mapping]]] = ...) -> None: ...

class KernelRef(_message.Message):
    __slots__ = ("vm_id", "kernel_id")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    KERNEL_ID_FIELD_NUMBER: _ClassVar[int]
    vm_id: int
    kernel_id: int
    def __init__(self, vm_id: _Optional[int] = ..., kernel_id: _Optional[int] = ...) -> None: ...

class AllocRequest(_message.Message):
    __slots__ = ("vm_id", "dtype", "shape")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    vm_id: int
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, vm_id: _Optional[int] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class BufferInfo(_message.Message):
    __slots__ = ("handle", "nbytes", "dtype", "shape", "residency")
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    NBYTES_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    RESIDENCY_FIELD_NUMBER: _ClassVar[int]
    handle: int
    nbytes: int
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    residency: str
    def __init__(self, handle: _Optional[int] = ..., nbytes: _Optional[int] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., residency: _Optional[str] = ...) -> None: ...

class BufferRef(_message.Message):
    __slots__ = ("vm_id", "handle")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    vm_id: int
    handle: int
    def __init__(self, vm_id: _Optional[int] = ..., handle: _Optional[int] = ...) -> None: ...

class WriteRequest(_message.Message):
    __slots__ = ("vm_id", "handle", "offset", "data")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    vm_id: int
    handle: int
    offset: int
    data: bytes
    def __init__(self, vm_id: _Optional[int] = ..., handle: _Optional[int] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class WriteResponse(_message.Message):
    __slots__ = ("written",)
    WRITTEN_FIELD_NUMBER: _ClassVar[int]
    written: int
    def __init__(self, written: _Optional[int] = ...) -> None: ...

class ReadRequest(_message.Message):
    __slots__ = ("vm_id", "handle", "offset", "length")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    vm_id: int
    handle: int
    offset: int
    length: int
    def __init__(self, vm_id: _Optional[int] = ..., handle: _Optional[int] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class ReadResponse(_message.Message):
    __slots__ = ("data", "nbytes")
    DATA_FIELD_NUMBER: _ClassVar[int]
    NBYTES_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    nbytes: int
    def __init__(self, data: _Optional[bytes] = ..., nbytes: _Optional[int] = ...) -> None: ...

class ScalarValue(_message.Message):
    __slots__ = ("f", "i", "dtype")
    F_FIELD_NUMBER: _ClassVar[int]
    I_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    f: float
    i: int
    dtype: str
    def __init__(self, f: _Optional[float] = ..., i: _Optional[int] = ..., dtype: _Optional[str] = ...) -> None: ...

class Binding(_message.Message):
    __slots__ = ("handle", "scalar")
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    SCALAR_FIELD_NUMBER: _ClassVar[int]
    handle: int
    scalar: ScalarValue
    def __init__(self, handle: _Optional[int] = ..., scalar: _Optional[_Union[ScalarValue, _Mapping]] = ...) -> None: ...

class LaunchRequest(_message.Message):
    __slots__ = ("vm_id", "kernel_id", "bindings", "priority", "class_hint", "timeout_seconds")
    class BindingsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Binding
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Binding, _Mapping]] = ...) -> None: ...
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    KERNEL_ID_FIELD_NUMBER: _ClassVar[int]
    BINDINGS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    CLASS_HINT_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    vm_id: int
    kernel_id: int
    bindings: _containers.MessageMap[str, Binding]
    priority: int
    class_hint: str
    timeout_seconds: float
    def __init__(self, vm_id: _Optional[int] = ..., kernel_id: _Optional[int] = ..., bindings: _Optional[_Mapping[str, Binding]] = ..., priority: _Optional[int] = ..., class_hint: _Optional[str] = ..., timeout_seconds: _Optional[float] = ...) -> None: ...

class LaunchResponse(_message.Message):
    __slots__ = ("launch_id", "status", "error", "device_ns", "queue_ns", "total_ns", "wclass", "kernel")
    LAUNCH_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DEVICE_NS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_NS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_NS_FIELD_NUMBER: _ClassVar[int]
    WCLASS_FIELD_NUMBER: _ClassVar[int]
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    launch_id: int
    status: str
    error: str
    device_ns: int
    queue_ns: int
    total_ns: int
    wclass: str
    kernel: str
    def __init__(self, launch_id: _Optional[int] = ..., status: _Optional[str] = ..., error: _Optional[str] = ..., device_ns: _Optional[int] = ..., queue_ns: _Optional[int] = ..., total_ns: _Optional[int] = ..., wclass: _Optional[str] = ..., kernel: _Optional[str] = ...) -> None: ...

class IdleHintRequest(_message.Message):
    __slots__ = ("vm_id", "idle")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    IDLE_FIELD_NUMBER: _ClassVar[int]
    vm_id: int
    idle: bool
    def __init__(self, vm_id: _Optional[int] = ..., idle: _Optional[bool] = ...) -> None: ...

class WatchEventsRequest(_message.Message):
    __slots__ = ("vm_ids", "kinds")
    VM_IDS_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    vm_ids: _containers.RepeatedScalarFieldContainer[int]
    kinds: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, vm_ids: _Optional[_Iterable[int]] = ..., kinds: _Optional[_Iterable[str]] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("kind", "vm_id", "time", "detail_json", "dropped")
    KIND_FIELD_NUMBER: _ClassVar[int]
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    DETAIL_JSON_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    kind: str
    vm_id: int
    time: float
    detail_json: str
    dropped: int
    def __init__(self, kind: _Optional[str] = ..., vm_id: _Optional[int] = ..., time: _Optional[float] = ..., detail_json: _Optional[str] = ..., dropped: _Optional[int] = ...) -> None: ...

class LoadModelRequest(_message.Message):
    __slots__ = ("name", "path", "dtype")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    path: str
    dtype: str
    def __init__(self, name: _Optional[str] = ..., path: _Optional[str] = ..., dtype: _Optional[str] = ...) -> None: ...

class ModelRef(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("model_id", "name", "path", "architecture", "dtype", "tensors", "bytes", "device_bytes", "host_bytes", "users", "opens", "load_seconds", "config_json")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    DEVICE_BYTES_FIELD_NUMBER: _ClassVar[int]
    HOST_BYTES_FIELD_NUMBER: _ClassVar[int]
    USERS_FIELD_NUMBER: _ClassVar[int]
    OPENS_FIELD_NUMBER: _ClassVar[int]
    LOAD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    model_id: int
    name: str
    path: str
    architecture: str
    dtype: str
    tensors: int
    bytes: int
    device_bytes: int
    host_bytes: int
    users: _containers.RepeatedScalarFieldContainer[int]
    opens: int
    load_seconds: float
    config_json: str
    def __init__(self, model_id: _Optional[int] = ..., name: _Optional[str] = ..., path: _Optional[str] = ..., architecture: _Optional[str] = ..., dtype: _Optional[str] = ..., tensors: _Optional[int] = ..., bytes: _Optional[int] = ..., device_bytes: _Optional[int] = ..., host_bytes: _Optional[int] = ..., users: _Optional[_Iterable[int]] = ..., opens: _Optional[int] = ..., load_seconds: _Optional[float] = ..., config_json: _Optional[str] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class AdviceRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AdviceRow(_message.Message):
    __slots__ = ("vm_id", "source", "wclass", "share", "rationale", "status", "detail", "age_seconds", "heuristic_class", "llm_class", "applied", "cap")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    WCLASS_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    RATIONALE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    HEURISTIC_CLASS_FIELD_NUMBER: _ClassVar[int]
    LLM_CLASS_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    CAP_FIELD_NUMBER: _ClassVar[int]
    vm_id: int
    source: str
    wclass: str
    share: float
    rationale: str
    status: str
    detail: str
    age_seconds: float
    heuristic_class: str
    llm_class: str
    applied: bool
    cap: float
    def __init__(self, vm_id: _Optional[int] = ..., source: _Optional[str] = ..., wclass: _Optional[str] = ..., share: _Optional[float] = ..., rationale: _Optional[str] = ..., status: _Optional[str] = ..., detail: _Optional[str] = ..., age_seconds: _Optional[float] = ..., heuristic_class: _Optional[str] = ..., llm_class: _Optional[str] = ..., applied: _Optional[bool] = ..., cap: _Optional[float] = ...) -> None: ...

class AdviceResponse(_message.Message):
    __slots__ = ("mode", "endpoint", "model", "breaker", "agreement", "requests", "applied", "rejected", "rows", "last_error")
    class RequestsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class RejectedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    MODE_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BREAKER_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    mode: str
    endpoint: str
    model: str
    breaker: str
    agreement: float
    requests: _containers.ScalarMap[str, int]
    applied: int
    rejected: _containers.ScalarMap[str, int]
    rows: _containers.RepeatedCompositeFieldContainer[AdviceRow]
    last_error: str
    def __init__(self, mode: _Optional[str] = ..., endpoint: _Optional[str] = ..., model: _Optional[str] = ..., breaker: _Optional[str] = ..., agreement: _Optional[float] = ..., requests: _Optional[_Mapping[str, int]] = ..., applied: _Optional[int] = ..., rejected: _Optional[_Mapping[str, int]] = ..., rows: _Optional[_Iterable[_Union[AdviceRow, _Mapping]]] = ..., last_error: _Optional[str] = ...) -> None: ...

class DecideAdviceRequest(_message.Message):
    __slots__ = ("vm_id", "accept")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_FIELD_NUMBER: _ClassVar[int]
    vm_id: int
    accept: bool
    def __init__(self, vm_id: _Optional[int] = ..., accept: _Optional[bool] = ...) -> None: ...
