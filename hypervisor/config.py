"""pxos-hvd configuration: a TOML file validated by pydantic.

Sizes are written as integers (bytes) or strings with a unit (``"8G"``, ``"512MiB"``,
``"8000M"``); ``K/M/G/T`` are decimal, ``Ki/Mi/Gi/Ti`` binary. Every error names the field
and the file, and raises ConfigError (the daemon refuses to start; a reload keeps the old
config).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from .errors import ConfigError

_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*$", re.IGNORECASE)


def parse_size(value: int | str) -> int:
    """``8G`` -> 8_000_000_000, ``512Mi`` -> 536_870_912, ``4096`` -> 4096."""
    if isinstance(value, bool):
        raise ValueError("a size is a number of bytes or a string like '8G'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size must not be negative, got {value}")
        return value
    if isinstance(value, float) and value >= 0:
        return int(value)
    m = _SIZE.match(str(value))
    if not m:
        raise ValueError(f"cannot read {value!r} as a size (examples: 4096, '512Mi', '8G')")
    number, unit = float(m.group(1)), (m.group(2) or "").lower()
    return int(number * _UNITS[unit])


Size = Annotated[int, BeforeValidator(parse_size)]
MAX_DEVICES = 64  # devices one daemon shares (an 8-GPU host is the common case)
WorkloadClassName = Literal["REALTIME", "INTERACTIVE", "THROUGHPUT", "BATCH"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VMConfig(_Model):
    id: int = Field(gt=0, lt=2**32)
    name: str | None = Field(default=None, min_length=1, max_length=63)
    memory: Size = Field(description="memory quota (the VM's virtual GPU memory)")
    share: float = Field(ge=0, le=100, description="compute share, percent of busy device time")
    cap: float | None = Field(default=None, gt=0, le=100, description="hard cap, percent of wall time")
    default_class: WorkloadClassName | None = None
    socket: str | None = Field(default=None, description="vhost-user socket path QEMU connects to")
    domain: str | None = Field(default=None, min_length=1, max_length=255,
                               description="libvirt domain (name or UUID) whose pxos-vhost-gpu this VM serves")
    device: int | None = Field(default=None, ge=0, lt=1024,
                               description="pin to this device (an id of [daemon] devices); None: placed")
    description: str = Field(default="", max_length=1000, description="free text the LLM advisor reads")
    share_min: float | None = Field(default=None, ge=0, le=100, description="least share the advisor may set")
    share_max: float | None = Field(default=None, ge=0, le=100, description="most share the advisor may set")
    cap_min: float | None = Field(default=None, gt=0, le=100, description="least cap the advisor may set")
    cap_max: float | None = Field(default=None, gt=0, le=100, description="most cap the advisor may set")

    @model_validator(mode="after")
    def _bounds_hold_share(self) -> VMConfig:
        lo = self.share if self.share_min is None else self.share_min
        hi = self.share if self.share_max is None else self.share_max
        if not lo <= self.share <= hi:
            raise ValueError(f"share {self.share:g} must lie within [share_min, share_max] = [{lo:g}, {hi:g}]")
        if (self.cap_min is None) != (self.cap_max is None):
            raise ValueError("give cap_min and cap_max together (the range the advisor may set the cap in)")
        if self.cap_min is not None:
            if self.cap_min > self.cap_max:
                raise ValueError(f"cap_min {self.cap_min:g} is above cap_max {self.cap_max:g}")
            if self.cap is not None and not self.cap_min <= self.cap <= self.cap_max:
                raise ValueError(f"cap {self.cap:g} must lie within [cap_min, cap_max] = "
                                 f"[{self.cap_min:g}, {self.cap_max:g}]")
        return self

    @model_validator(mode="after")
    def _socket_or_domain(self) -> VMConfig:
        if self.socket and self.domain:
            raise ValueError("give socket (QEMU connects there) or domain (libvirt's pxos-vhost-gpu hands the "
                             "connection over), not both")
        return self

    def share_bounds(self) -> tuple[float, float]:
        """What the advisor may set this VM's share to; none given: the share itself only."""
        return (self.share if self.share_min is None else self.share_min,
                self.share if self.share_max is None else self.share_max)


class ModelConfig(_Model):
    name: str = Field(min_length=1, max_length=63, pattern=r"^\S+$", description="the name guests open it by")
    path: str = Field(min_length=1, description="a GGUF file (LLaMA family)")
    dtype: Literal["float32", "float16"] = "float32"


