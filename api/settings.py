"""Configuration of the API, read from the environment (never baked into an image).

Every knob is one environment variable so that Docker Compose, Kubernetes
Secrets and ``ktg serve`` configure the service the same way. The names below
are a contract with the deployment files: change them together or not at all.

A bad configuration is a ``ConfigError`` whose message is one line naming the
variable, so ``ktg serve`` can print it and exit instead of showing a traceback.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ktg.errors import KtgError
from search.study.storage import DEFAULT_STORAGE, STORAGE_ENV

TOKENS_ENV = "KTG_API_TOKENS"
TOKENS_FILE_ENV = "KTG_API_TOKENS_FILE"
MAX_BODY_ENV = "KTG_MAX_BODY_BYTES"
DATA_DIR_ENV = "KTG_DATA_DIR"
RAY_ADDRESS_ENV = "RAY_ADDRESS"
DATASETS_DIR_ENV = "KTG_DATASETS_DIR"
MAX_TRIAL_EPOCHS_ENV = "KTG_MAX_TRIAL_EPOCHS"
MAX_MODEL_PARAMS_ENV = "KTG_MAX_MODEL_PARAMS"
MAX_RUNNING_STUDIES_ENV = "KTG_MAX_RUNNING_STUDIES"

# Every variable the service reads; the deployment files use exactly these.
ENV_NAMES: tuple[str, ...] = (STORAGE_ENV, TOKENS_ENV, TOKENS_FILE_ENV, MAX_BODY_ENV, DATA_DIR_ENV, RAY_ADDRESS_ENV,
                              DATASETS_DIR_ENV, MAX_TRIAL_EPOCHS_ENV, MAX_MODEL_PARAMS_ENV, MAX_RUNNING_STUDIES_ENV)

DEFAULT_MAX_BODY_BYTES = 64 * 1024
# Quotas per study (docs/security.md): the README's CIFAR-100 search (1,500 trials of 200 epochs)
# fits, and so does WRN-28-10 (36.5 M parameters on CIFAR-100), the largest common CIFAR teacher.
DEFAULT_MAX_TRIAL_EPOCHS = 300_000
DEFAULT_MAX_MODEL_PARAMS = 40_000_000
DEFAULT_DATA_DIR = "./ktg-data"
# Two searches per tenant at once: one tenant cannot fill the cluster, and a second
# study does not wait for the first to end.
DEFAULT_MAX_RUNNING_STUDIES = 2
# A tenant becomes the prefix of its Optuna study names ("tenant.name"), whose
# pattern starts with a letter or digit; hence the first character here.
TENANT_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")


class ConfigError(KtgError):
    """The service cannot start with this configuration (one line, names the variable)."""


@dataclass(frozen=True)
class Settings:
    """Everything the app needs to know about its machine; tests build one directly.

    ``tokens`` maps a bearer token to its tenant. ``ray_address`` is the Ray
    dashboard (Jobs API) URL; ``None`` means no cluster is reachable yet, and
    launching a study answers 503 until one is (``serve`` fills it in with the
    local head it starts).
    """

    storage: str
    tokens: Mapping[str, str]
    data_dir: Path
    ray_address: str | None = None
    # Bearer token for the Ray dashboard of a head `ktg serve` started itself; for an
    # external cluster Ray's own RAY_AUTH_MODE / RAY_AUTH_TOKEN environment applies.
    ray_token: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    # The one folder a tenant's data_dir may name (relative to it; api.confine); None: no
    # dataset that reads a folder is accepted over HTTP.
    datasets_dir: Path | None = None
    # Quotas checked when a study is submitted (api.quotas).
    max_trial_epochs: int = DEFAULT_MAX_TRIAL_EPOCHS
    max_model_params: int = DEFAULT_MAX_MODEL_PARAMS
    # How long a Ray job status read stays fresh: status polling by many clients
    # must not turn into one dashboard request per poll.
    ray_status_ttl_s: float = 2.0
    # How long a computed study status is served to pollers before it is read again.
    status_ttl_s: float = 1.0
    # How long a /readyz answer is served again: probes need no token, so a flood of them
    # must not become a flood of database and Ray requests.
    readyz_ttl_s: float = 1.0
    # How often the background reconciler submits, re-submits or stops jobs
    # whose Ray state disagrees with the registry (0 disables it, for tests).
    reconcile_interval_s: float = 5.0
    # Timeout of one request to the Ray dashboard, so a hung cluster cannot hang the API.
    ray_timeout_s: float = 10.0
    db_pool_size: int = 10
    # Studies of one tenant that Ray runs at once; the next ones wait as "queued", first in first out.
    max_running_studies: int = DEFAULT_MAX_RUNNING_STUDIES

    @property
    def studies_dir(self) -> Path:
        """Where each study's ``--out`` folder lives: ``<data dir>/studies/<id>``."""
        return self.data_dir / "studies"

    def tenant_of(self, token: str) -> str | None:
        """The tenant owning ``token``, comparing in constant time against every token.

        All tokens are compared (no early exit) so the response time says nothing
        about which prefix matched.
        """
        import hmac

        found = None
        supplied = token.encode()
        for known, tenant in self.tokens.items():
            if hmac.compare_digest(supplied, known.encode()):
                found = tenant
        return found

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, storage: str | None = None) -> Settings:
        """Read the settings; raise ``ConfigError`` (one line) when they cannot work."""
        env = os.environ if env is None else env
        tokens = parse_tokens(env.get(TOKENS_ENV, ""), TOKENS_ENV)
        file_name = env.get(TOKENS_FILE_ENV)
        if file_name:
            try:
                text = Path(file_name).read_text()
            except OSError as exc:
                raise ConfigError(f"{TOKENS_FILE_ENV}: cannot read {file_name}: {exc.strerror}") from None
            for token, tenant in parse_tokens(text, TOKENS_FILE_ENV).items():
                if tokens.get(token, tenant) != tenant:
                    raise ConfigError(f"{TOKENS_FILE_ENV}: a token of tenant {tenant!r} is also "
                                      f"{tokens[token]!r}'s in {TOKENS_ENV}; every token must be unique")
                tokens[token] = tenant
        if not tokens:
            raise ConfigError(f"no API token configured: set {TOKENS_ENV}='tenant:token,...' "
                              f"or {TOKENS_FILE_ENV}=<file of tenant:token lines>")
        return cls(
            storage=normalise_storage(storage or env.get(STORAGE_ENV) or DEFAULT_STORAGE),
            tokens=tokens,
            data_dir=Path(env.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR).expanduser().resolve(),
            ray_address=env.get(RAY_ADDRESS_ENV) or None,
            max_body_bytes=_count(env, MAX_BODY_ENV, DEFAULT_MAX_BODY_BYTES, 1024, "bytes"),
            datasets_dir=_datasets_dir(env.get(DATASETS_DIR_ENV)),
            max_trial_epochs=_count(env, MAX_TRIAL_EPOCHS_ENV, DEFAULT_MAX_TRIAL_EPOCHS, 1, "trials x epochs"),
            max_model_params=_count(env, MAX_MODEL_PARAMS_ENV, DEFAULT_MAX_MODEL_PARAMS, 1, "parameters"),
            max_running_studies=_count(env, MAX_RUNNING_STUDIES_ENV, DEFAULT_MAX_RUNNING_STUDIES, 1,
                                       "studies per tenant that run at once"),
        )


