"""Typed models of the Docker Engine API's swarm objects (API 1.41).

Field names at the JSON boundary are Docker's own (``ID``, ``Spec``, ``TaskTemplate`` ...), so the
``docker`` CLI and SDK read and write these shapes unchanged. msgspec is used because it decodes and
validates about ten times faster than the alternatives, which matters with 100,000 tasks in memory.

Specs (what users send) forbid unknown fields: a typo in a request is a 400, never silently dropped.
Objects (what the cluster reports) are plain structs; they are treated as immutable once stored, and
writers make changed copies with :func:`msgspec.structs.replace`.
"""

from __future__ import annotations

import datetime as _dt
import enum
from typing import Annotated, Any

import msgspec
from msgspec import Meta, field

UInt = Annotated[int, Meta(ge=0)]
# Durations are int64 nanoseconds in Docker's JSON.
Nanos = Annotated[int, Meta(ge=0)]
SECOND = 1_000_000_000


def now_ts() -> str:
    """An RFC 3339 timestamp with nanosecond-style precision, as Docker prints them."""
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")


def parse_ts(ts: str) -> float:
    """Seconds since the epoch for a timestamp written by :func:`now_ts` (or by Docker)."""
    if not ts:
        return 0.0
    main, _, frac = ts.rstrip("Z").partition(".")
    base = _dt.datetime.strptime(main, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=_dt.UTC).timestamp()
    return base + (float("0." + frac[:9]) if frac else 0.0)


# gc=False: the cyclic garbage collector does not track these structs. They are plain data trees
# (no object refers back to one that holds it), so reference counting frees them, and a manager
# holding 100,000 tasks — half a million structs — no longer spends a third of its CPU walking
# them in collections (measured with py-spy --native in the scale benchmark: 30 % in gc_collect_main).
class Spec(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, gc=False):
    """Base of every user-supplied spec: unknown keys are errors."""