class DaemonSection(_Model):
    grpc_socket: str = "/run/pxos/pxos-hvd.sock"
    grpc_tcp: str | None = Field(default=None, description="host:port; off unless set, and only with mutual "
                                                           "TLS (tls_cert, tls_key, tls_client_ca)")
    tls_cert: str | None = Field(default=None, description="PEM certificate (chain) of the TCP listener")
    tls_key: str | None = Field(default=None, description="PEM private key of tls_cert")
    tls_client_ca: str | None = Field(default=None, description="PEM CA certificate(s): a TCP client must "
                                                                "present a certificate one of them signed")
    metrics_address: str | None = "127.0.0.1:9464"
    backend: Literal["auto", "numpy", "cupy", "wgpu"] = "auto"
    devices: Literal["all"] | Annotated[int, Field(ge=1, le=MAX_DEVICES)] | list[
        Annotated[int, Field(ge=0, lt=1024)]] | None = Field(
        default=None, description="the devices pxOS shares: 'all', a list of CUDA device ids, or (NumPy, "
                                  "wgpu) a number of devices; None: the first device only")
    rebalance_seconds: float = Field(default=0.0, ge=0, le=86400,
                                     description="how often the rebalancer looks at the devices; 0: off")
    rebalance_dwell_seconds: float = Field(default=60.0, ge=0, le=86400,
                                           description="an imbalance must stand this long before a move, "
                                                       "and a VM moved stays at least this long")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    socket_dir: str = Field(default="/run/pxos", description="VM sockets are created here and nowhere else")
    state_file: str | None = Field(
        default=None, description="where run-time VM changes (vm add/remove, quota set) are kept so a "
                                  "restart keeps them; None: they last until the daemon stops")
    vm_socket_group: str | None = Field(
        default=None, description="group that may connect to VM sockets (QEMU's: kvm, libvirt-qemu); "
                                  "VM sockets become 0660 and owned by it. None: 0600, root's QEMU only")


    def device_ids(self) -> list[int] | None:
        """The device ids the file names, or None for 'all' (known once the backend is up)."""
        if self.devices is None:
            return [0]
        if self.devices == "all":
            return None
        if isinstance(self.devices, int):
            return list(range(self.devices))
        return list(self.devices)

    @model_validator(mode="after")
    def _devices_distinct(self) -> DaemonSection:
        if isinstance(self.devices, list):
            if not 1 <= len(self.devices) <= MAX_DEVICES:
                raise ValueError(f"devices lists 1..{MAX_DEVICES} device ids (MAX_DEVICES), got {len(self.devices)}")
            if len(set(self.devices)) != len(self.devices):
                raise ValueError(f"devices names a device twice: {self.devices}")
        return self

    @model_validator(mode="after")
    def _tcp_needs_mutual_tls(self) -> DaemonSection:
        if self.grpc_tcp:
            missing = [n for n in ("tls_cert", "tls_key", "tls_client_ca") if not getattr(self, n)]
            if missing:
                raise ValueError(f"grpc_tcp is set but {', '.join(missing)} is not: pxos-hvd serves TCP only "
                                 "with mutual TLS (docs/operations.md, 'Remote control over TCP')")
        return self


class LibvirtSection(_Model):
    """libvirt's native vhost-user GPU (docs/operations.md, "libvirt"): pxos-vhost-gpu, the
    per-VM process libvirt starts, hands its connection to pxos-hvd over ``handoff_socket``."""

    handoff_socket: str | None = Field(
        default=None, description="where pxos-vhost-gpu hands libvirt's connections over (inside "
                                  "socket_dir; mode and group as VM sockets); None: no handoff")
    auto_register: bool = Field(default=False, description="a domain no [[vm]] names gets a VM with the "
                                                           "defaults below; False: it is refused")
    default_memory: Size = Field(default=parse_size("1Gi"), description="memory quota of such a VM")
    default_share: float = Field(default=0.0, ge=0, le=100, description="its compute share, percent (0: idle "
                                                                        "time only, docs/scheduling.md)")
    default_cap: float | None = Field(default=None, gt=0, le=100, description="its hard cap, percent")
    first_auto_id: int = Field(default=1000, gt=0, lt=2**32, description="such VMs get the first free id "
                                                                        "from here on")
    state_dir: str = Field(default="/run/libvirt/qemu", min_length=1,
                           description="libvirt's QEMU state directory (its pidfiles and domain status files)")
    identity_timeout_seconds: float = Field(default=10.0, gt=0, le=300,
                                            description="how long to wait for libvirt's record of the domain")