def _count(env: Mapping[str, str], name: str, default: int, least: int, unit: str) -> int:
    """An integer setting of at least ``least``; underscores allowed (100_000)."""
    raw = env.get(name) or str(default)
    try:
        value = int(raw)
    except ValueError:
        value = least - 1
    if value < least:
        raise ConfigError(f"{name}: got {raw!r}; allowed: an integer >= {least} ({unit})")
    return value


def _datasets_dir(raw: str | None) -> Path | None:
    """The operator's datasets folder, resolved once (confinement compares resolved paths)."""
    if not raw:
        return None
    folder = Path(raw).expanduser().resolve()
    if not folder.is_dir():
        raise ConfigError(f"{DATASETS_DIR_ENV}: {raw} is not a folder; allowed: the folder holding the datasets "
                          "tenants may name (or leave it unset)")
    return folder


def parse_tokens(text: str, source: str) -> dict[str, str]:
    """Parse ``tenant:token`` entries separated by commas or newlines; ``#`` starts a comment line.

    A tenant may have several tokens (rotation); a token may belong to one tenant only.
    """
    tokens: dict[str, str] = {}
    entries = [e.strip() for line in text.splitlines() if not line.lstrip().startswith("#") for e in line.split(",")]
    for number, entry in enumerate((e for e in entries if e), start=1):
        tenant, sep, token = entry.partition(":")
        tenant, token = tenant.strip(), token.strip()
        if not sep or not token:
            raise ConfigError(f"{source}: entry {number} is not 'tenant:token'")
        if not TENANT_PATTERN.match(tenant):
            raise ConfigError(f"{source}: entry {number}: tenant {tenant!r} must match {TENANT_PATTERN.pattern}")
        if any(c.isspace() for c in token):
            raise ConfigError(f"{source}: entry {number} (tenant {tenant!r}): the token contains whitespace")
        if tokens.get(token, tenant) != tenant:
            raise ConfigError(f"{source}: entry {number}: tenants {tokens[token]!r} and {tenant!r} share a token")
        tokens[token] = tenant
    return tokens


def normalise_storage(url: str) -> str:
    """Make a relative SQLite path absolute: Ray jobs run in another working directory."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != prefix + ":memory:":
        return prefix + str(Path(url.removeprefix(prefix)).expanduser().resolve())
    return url
