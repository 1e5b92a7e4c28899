"""Configuration: ``config.yaml`` read once into one settings model.

Every key may be overridden from the environment as ``PACS_NODE__SECTION__KEY`` (for example
``PACS_NODE__NODE__DIMSE_PORT=11113``; lists and objects as JSON). A bad configuration fails
at start with :class:`ConfigError`, whose message names the offending key.
"""

from __future__ import annotations

import ipaddress
import os
import re
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    YamlConfigSettingsSource,
)

__all__ = [
    "ConfigError",
    "DeliverySettings",
    "Destination",
    "DestinationTls",
    "HttpSettings",
    "MetricsSettings",
    "NodeSettings",
    "NodeTls",
    "PipelineSettings",
    "QueueSettings",
    "Remote",
    "RouteRule",
    "Settings",
    "StorageSettings",
    "StudySettings",
    "TriageSettings",
    "WebhookSettings",
    "load_settings",
]

_ENV_PREFIX = "PACS_NODE__"
_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable ASCII, no backslash
_CONFIG_FILE: ContextVar[Path | None] = ContextVar("_CONFIG_FILE", default=None)


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the key."""


def _ae_title(value: str) -> str:
    stripped = value.strip()
    if not _AE_RE.match(stripped):
        raise ValueError("an AE title is 1-16 printable ASCII characters without backslash")
    return stripped


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NodeTls(_Section):
    """``node.tls``: a second DICOM listener that speaks only TLS (DICOM PS3.15 B.1)."""

    enabled: bool = False
    port: int = Field(2762, ge=1, le=65535)  # 2762: the IANA port of DICOM over TLS
    certificate: Path | None = None  # PEM: the node's certificate (then any intermediates)
    key: Path | None = None  # PEM, unencrypted: its private key
    # PEM CA certificates: when set, a client must present a certificate issued by one of
    # them (and valid today); when empty, clients are not asked for a certificate.
    ca_bundle: Path | None = None
    min_version: Literal["1.2", "1.3"] = "1.2"
    # false: dimse_port is not opened, every association comes over TLS
    plain_listener: bool = True

    @model_validator(mode="after")
    def _check_files(self) -> NodeTls:
        if self.enabled and (self.certificate is None or self.key is None):
            raise ValueError("node.tls.certificate and node.tls.key are required when "
                             "node.tls.enabled is true")
        if not self.plain_listener and not self.enabled:
            raise ValueError("node.tls.plain_listener: false needs node.tls.enabled: true "
                             "(otherwise nothing listens)")
        return self


class NodeSettings(_Section):
    ae_title: str = "PACSNODE"
    dimse_host: str = "127.0.0.1"
    dimse_port: int = Field(11112, ge=1, le=65535)
    http_host: str = "127.0.0.1"
    http_port: int = Field(8080, ge=1, le=65535)
    allowed_calling_aes: list[str] = Field(default_factory=list)  # empty = any
    max_associations: int = Field(16, ge=1, le=1000)
    # Connections open without an established association (negotiating, idle, or refused
    # and not yet closed); one more is closed at once, unread.
    max_pending_connections: int = Field(64, ge=1, le=10000)
    max_pdu_bytes: int = Field(131072, ge=4096, le=4 * 1024 * 1024)
    overwrite_conflicting_duplicates: bool = False
    tls: NodeTls = Field(default_factory=NodeTls)

    _check_ae = field_validator("ae_title")(_ae_title)

    @field_validator("allowed_calling_aes")
    @classmethod
    def _check_allowed(cls, values: list[str]) -> list[str]:
        return [_ae_title(v) for v in values]

    @model_validator(mode="after")
    def _check_tls_port(self) -> NodeSettings:
        if self.tls.enabled and self.tls.plain_listener and self.tls.port == self.dimse_port:
            raise ValueError(f"node.tls.port {self.tls.port} must differ from "
                             "node.dimse_port (the plain listener)")
        return self


def _is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


class HttpSettings(_Section):
    """``http``: the node's HTTP layer (DICOMweb under ``/dicomweb``, the API, OpenAPI at
    ``/api/docs``) on ``node.http_host:node.http_port``."""

    enabled: bool = True
    # Every DICOMweb and API request needs a bearer token (`pacs-node token create`).
    auth: bool = False
    # Origins (scheme://host:port) of web viewers allowed to call the node from a browser.
    cors_origins: list[str] = Field(default_factory=list)
    # Largest STOW-RS request body; a larger one is a 413 (before reading it when it says
    # its length). Parts are streamed to disk, not held in memory.
    max_request_bytes: int = Field(4 * 1024 ** 3, ge=1024)
    # Serve HTTP on a non-loopback address without authentication (never in a hospital
    # network: anyone who can reach the port reads every study).
    allow_insecure: bool = False
    # The OHIF viewer's files served at /viewer (its dist/ folder); unset: the one
    # `make install` fills, .cache/ohif/dist in the source tree.
    viewer_dir: Path | None = None


class StorageSettings(_Section):
    root: Path = Path("./var/store")
    database_url: str = "sqlite:///./var/index.db"
    # Largest image (Rows x Columns x Frames x Samples) the node decodes; a larger view is
    # "not analysed: too large". 64 Mi pixels: four 4096 x 4096 frames, well above a CR.
    max_pixels: int = Field(64 * 1024 * 1024, ge=1024)
    # Free-space watermark: below it (counting the instance being received) the node
    # refuses to store (C-STORE 0xA700, STOW-RS 503) before writing anything, /readyz says
    # why, and ingest resumes by itself once space is freed. 0 disables it.
    min_free_bytes: int = Field(1024 ** 3, ge=0)


class QueueSettings(_Section):
    broker_url: str = "memory://"  # embedded: the serve process runs the jobs itself
    # Runs of a job that may raise before the study is failed (an interruption, a worker
    # that died, does not count: see max_interruptions).
    max_attempts: int = Field(3, ge=1, le=50)
    # Runs of a job whose worker died (killed, out of memory, node restarted) before the
    # study is failed as "interrupted too many times".
    max_interruptions: int = Field(20, ge=1, le=1000)
    # A running job renews its lease every lease_seconds / 3 (a heartbeat); a dead
    # worker's job is re-dispatched by the reconciler once the lease has expired.
    lease_seconds: float = Field(30.0, ge=3)
    enqueue_timeout_seconds: float = Field(120.0, gt=0)
    reconcile_interval_seconds: float = Field(5.0, gt=0)


class StudySettings(_Section):
    stable_seconds: float = Field(5.0, ge=0)


class RouteRule(_Section):
    """Views matching every non-empty criterion go to ``model`` (``"demo"`` or a path)."""

    name: str = "route"
    model: str = "demo"
    body_parts: list[str] = Field(default_factory=list)  # normalised terms, e.g. WRIST, HIP
    view_positions: list[str] = Field(default_factory=list)
    lateralities: list[str] = Field(default_factory=list)
    sop_classes: list[str] = Field(default_factory=list)


class PipelineSettings(_Section):
    routes: list[RouteRule] = Field(default_factory=list)
    aggregation: Literal["max", "mean", "noisy_or", "majority"] = "max"
    threshold: float = Field(0.5, gt=0, lt=1)
    max_findings: int = Field(3, ge=0)
    # A model without a domain calibration answers nothing unless this is true (then every
    # view counts as inside its training domain): see `pacs-node calibrate`.
    allow_uncalibrated: bool = False


class DestinationTls(_Section):
    """``destinations[].tls``: send to this destination over TLS."""

    enabled: bool = False
    # PEM CA certificates that sign the destination's certificate (empty: the system's);
    # its certificate must name the destination's ``host`` (DNS or IP subjectAltName).
    ca_bundle: Path | None = None
    certificate: Path | None = None  # PEM: ours, for a destination that asks for one
    key: Path | None = None  # PEM, unencrypted

    @model_validator(mode="after")
    def _check_pair(self) -> DestinationTls:
        if (self.certificate is None) != (self.key is None):
            raise ValueError("tls.certificate and tls.key are given together or not at all")
        return self


class Destination(_Section):
    name: str
    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    # How a superseded result is withdrawn there: "iocm" sends an IHE IOCM rejection note
    # (Key Object Selection, "Rejected for Quality Reasons") naming the old SR and
    # overlays; "none" relies on the new SR's Predecessor Documents Sequence alone.
    withdraw: Literal["none", "iocm"] = "none"
    tls: DestinationTls = Field(default_factory=DestinationTls)

    _check_ae = field_validator("ae_title")(_ae_title)


class Remote(_Section):
    """``remotes[]``: a DICOM peer the node sends to on request: a C-MOVE to its AE title
    sends the instances there (the PACS or workstation pulling from the node). The
    ``destinations`` are C-MOVE destinations too."""

    name: str
    # The DIMSE address; an archive reached only by DICOMweb (retrieve: dicomweb) needs none.
    ae_title: str | None = None
    host: str | None = None
    port: int | None = Field(None, ge=1, le=65535)
    tls: DestinationTls = Field(default_factory=DestinationTls)
    # How the node pulls studies from this remote as an archive (pacs_node.archive):
    # c-move to the node's own AE title (the PACS must know it), c-get, or dicomweb
    # (QIDO-RS + WADO-RS at ``url``, with ``token`` as a bearer token if it asks for one).
    retrieve: Literal["c-move", "c-get", "dicomweb"] = "c-move"
    url: str | None = None
    token: str | None = Field(None, repr=False)

    @field_validator("ae_title")
    @classmethod
    def _check_ae(cls, value: str | None) -> str | None:
        return None if value is None else _ae_title(value)

    @property
    def dimse(self) -> bool:
        """Whether the remote has a DIMSE address (AE title, host and port)."""
        return None not in (self.ae_title, self.host, self.port)

    @model_validator(mode="after")
    def _dicomweb_url(self) -> Remote:
        if self.retrieve != "dicomweb" and not self.dimse:
            raise ValueError(f"remotes[{self.name}] needs ae_title, host and port (only a "
                             "remote with retrieve: dicomweb and a url may go without)")
        if self.url is not None and not self.url.lower().startswith(("http://", "https://")):
            raise ValueError(f"remotes[{self.name}].url must be an http:// or https:// URL")
        if self.retrieve == "dicomweb" and not self.url:
            raise ValueError(f"remotes[{self.name}] retrieves by dicomweb but has no url")
        return self


class DeliverySettings(_Section):
    max_attempts: int = Field(8, ge=1, le=100)
    backoff_initial_seconds: float = Field(2.0, gt=0)
    backoff_max_seconds: float = Field(300.0, gt=0)
    max_concurrent: int = Field(2, ge=1, le=32)


class BatchSettings(_Section):
    """``batch``: how re-processing batches pull and queue studies (pacs_node.batches)."""

    # Tries to bring in one study (a query or retrieve that fails) before the item fails,
    # waiting backoff_initial_seconds, doubling, at most backoff_max_seconds between them.
    max_attempts: int = Field(5, ge=1, le=100)
    backoff_initial_seconds: float = Field(5.0, gt=0)
    backoff_max_seconds: float = Field(300.0, gt=0)
    # Concurrent retrieves of a batch when `batch create` does not say (--max-retrieves).
    max_retrieves: int = Field(2, ge=1, le=32)
    # Jobs a batch keeps queued for the workers at a time: more studies are retrieved only
    # as these finish, so a large batch neither fills the store nor hides many studies'
    # current results at once.
    max_queued: int = Field(8, ge=1, le=10000)
    tick_seconds: float = Field(1.0, gt=0, le=60)
    # Folders a batch created over HTTP may write its results into (--deliver folder:PATH);
    # empty: only `pacs-node batch create` on the node itself delivers into a folder.
    folder_roots: list[Path] = Field(default_factory=list)


class MetricsSettings(_Section):
    """``metrics``: Prometheus metrics at ``/metrics``."""

    # Where every process of this host that records (serve, worker and its Celery
    # children) keeps its counters, summed at scrape time: a folder on a local disk (not
    # NFS: memory-mapped files). Unset: "metrics" beside storage.root.
    multiprocess_dir: Path | None = None


class TriageSettings(_Section):
    """``triage``: the study priority a result earns (storage.triage), at two operating
    points of the study probability: at or above ``high_threshold`` (specific: "fracture")
    HIGH, at or above ``doubt_threshold`` (sensitive: "doubt") MEDIUM, below LOW. Made with
    synthetic-data weights they are operating points, not calibrated accuracies: set them
    from a local validation."""

    high_threshold: float = Field(0.8, gt=0, le=1)
    doubt_threshold: float = Field(0.3, ge=0, lt=1)

    @model_validator(mode="after")
    def _ordered(self) -> TriageSettings:
        if self.doubt_threshold > self.high_threshold:
            raise ValueError(f"triage.doubt_threshold ({self.doubt_threshold}) is above "
                             f"triage.high_threshold ({self.high_threshold})")
        return self


class WebhookSettings(_Section):
    """``webhook``: one HTTP POST (JSON) per study a result triages HIGH, to ``url``,
    retried with backoff while the receiver is down (pacs_node.webhook). The body carries
    no patient name, ID or birth date unless ``include_phi``."""

    url: str | None = None  # http:// or https://; unset: no webhook
    include_phi: bool = False
    # Signs each body: header X-PACS-Node-Signature: sha256=<HMAC-SHA256 of the body>.
    secret: str | None = Field(None, min_length=16)
    timeout_seconds: float = Field(10.0, gt=0, le=120)
    max_attempts: int = Field(8, ge=1, le=100)
    backoff_initial_seconds: float = Field(2.0, gt=0)
    backoff_max_seconds: float = Field(300.0, gt=0)
    # Base of the viewer link in the body; unset: http://<node.http_host>:<node.http_port>.
    viewer_base_url: str | None = None

    @model_validator(mode="after")
    def _http_only(self) -> WebhookSettings:
        for name in ("url", "viewer_base_url"):
            value = getattr(self, name)
            if value is not None and not value.lower().startswith(("http://", "https://")):
                raise ValueError(f"webhook.{name} must be an http:// or https:// URL")
        return self


class Settings(BaseSettings):
    """The whole configuration of a node."""

    model_config = SettingsConfigDict(
        env_prefix=_ENV_PREFIX, env_nested_delimiter="__", extra="forbid"
    )

    node: NodeSettings = Field(default_factory=NodeSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    queue: QueueSettings = Field(default_factory=QueueSettings)
    study: StudySettings = Field(default_factory=StudySettings)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    destinations: list[Destination] = Field(default_factory=list)
    remotes: list[Remote] = Field(default_factory=list)
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    batch: BatchSettings = Field(default_factory=BatchSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    triage: TriageSettings = Field(default_factory=TriageSettings)
    webhook: WebhookSettings = Field(default_factory=WebhookSettings)

    @model_validator(mode="after")
    def _check_http_exposure(self) -> Settings:
        # The lesson of Orthanc CVE-2025-0896: an open HTTP port on the network serves
        # every patient's images to anyone who finds it.
        if self.http.enabled and not self.http.auth and \
                not _is_loopback(self.node.http_host) and not self.http.allow_insecure:
            raise ValueError(f"node.http_host {self.node.http_host} is not a loopback "
                             "address and http.auth is off: the node would serve every "
                             "study to anyone who can reach the port. Set http.auth: true "
                             "(and create tokens with `pacs-node token create`), keep "
                             "http_host on 127.0.0.1, or set http.allow_insecure: true to "
                             "accept that risk")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _CONFIG_FILE.get()
        if path is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        return tuple(sources)


def _env_variable(path: tuple[int | str, ...]) -> str | None:
    """The ``PACS_NODE__...`` variable whose name is the longest prefix of ``path``."""
    names = {name.upper(): name for name in os.environ}
    keys: list[str] = []
    for part in path:
        if not isinstance(part, str):
            break
        keys.append(part.upper())
    for end in range(len(keys), 0, -1):
        name = names.get(_ENV_PREFIX + "__".join(keys[:end]))
        if name is not None:
            return name
    return None


def _from_env(loc: tuple[int | str, ...], env_values: dict[str, Any]) -> str | None:
    """The environment variable that gave the value at ``loc``; None when the file did.

    Sections given by both are merged key by key; a list comes whole from one source.
    """
    value: Any = env_values
    in_list = False
    for part in loc:
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value):
            value, in_list = value[part], True
        elif not in_list:  # e.g. a key missing from a section the file also gives
            return None
        else:
            break
    return _env_variable(loc)


def _describe(exc: ValidationError, source: str) -> str:
    env_values = EnvSettingsSource(Settings)()
    lines = ["invalid configuration:"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        variable = _from_env(err["loc"], env_values)
        where = f"environment variable {variable}" if variable else f"in {source}"
        lines.append(f"  {key}: {err['msg']} ({where})")
    return "\n".join(lines)


def _check_env_names() -> None:
    """Refuse ``PACS_NODE__`` variables that name no section (they would be ignored)."""
    sections = set(Settings.model_fields)
    unknown = sorted(name for name in os.environ if name.upper().startswith(_ENV_PREFIX)
                     and name[len(_ENV_PREFIX):].split("__")[0].lower() not in sections)
    if unknown:
        raise ConfigError(
            f"unknown configuration key in environment variable {', '.join(unknown)}: "
            f"the sections are {', '.join(Settings.model_fields)} "
            f"({_ENV_PREFIX}SECTION__KEY)")


def load_settings(path: Path | str | None = None, **overrides: Any) -> Settings:
    """Read ``path`` (YAML) plus environment overrides into :class:`Settings`.

    Relative storage paths are resolved against the current directory at start, so a node
    keeps using the same folders whatever it does later.

    Raises:
        ConfigError: naming each bad key and where it came from, the file or a
            ``PACS_NODE__...`` environment variable (one that names no section included).
    """
    source = str(path) if path is not None else "defaults"
    file = Path(path) if path is not None else None
    if file is not None:
        if not file.is_file():
            raise ConfigError(f"configuration file not found: {file}")
        try:
            content = yaml.safe_load(file.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{file} is not valid YAML: {exc}") from None
        if content is not None and not isinstance(content, dict):
            raise ConfigError(f"{file}: the top level must be a mapping of sections")
    _check_env_names()
    token = _CONFIG_FILE.set(file)
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None
    except SettingsError as exc:  # a list or object in the environment that is not JSON
        field = re.search(r'field "(\w+)"', str(exc))
        prefix = _ENV_PREFIX + field.group(1).upper() if field else _ENV_PREFIX
        names = [name for name in sorted(os.environ) if name.upper().startswith(prefix)]
        raise ConfigError(f"invalid configuration in environment variable "
                          f"{', '.join(names) or prefix}: {exc} "
                          "(lists and objects are written as JSON)") from None
    finally:
        _CONFIG_FILE.reset(token)
    settings.storage.root = settings.storage.root.expanduser().resolve()
    folder = settings.metrics.multiprocess_dir
    settings.metrics.multiprocess_dir = (folder.expanduser().resolve() if folder is not None
                                         else settings.storage.root.parent / "metrics")
    return settings