class MemorySection(_Model):
    device_pool: Size | Literal["auto"] = "auto"
    device_reserve: Size = parse_size("1Gi")
    host_budget: Size = 0
    prefetch: bool = True


class SchedulerSection(_Model):
    window_seconds: float = Field(default=1.0, gt=0, le=3600)
    lookahead: int = Field(default=8, ge=1, le=256)
    time_slice_ms: float = Field(default=1.0, ge=0, le=1000)  # preemption at op boundaries; 0 = off
    # Stepped launches on a GPU executor (docs/scheduling.md "Preemption"): auto = where the
    # stepping has been checked on that kind of device (wgpu; NumPy always steps), not yet CuPy.
    gpu_stepping: Literal["auto", "on", "off"] = "auto"
    # Compiles (docs/scheduling.md "Compiles"): worker processes, off the daemon's interpreter lock.
    compile_workers: Literal["auto"] | Annotated[int, Field(ge=0, le=64)] = Field(
        default="auto", description="compile worker processes; 0: compile on the VM's thread; auto: one per "
                                    "4 CPUs, 1..4")
    compile_timeout_seconds: float = Field(default=5.0, gt=0, le=3600,
                                           description="CPU time one compile may take before its worker is "
                                                       "killed and the source rejected")
    compile_inline_bytes: int = Field(default=512, ge=0, le=65536,
                                      description="sources up to this size compile on the VM's thread")
    compile_budget_ms: float = Field(default=250.0, gt=0, le=1000,
                                     description="compile CPU time one VM may use per second (worker's included)")
    compile_gc_freeze: bool = Field(default=False, description="keep compiled programs out of Python's full "
                                                               "garbage collections (docs/scheduling.md)")

    def compiler_options(self) -> dict:
        """The Compiler's keyword arguments (hypervisor/compiling.py)."""
        return {"workers": None if self.compile_workers == "auto" else self.compile_workers,
                "timeout_s": self.compile_timeout_seconds, "inline_bytes": self.compile_inline_bytes,
                "budget_s": self.compile_budget_ms / 1000, "gc_freeze": self.compile_gc_freeze}


class AdvisorSection(_Model):
    """The scheduling advisor (docs/advisor.md): off unless ``mode`` says otherwise."""

    mode: Literal["off", "suggest", "apply"] = "off"
    endpoint: str = Field(default="http://127.0.0.1:8080/v1", pattern=r"^https?://[^\s]+$",
                          description="an OpenAI-compatible base URL (.../v1)")
    model: str = Field(default="default", min_length=1, max_length=200)
    api_key_file: str | None = Field(default=None, description="a file holding the API key (never logged)")
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                                    description="an environment variable holding the API key (never logged)")
    response_format: Literal["json_object", "json_schema"] = Field(
        default="json_object", description="json_object (+schema): llama.cpp; json_schema: OpenAI, vLLM")
    interval_seconds: float = Field(default=30.0, ge=0.05, le=86400)
    timeout_seconds: float = Field(default=20.0, gt=0, le=600)
    max_tokens: int = Field(default=512, ge=16, le=8192,
                            description="per request; about 100 per VM asked about (a cut answer is invalid JSON)")
    stale_seconds: float = Field(default=120.0, gt=0, le=86400,
                                 description="an answer that took longer than this is refused")
    dwell_seconds: float = Field(default=60.0, ge=0, le=86400,
                                 description="apply: the same advice must stand this long first")
    cooldown_seconds: float = Field(default=300.0, ge=0, le=86400,
                                    description="apply: at least this long between two changes of one VM")
    breaker_failures: int = Field(default=3, ge=1, le=1000)
    breaker_open_seconds: float = Field(default=60.0, gt=0, le=86400)

    @model_validator(mode="after")
    def _one_key_source(self) -> AdvisorSection:
        if self.api_key_file and self.api_key_env:
            raise ValueError("give api_key_file or api_key_env, not both")
        return self