class FullSpec(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A spec whose defaults are not zero values, so they are always written out (Role, Protocol ...)."""


class Obj(msgspec.Struct, gc=False):
    """Base of every object the cluster reports: every field is written, as Docker does."""


class Version(Obj):
    Index: int = 0


# --------------------------------------------------------------------------- task states


class TaskState(enum.StrEnum):
    """Swarm mode's task state machine, in order. A task only ever moves forward."""

    NEW = "new"
    ALLOCATED = "allocated"
    PENDING = "pending"
    ASSIGNED = "assigned"
    ACCEPTED = "accepted"
    PREPARING = "preparing"
    READY = "ready"
    STARTING = "starting"
    RUNNING = "running"
    COMPLETE = "complete"
    SHUTDOWN = "shutdown"
    FAILED = "failed"
    REJECTED = "rejected"
    REMOVE = "remove"
    ORPHANED = "orphaned"

    @property
    def order(self) -> int:
        return _STATE_ORDER[self]

    @property
    def terminal(self) -> bool:
        """True once the task can never run again (complete, shutdown, failed, ...)."""
        return _STATE_ORDER[self] > _STATE_ORDER[TaskState.RUNNING]


_STATE_ORDER = {s: i for i, s in enumerate(TaskState)}


# --------------------------------------------------------------------------- service spec


class Mount(Spec):
    Type: str = "volume"
    Source: str = ""
    Target: str = ""
    ReadOnly: bool = False
    Consistency: str = ""
    BindOptions: dict[str, Any] | None = None
    VolumeOptions: dict[str, Any] | None = None
    TmpfsOptions: dict[str, Any] | None = None


class HealthConfig(Spec):
    Test: list[str] | None = None
    Interval: Nanos = 0
    Timeout: Nanos = 0
    Retries: UInt = 0
    StartPeriod: Nanos = 0
    StartInterval: Nanos = 0


class SecretReference(Spec):
    SecretID: str = ""
    SecretName: str = ""
    File: dict[str, Any] | None = None


class ConfigReference(Spec):
    ConfigID: str = ""
    ConfigName: str = ""
    File: dict[str, Any] | None = None
    Runtime: dict[str, Any] | None = None


class Ulimit(Spec):
    Name: str = ""
    Soft: int = 0
    Hard: int = 0


class DeviceMapping(Spec):
    """A host device given to the container (moby's HostConfig.Devices entry)."""

    PathOnHost: str = ""
    PathInContainer: str = ""
    CgroupPermissions: str = ""


class DeviceRequest(Spec):
    """A device request (moby's HostConfig.DeviceRequests, what ``docker run --gpus`` sends)."""

    Driver: str = ""
    Count: int = 0  # -1: all of them
    DeviceIDs: list[str] | None = None
    Capabilities: list[list[str]] | None = None
    Options: dict[str, str] | None = None


class WeightDevice(Spec):
    Path: str = ""
    Weight: UInt = 0


class ThrottleDevice(Spec):
    Path: str = ""
    Rate: UInt = 0


class HostConfig(Spec):
    """Shoal's extension of ContainerSpec: engine settings swarm mode has no field for, under the
    names of moby's ``HostConfig`` (the agent copies them into the container's create body as they
    are). Swarm's own fields (CapabilityAdd, Sysctls, Ulimits, Init, Hosts, DNSConfig, Isolation,
    Groups, OomScoreAdj) stay where swarm has them, so nothing here overlaps them."""

    Privileged: bool = False
    PidMode: str = ""  # "" or "host": another container's namespace is node-local, never a service's
    IpcMode: str = ""  # "", "host", "private", "shareable", "none"
    UsernsMode: str = ""  # "" or "host"
    CgroupParent: str = ""
    Runtime: str = ""  # the engine's OCI runtime (runc, nvidia ...); TaskSpec.Runtime is swarm's own
    Devices: list[DeviceMapping] | None = None
    DeviceCgroupRules: list[str] | None = None
    DeviceRequests: list[DeviceRequest] | None = None
    ShmSize: UInt = 0
    SecurityOpt: list[str] | None = None
    StorageOpt: dict[str, str] | None = None
    OomKillDisable: bool | None = None
    MemorySwappiness: Annotated[int, Meta(ge=-1, le=100)] | None = None
    MemorySwap: Annotated[int, Meta(ge=-1)] = 0
    CpuShares: UInt = 0
    CpuPeriod: UInt = 0
    CpuQuota: Annotated[int, Meta(ge=-1)] = 0
    CpuRealtimePeriod: UInt = 0
    CpuRealtimeRuntime: UInt = 0
    CpusetCpus: str = ""
    CpusetMems: str = ""
    BlkioWeight: Annotated[int, Meta(ge=0, le=1000)] = 0
    BlkioWeightDevice: list[WeightDevice] | None = None
    BlkioDeviceReadBps: list[ThrottleDevice] | None = None
    BlkioDeviceWriteBps: list[ThrottleDevice] | None = None
    BlkioDeviceReadIOps: list[ThrottleDevice] | None = None
    BlkioDeviceWriteIOps: list[ThrottleDevice] | None = None
class PullOptions(Spec):
    """swarmkit's ``ContainerSpec.PullOptions``: the client's ``X-Registry-Auth`` given with
    ``--with-registry-auth``, kept with the spec so the agents of the nodes running its tasks can
    pull. Never shown by the API (Docker's ContainerSpec has no such field; see api/services.py)."""

    RegistryAuth: str = ""


class ContainerSpec(Spec):
    Image: str = ""
    Labels: dict[str, str] | None = None
    Command: list[str] | None = None
    Args: list[str] | None = None
    Hostname: str = ""
    Env: list[str] | None = None
    Dir: str = ""
    User: str = ""
    Groups: list[str] | None = None
    Privileges: dict[str, Any] | None = None
    Init: bool | None = None
    TTY: bool = False
    OpenStdin: bool = False
    ReadOnly: bool = False
    Mounts: list[Mount] | None = None
    StopSignal: str = ""
    StopGracePeriod: Nanos | None = None
    Healthcheck: HealthConfig | None = None
    Hosts: list[str] | None = None
    DNSConfig: dict[str, Any] | None = None
    Secrets: list[SecretReference] | None = None
    Configs: list[ConfigReference] | None = None
    Isolation: str = ""
    Sysctls: dict[str, str] | None = None
    CapabilityAdd: list[str] | None = None
    CapabilityDrop: list[str] | None = None
    Ulimits: list[Ulimit] | None = None
    OomScoreAdj: int = 0
    # Shoal's extensions (no swarm field): the container's domain name, and HostConfig above.
    Domainname: str = ""
    HostConfig: HostConfig | None = None
    # swarmkit's: registry credentials given with --with-registry-auth (never shown by the API).
    PullOptions: PullOptions | None = None


class GenericResource(Spec):
    NamedResourceSpec: dict[str, str] | None = None
    DiscreteResourceSpec: dict[str, Any] | None = None


class ResourceLimits(Spec):
    NanoCPUs: UInt = 0
    MemoryBytes: UInt = 0
    Pids: UInt = 0


class ResourceReservations(Spec):
    NanoCPUs: UInt = 0
    MemoryBytes: UInt = 0
    GenericResources: list[GenericResource] | None = None


class ResourceRequirements(Spec):
    Limits: ResourceLimits | None = None
    Reservations: ResourceReservations | None = None


class RestartCondition(enum.StrEnum):
    NONE = "none"
    ON_FAILURE = "on-failure"
    ANY = "any"


class RestartPolicy(Spec):
    Condition: RestartCondition | None = None
    Delay: Nanos | None = None
    MaxAttempts: UInt | None = None
    Window: Nanos | None = None


class PlacementPreference(Spec):
    Spread: dict[str, str] | None = None


class Platform(Spec):
    Architecture: str = ""
    OS: str = ""


class Placement(Spec):
    Constraints: list[str] | None = None
    Preferences: list[PlacementPreference] | None = None
    MaxReplicas: UInt = 0
    Platforms: list[Platform] | None = None


class NetworkAttachmentConfig(Spec):
    Target: str = ""
    Aliases: list[str] | None = None
    DriverOpts: dict[str, str] | None = None


class Driver(Spec):
    Name: str = ""
    Options: dict[str, str] | None = None


class TaskSpec(Spec):
    ContainerSpec: ContainerSpec | None = None
    PluginSpec: dict[str, Any] | None = None
    NetworkAttachmentSpec: dict[str, Any] | None = None
    Resources: ResourceRequirements | None = None
    RestartPolicy: RestartPolicy | None = None
    Placement: Placement | None = None
    ForceUpdate: UInt = 0
    Runtime: str = ""
    Networks: list[NetworkAttachmentConfig] | None = None
    LogDriver: Driver | None = None


class ReplicatedService(Spec):
    Replicas: UInt | None = None


class GlobalService(Spec):
    pass


class ReplicatedJob(Spec):
    MaxConcurrent: UInt | None = None
    TotalCompletions: UInt | None = None


class GlobalJob(Spec):
    pass


class ServiceMode(Spec):
    Replicated: ReplicatedService | None = None
    Global: GlobalService | None = None
    ReplicatedJob: ReplicatedJob | None = None
    GlobalJob: GlobalJob | None = None

    @property
    def is_job(self) -> bool:
        """A job runs to completion (replicated-job, global-job) instead of being kept running."""
        return self.ReplicatedJob is not None or self.GlobalJob is not None


class UpdateConfig(Spec):
    Parallelism: UInt = 0
    Delay: Nanos = 0
    FailureAction: str = ""
    Monitor: Nanos = 0
    MaxFailureRatio: Annotated[float, Meta(ge=0, le=1)] = 0.0
    Order: str = ""


class PortConfig(FullSpec):
    Name: str = ""
    Protocol: str = "tcp"
    TargetPort: Annotated[int, Meta(ge=0, le=65535)] = 0
    PublishedPort: Annotated[int, Meta(ge=0, le=65535)] = 0
    PublishMode: str = "ingress"


class EndpointSpec(Spec):
    Mode: str = ""
    Ports: list[PortConfig] | None = None


class ServiceSpec(Spec):
    Name: str = ""
    Labels: dict[str, str] | None = None
    TaskTemplate: TaskSpec = field(default_factory=TaskSpec)
    Mode: ServiceMode | None = None
    UpdateConfig: UpdateConfig | None = None
    RollbackConfig: UpdateConfig | None = None
    Networks: list[NetworkAttachmentConfig] | None = None
    EndpointSpec: EndpointSpec | None = None


# --------------------------------------------------------------------------- service object


class PortStatus(Obj):
    Ports: list[PortConfig] | None = None


class EndpointVirtualIP(Obj):
    NetworkID: str = ""
    Addr: str = ""


class Endpoint(Obj):
    Spec: EndpointSpec | None = None
    Ports: list[PortConfig] | None = None
    VirtualIPs: list[EndpointVirtualIP] | None = None


class UpdateStatus(Obj, omit_defaults=True):
    """Empty times are left out: Go clients cannot parse an empty timestamp."""

    State: str = ""
    StartedAt: str = ""
    CompletedAt: str = ""
    Message: str = ""


class ServiceStatus(Obj):
    RunningTasks: int = 0
    DesiredTasks: int = 0
    CompletedTasks: int = 0


class JobStatus(Obj, omit_defaults=True):
    JobIteration: Version = field(default_factory=Version)
    LastExecution: str = ""


class AutoscaleStatus(Obj, omit_defaults=True):
    """The autoscaler's last decision (orchestrator/autoscale.py), shown by `service inspect` and
    `shoal service ps`; each decision is also a service update event with its reason."""

    Replicas: int = 0  # what it scaled to
    PreviousReplicas: int = 0
    Reason: str = ""
    At: str = ""
    Decisions: int = 0  # how many it has made for this service


class Service(Obj):
    ID: str
    Version: Version
    CreatedAt: str
    UpdatedAt: str
    Spec: ServiceSpec
    PreviousSpec: ServiceSpec | None = None
    Endpoint: Endpoint | None = None
    UpdateStatus: UpdateStatus | None = None
    ServiceStatus: ServiceStatus | None = None
    JobStatus: JobStatus | None = None
    AutoscaleStatus: AutoscaleStatus | None = None  # Shoal's: no Docker field says it


# --------------------------------------------------------------------------- task object


class ContainerStatus(Obj):
    ContainerID: str = ""
    PID: int = 0
    ExitCode: int = 0


class HealthResult(Obj):
    """One health probe, as the engine's ``State.Health.Log`` entries."""

    Start: str = ""
    End: str = ""
    ExitCode: int = 0
    Output: str = ""


class TaskHealth(Obj, omit_defaults=True):
    """Shoal's addition to a task's status: its health (from the engine's HEALTHCHECK or from the
    agent's own Rancher-style tcp/http check), the current failing streak and the last outputs."""

    Status: str = ""  # starting, healthy, unhealthy
    Source: str = ""  # engine, agent
    FailingStreak: int = 0
    Log: list[HealthResult] | None = None


class TaskStatus(Obj):
    Timestamp: str = ""
    State: TaskState = TaskState.NEW
    Message: str = ""
    Err: str = ""
    ContainerStatus: ContainerStatus | None = None
    PortStatus: PortStatus | None = None
    Health: TaskHealth | None = None


class Task(Obj):
    ID: str
    Version: Version
    CreatedAt: str
    UpdatedAt: str
    Spec: TaskSpec
    ServiceID: str
    Status: TaskStatus
    DesiredState: TaskState
    Name: str = ""
    Labels: dict[str, str] | None = None
    Slot: int = 0
    NodeID: str = ""
    # The service spec version this task was made from: how `_up-to-date` and updates tell stale tasks.
    SpecVersion: Version | None = None
    # The service's endpoint when the task was made: the agent publishes ports from it.
    Endpoint: Endpoint | None = None
    ServiceAnnotations: dict[str, Any] | None = None
    NetworksAttachments: list[NetworkAttachment] | None = None
    GenericResources: list[GenericResource] | None = None
    JobIteration: Version | None = None


# --------------------------------------------------------------------------- networks


class IPAMConfig(Spec):
    Subnet: str = ""
    Range: str = ""
    Gateway: str = ""


class IPAMOptions(Spec):
    Driver: Driver | None = None
    Configs: list[IPAMConfig] | None = None


class NetworkSpec(Spec):
    """Swarm's network spec. The Docker API's ``POST /networks/create`` body (the engine's shape) is
    translated to this at the API boundary, and objects are shown back in the engine's shape."""

    Name: str = ""
    Labels: dict[str, str] | None = None
    DriverConfiguration: Driver | None = None
    Ipv6Enabled: bool = False
    Internal: bool = False
    Attachable: bool = False
    Ingress: bool = False
    IPAMOptions: IPAMOptions | None = None
    Scope: str = "swarm"


class Network(Obj):
    ID: str
    Version: Version
    CreatedAt: str
    UpdatedAt: str
    Spec: NetworkSpec
    # What the allocator chose: the driver and its options (the VXLAN id), the subnet and gateway.
    DriverState: Driver | None = None
    IPAMOptions: IPAMOptions | None = None
    # Shoal: each node's own address on the network (its bridge end, "10.0.1.250/24"), by node ID.
    # Unique per node so that bridges joined over VXLAN never answer for the same address.
    NodeAddresses: dict[str, str] | None = None


class NetworkAttachment(Obj):
    """A task's place on a network: the network as allocated and the task's addresses (CIDR)."""

    Network: Network
    Addresses: list[str] | None = None
    Aliases: list[str] | None = None


# --------------------------------------------------------------------------- secrets and configs


class SecretSpec(Spec):
    Name: str = ""
    Labels: dict[str, str] | None = None
    Data: str = ""  # base64, as in Docker's JSON; never shown back by inspect
    Driver: Driver | None = None
    Templating: Driver | None = None


class Secret(Obj):
    ID: str
    Version: Version
    CreatedAt: str
    UpdatedAt: str
    Spec: SecretSpec


class ApiToken(Obj, omit_defaults=True):
    """An API token of a user: only its SHA-256 is kept (the token is shown once, when made).
    ``Teams``/``Role`` narrow what the token may do below what its user may (None: as the user)."""

    ID: str
    Hash: str
    CreatedAt: str = ""
    Description: str = ""
    Teams: list[str] | None = None
    Role: str = ""


class UserSpec(Spec):
    """Who may use the API and how: ``Role`` is admin, operator or viewer; ``Teams`` are the
    namespaces an operator may deploy in (a service, stack, network, secret or config belongs to
    the team its ``shoal.team`` label names) and whose logs a viewer may read."""

    Name: str = ""
    Role: str = "viewer"
    Teams: list[str] | None = None


class User(Obj):
    ID: str
    Version: Version
    CreatedAt: str
    UpdatedAt: str
    Spec: UserSpec
    Tokens: list[ApiToken] | None = None


class ConfigSpec(Spec):
    Name: str = ""
    Labels: dict[str, str] | None = None
    Data: str = ""  # base64
    Templating: Driver | None = None


class Config(Obj):
    ID: str
    Version: Version
    CreatedAt: str
    UpdatedAt: str
    Spec: ConfigSpec


# --------------------------------------------------------------------------- log sinks (Shoal)


class LogSinkSpec(Spec):
    """Where the leader sends the log lines agents collect (``aliyun.log_store_<name>`` labels):
    ``Type`` loki (``POST <URL>/loki/api/v1/push``), elasticsearch (``POST <URL>/_bulk`` into
    ``Index``) or file (a directory on the leading manager). The built-in file sink under
    ``<data-root>/logstore`` needs no spec. Kept in the store so a new leader keeps sending."""

    Name: str = ""
    Type: str = ""
    URL: str = ""
    Index: str = ""  # elasticsearch only: the index written (default "shoal-logs")
    Labels: dict[str, str] | None = None


class LogSink(Obj):
    ID: str
    Version: Version
    CreatedAt: str
    UpdatedAt: str
    Spec: LogSinkSpec


# --------------------------------------------------------------------------- stacks (Shoal)


class StackResources(Spec):
    """What a Compose file becomes. The client computes it (only it can read the files a Compose
    file names: env_file, secret and config files), the manager validates and applies it."""

    Services: dict[str, ServiceSpec] | None = None  # by Compose service name; Spec.Name is <stack>_<name>
    Networks: dict[str, NetworkSpec] | None = None  # by full name
    Secrets: dict[str, SecretSpec] | None = None
    Configs: dict[str, ConfigSpec] | None = None
    ExternalNetworks: list[str] | None = None
    ExternalSecrets: list[str] | None = None
    ExternalConfigs: list[str] | None = None
    # depends_on: waves of Compose service names, each depending only on earlier waves, and for each
    # service the condition each dependency must meet (service_started, service_healthy, ...).
    Order: list[list[str]] | None = None
    WaitFor: dict[str, dict[str, str]] | None = None


class StackSpec(Spec):
    """A deployed Compose project: its name, the normalised file (every ``-f`` merged, variables
    interpolated, profiles applied; kept for inspection and diffs) and the objects it becomes, all
    labelled ``com.docker.stack.namespace=<Name>`` so the docker CLI's stack commands see them."""

    Name: str = ""
    Labels: dict[str, str] | None = None
    Compose: str = ""
    Resources: StackResources | None = None


class StackStatus(Obj, omit_defaults=True):
    State: str = ""  # deploying (services still waiting for their dependencies), deployed, failed
    Message: str = ""
    # Compose services not created yet because their dependencies are not ready, and since when.
    Pending: list[str] | None = None
    WaitingSince: str = ""


class Stack(Obj):
    ID: str
    Version: Version
    CreatedAt: str
    UpdatedAt: str
    Spec: StackSpec
    Status: StackStatus | None = None


# --------------------------------------------------------------------------- node object


class NodeRole(enum.StrEnum):
    WORKER = "worker"
    MANAGER = "manager"


class NodeAvailability(enum.StrEnum):
    ACTIVE = "active"
    PAUSE = "pause"
    DRAIN = "drain"


class NodeState(enum.StrEnum):
    UNKNOWN = "unknown"
    DOWN = "down"
    READY = "ready"
    DISCONNECTED = "disconnected"


class NodeSpec(FullSpec):
    Name: str = ""
    Labels: dict[str, str] | None = None
    Role: NodeRole = NodeRole.WORKER
    Availability: NodeAvailability = NodeAvailability.ACTIVE


class Resources(Obj):
    NanoCPUs: int = 0
    MemoryBytes: int = 0
    GenericResources: list[GenericResource] | None = None


class EngineDescription(Obj):
    EngineVersion: str = ""
    Labels: dict[str, str] | None = None
    Plugins: list[dict[str, str]] | None = None


class TLSInfo(Obj):
    TrustRoot: str = ""
    CertIssuerSubject: str = ""
    CertIssuerPublicKey: str = ""


class NodeDescription(Obj):
    Hostname: str = ""
    Platform: Platform = field(default_factory=Platform)
    Resources: Resources = field(default_factory=Resources)
    Engine: EngineDescription = field(default_factory=EngineDescription)
    TLSInfo: TLSInfo | None = None


class NodeStatus(Obj):
    State: NodeState = NodeState.UNKNOWN
    Message: str = ""
    Addr: str = ""


# A node whose agent is alive but whose engine does not answer is ``down`` with this message
# (followed by ": <reason>"): it can run nothing, so it is treated as a lost node, and the prefix
# tells the scheduler's explanation and the dispatcher why (see docs/architecture.md).
ENGINE_UNAVAILABLE = "engine unavailable"


def engine_unavailable(node: Node) -> bool:
    """Whether ``node`` is down because its agent reported its engine unusable."""
    return node.Status.State is NodeState.DOWN and node.Status.Message.startswith(ENGINE_UNAVAILABLE)


class ManagerStatus(Obj):
    Leader: bool = False
    Reachability: str = "reachable"
    Addr: str = ""


class Node(Obj):
    ID: str
    Version: Version
    CreatedAt: str
    UpdatedAt: str
    Spec: NodeSpec
    Description: NodeDescription = field(default_factory=NodeDescription)
    Status: NodeStatus = field(default_factory=NodeStatus)
    ManagerStatus: ManagerStatus | None = None


# --------------------------------------------------------------------------- cluster (swarm) object


class OrchestrationConfig(Spec):
    TaskHistoryRetentionLimit: int | None = None


class RaftConfig(Spec):
    SnapshotInterval: UInt = 0
    KeepOldSnapshots: UInt | None = None
    LogEntriesForSlowFollowers: UInt = 0
    ElectionTick: UInt = 0
    HeartbeatTick: UInt = 0


class DispatcherConfig(Spec):
    HeartbeatPeriod: Nanos = 0


class CAConfig(Spec):
    NodeCertExpiry: Nanos = 0
    ExternalCAs: list[dict[str, Any]] | None = None
    SigningCACert: str = ""
    SigningCAKey: str = ""
    ForceRotate: UInt = 0


class EncryptionConfig(Spec):
    AutoLockManagers: bool = False


class TaskDefaults(Spec):
    LogDriver: Driver | None = None


class SwarmSpec(Spec):
    Name: str = ""
    Labels: dict[str, str] | None = None
    Orchestration: OrchestrationConfig | None = None
    Raft: RaftConfig | None = None
    Dispatcher: DispatcherConfig | None = None
    CAConfig: CAConfig | None = None
    EncryptionConfig: EncryptionConfig | None = None
    TaskDefaults: TaskDefaults | None = None


class JoinTokens(Obj):
    Worker: str = ""
    Manager: str = ""


class Cluster(Obj):
    ID: str
    Version: Version
    CreatedAt: str
    UpdatedAt: str
    Spec: SwarmSpec
    TLSInfo: TLSInfo | None = None
    RootRotationInProgress: bool = False
    DefaultAddrPool: list[str] | None = None
    SubnetSize: int = 24
    DataPathPort: int = 4789
    JoinTokens: JoinTokens | None = None
    # Autolock's unlock key (SWMKEY-1-...), kept here as swarmkit keeps it in raft: every manager
    # learns it from its copy of the store (the row is sealed with the data key). Not Docker's
    # shape: the API drops it (api/swarm.py public_cluster); only GET /swarm/unlockkey shows it.
    UnlockKey: str = ""


class InitRequest(Spec):
    ListenAddr: str = ""
    AdvertiseAddr: str = ""
    DataPathAddr: str = ""
    DataPathPort: UInt = 0
    DefaultAddrPool: list[str] | None = None
    ForceNewCluster: bool = False
    SubnetSize: UInt = 0
    Spec: SwarmSpec | None = None
    AutoLockManagers: bool = False
    Availability: str = ""
    # Shoal's extensions (the docker CLI never sends them): where the swarm's store lives.
    Store: str = ""  # "sqlite" (the default: one manager) or "etcd" (managers with failover)
    EtcdEndpoints: list[str] | None = None  # an etcd cluster the user runs; none: Shoal runs a member
    EtcdPort: UInt = 0  # the client port of the member Shoal runs (its peer port is the next one); 0: 2379


class UnlockRequest(Spec):
    UnlockKey: str = ""


class JoinRequest(Spec):
    ListenAddr: str = ""
    AdvertiseAddr: str = ""
    DataPathAddr: str = ""
    RemoteAddrs: list[str] | None = None
    JoinToken: str = ""
    Availability: str = ""
    EtcdPort: UInt = 0  # Shoal: a joining manager's etcd member's client port (peer: +1); 0: 2379


DEFAULT_TASK_HISTORY = 5
DEFAULT_RESTART_DELAY = 5 * SECOND
DEFAULT_HEARTBEAT = 5 * SECOND
DEFAULT_STOP_GRACE = 10 * SECOND


# --------------------------------------------------------------------------- decoding like Go


def decode(body: bytes, typ: type[Any]) -> Any:
    """Decode JSON into ``typ`` matching struct keys case-insensitively, as Go's encoding/json does.

    Docker's daemon accepts ``{"Mode": {"replicated": {...}}}`` (the Docker SDK for Python sends
    exactly that), so Shoal must too; keys of maps (labels, options) are user data and kept as sent.
    Unknown keys still fail, in msgspec's strict conversion afterwards.
    """
    raw = msgspec.json.decode(body)
    return msgspec.convert(_canonical(raw, msgspec.inspect.type_info(typ)), typ)


_KEYMAPS: dict[type, dict[str, str]] = {}


def _keymap(info: msgspec.inspect.StructType) -> dict[str, str]:
    km = _KEYMAPS.get(info.cls)
    if km is None:
        km = _KEYMAPS[info.cls] = {f.encode_name.lower(): f.encode_name for f in info.fields}
    return km


def _canonical(value: Any, info: msgspec.inspect.Type) -> Any:
    mi = msgspec.inspect
    if isinstance(info, mi.StructType) and isinstance(value, dict):
        km = _keymap(info)
        by_name = {f.encode_name: f.type for f in info.fields}
        out: dict[str, Any] = {}
        for k, v in value.items():
            if v is None:
                continue  # Go leaves a field at its zero value for null; so does Shoal (the default)
            name = k if k in by_name else km.get(k.lower(), k)
            out[name] = _canonical(v, by_name[name]) if name in by_name else v
        return out
    if isinstance(info, mi.UnionType):
        for t in info.types:
            if isinstance(t, mi.StructType) and isinstance(value, dict):
                return _canonical(value, t)
            if isinstance(t, mi.ListType | mi.DictType) and isinstance(value, list | dict):
                return _canonical(value, t)
        return value
    if isinstance(info, mi.ListType) and isinstance(value, list):
        return [_canonical(v, info.item_type) for v in value]
    if isinstance(info, mi.DictType) and isinstance(value, dict):
        return {k: _canonical(v, info.value_type) for k, v in value.items()}
    if isinstance(info, mi.Metadata):
        return _canonical(value, info.type)
    return value