class DaemonConfig(_Model):
    daemon: DaemonSection = DaemonSection()
    memory: MemorySection = MemorySection()
    scheduler: SchedulerSection = SchedulerSection()
    advisor: AdvisorSection = AdvisorSection()
    libvirt: LibvirtSection = LibvirtSection()
    vm: list[VMConfig] = Field(default_factory=list)
    model: list[ModelConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _vms_consistent(self) -> DaemonConfig:
        ids = [v.id for v in self.vm]
        if len(ids) != len(set(ids)):
            raise ValueError(f"VM ids must be unique, got {ids}")
        from .errors import SocketPathRefused
        from .sockets import lexical_vm_socket

        try:
            sockets = [lexical_vm_socket(v.socket, self.daemon.socket_dir) for v in self.vm if v.socket]
            if self.libvirt.handoff_socket:
                sockets.append(lexical_vm_socket(self.libvirt.handoff_socket, self.daemon.socket_dir))
        except SocketPathRefused as exc:
            raise ValueError(str(exc)) from None
        if len(sockets) != len(set(sockets)):
            raise ValueError("two VMs (or a VM and [libvirt] handoff_socket) name the same socket")
        domains = [v.domain.lower() for v in self.vm if v.domain]
        if len(domains) != len(set(domains)):
            raise ValueError("two VMs name the same libvirt domain")
        names = [m.name for m in self.model]
        if len(names) != len(set(names)):
            raise ValueError(f"model names must be unique, got {names}")
        ids = self.daemon.device_ids()
        for v in self.vm:
            if v.device is not None and ids is not None and v.device not in ids:
                raise ValueError(f"VM {v.id} is pinned to device {v.device}, which [daemon] devices does not "
                                 f"name ({ids})")
        if ids is not None and len(ids) == 1:
            total = sum(v.share for v in self.vm)
            if total > 100:
                raise ValueError(f"VM shares sum to {total:g}%, more than 100%")
        else:  # shares are of the device a VM is placed on: each pinned device's sum is known now
            for d in sorted({v.device for v in self.vm if v.device is not None}):
                total = sum(v.share for v in self.vm if v.device == d)
                if total > 100:
                    raise ValueError(f"the shares of the VMs pinned to device {d} sum to {total:g}%, more than 100%")
        return self


def load_config(path: str | Path) -> DaemonConfig:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return parse_config(raw, source=str(path))


def parse_config(raw: dict, source: str = "<config>") -> DaemonConfig:
    try:
        return DaemonConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{_where(raw, e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{source}: {problems}") from exc


def _where(raw: dict, loc: tuple) -> str:
    """A validation error's place as an operator reads the file: tables of arrays by the
    entry's id where it has one (`vm[id=3].memory`), else by 1-based position
    (`vm[#2].memory`), never pydantic's 0-based index."""
    parts: list[str] = []
    i = 0
    while i < len(loc):
        key = loc[i]
        if isinstance(key, str) and i + 1 < len(loc) and isinstance(loc[i + 1], int):
            entries = raw.get(key) if isinstance(raw, dict) and len(parts) == 0 else None
            n = loc[i + 1]
            entry = entries[n] if isinstance(entries, list) and 0 <= n < len(entries) else None
            label = f"{key}[#{n + 1}]"
            for field in ("id", "name"):
                v = entry.get(field) if isinstance(entry, dict) else None
                if isinstance(v, (int, str)) and not isinstance(v, bool) and v != "":
                    label = f"{key}[{field}={v}]"
                    break
            parts.append(label)
            i += 2
            continue
        parts.append(str(key))
        i += 1
    return ".".join(parts) or "(top)"


DEFAULT_CONFIG_TOML = """\
# pxos-hvd configuration (TOML). Sizes: bytes, or strings like "8G" (decimal) / "8Gi" (binary).

[daemon]
grpc_socket = "/run/pxos/pxos-hvd.sock"   # pxosctl talks here (mode 0600)
# grpc_tcp = "0.0.0.0:50051"              # off unless set; mutual TLS only, so these three too:
# tls_cert = "/etc/pxos/tls/server.crt"   # the listener's certificate (chain), PEM
# tls_key = "/etc/pxos/tls/server.key"
# tls_client_ca = "/etc/pxos/tls/ca.crt"  # clients must present a certificate this CA signed
metrics_address = "127.0.0.1:9464"        # Prometheus /metrics
backend = "auto"                          # auto | numpy | cupy | wgpu
# devices = "all"                         # or CUDA ids [0, 2, 5]; NumPy/wgpu: a count (default: device 0)
# rebalance_seconds = 0                   # >0: move VMs off a busier device (docs/scheduling.md)
# rebalance_dwell_seconds = 60            # an imbalance must stand this long; a moved VM stays this long
log_level = "info"
socket_dir = "/run/pxos"                  # VM sockets live here and nowhere else (relative names too)
# vm_socket_group = "kvm"                 # QEMU's group may connect to VM sockets (0660); default 0600
state_file = "/var/lib/pxos/state.json"  # run-time vm add/remove and quota set survive a restart

[memory]
device_pool = "auto"      # bytes of device memory pxOS may use; auto = free memory - reserve
device_reserve = "1Gi"
host_budget = 0           # host RAM backing for overcommit (0 = no overcommit)
prefetch = true           # bring in what queued launches need ahead of time (docs/memory.md)

[scheduler]
window_seconds = 1.0      # window over which caps and achieved shares are measured
lookahead = 8             # launches the scheduler plans ahead (memory prefetch reads it)
time_slice_ms = 1.0       # a running launch may yield to a more urgent VM's after each slice (0 = never)
# gpu_stepping = "auto"    # GPU launches as steps that can yield: auto = wgpu yes, CuPy not yet (on/off)
# compile_workers = "auto" # processes that compile guests' sources (0: on the VM's thread; auto: CPUs/4, 1..4)
# compile_timeout_seconds = 5.0  # CPU time one compile may take; past it the worker is killed, source rejected
# compile_inline_bytes = 512     # sources this small compile on the VM's thread (cheaper than a worker)
# compile_budget_ms = 250        # compile CPU time one VM may use per second
# compile_gc_freeze = false      # true: ~100 ms full collections once a minute, holding garbage (scheduling.md)

[libvirt]                 # libvirt's own vhost-user GPU: <driver name='vhostuser'/> (docs/operations.md)
# handoff_socket = "/run/pxos/vhost-user-gpu.sock"  # pxos-vhost-gpu hands libvirt's connections here
# auto_register = false   # a domain no [[vm]] names (domain = ...) gets a VM with these defaults:
# default_memory = "1Gi"
# default_share = 0       # 0: idle time only, after every VM with a share (docs/scheduling.md)
# first_auto_id = 1000
# state_dir = "/run/libvirt/qemu"  # libvirt's pidfiles and domain status files

[advisor]                 # an LLM that suggests classes and shares (docs/advisor.md)
mode = "off"              # off | suggest (pxosctl advice accept/reject) | apply
# endpoint = "http://127.0.0.1:8080/v1"   # any OpenAI-compatible server (llama.cpp, vLLM, Ollama)
# model = "smollm2"
# api_key_env = "PXOS_ADVISOR_KEY"        # or api_key_file = "/etc/pxos/advisor.key"; never logged
# response_format = "json_object"         # json_schema for OpenAI and vLLM
# interval_seconds = 30
# timeout_seconds = 20
# dwell_seconds = 60      # apply: advice must stand this long before it is applied
# cooldown_seconds = 300  # apply: at least this long between two changes of one VM

# One [[model]] table per shared model: a GGUF file loaded once at start-up, read-only,
# that every VM's guests may open by name (docs/models.md). Its memory is held once and
# charged to the device pool, not to any VM's quota. `pxosctl model add` loads more later.
# [[model]]
# name = "smollm2"
# path = "/var/lib/pxos/models/SmolLM2-135M-Instruct.Q4_1.gguf"
# dtype = "float32"       # or float16 (half the memory; for GPUs)

# One [[vm]] table per VM. `socket` is the vhost-user socket its QEMU connects to
# (-chardev socket,path=...,id=c -device vhost-user-gpu-pci,chardev=c).
# [[vm]]
# id = 1
# name = "train"
# memory = "8000M"
# share = 50
# cap = 80
# default_class = "BATCH"
# socket = "/run/pxos/vm1.sock"
# domain = "train-vm"     # or: the libvirt domain (name or UUID) whose GPU this VM is
# device = 0              # pin to this device (an id of [daemon] devices); else placed automatically
# description = "nightly fine-tuning job"   # read by the advisor
# share_min = 30          # the advisor may move the share within [share_min, share_max]
# share_max = 60          # (neither given: it may not change the share)
# cap_min = 60            # the advisor may set the cap within [cap_min, cap_max]
# cap_max = 90            # (neither given: it may not change the cap)
"""
